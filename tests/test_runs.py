"""The run-directory contract: runs written before the pre-training heads moved into the
objectives still load (the one key adapter, `runs.upgrade_saved_run`)."""

import json

import pytest
import torch

from pretrainer.config import TokenizerConfig
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.io import save_weights
from pretrainer.models import SequenceClassifier, model_config_dict
from pretrainer.objectives.heads import PretrainingModel, pretraining_model
from pretrainer.runs import load_run


@pytest.fixture
def tokenizer():
    return train_tokenizer(["a run keeps its tokenizer beside its weights"] * 4,
                           TokenizerConfig(vocab_size=60, min_frequency=1))


def _old_flat_state(model: PretrainingModel) -> dict:
    """The keys a pre-training run had when BertModel carried mlm_head / nsp_head itself."""
    return {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}


def test_old_pretraining_run_loads_with_its_heads(make_model, tokenizer, tmp_path):
    model = pretraining_model(make_model("bert"), ["mlm_head", "nsp_head"]).eval()
    (tmp_path / "model.json").write_text(json.dumps(model_config_dict(model.backbone)))  # no "heads"
    save_weights(_old_flat_state(model), tmp_path / "model.safetensors")
    tokenizer.save(tmp_path)
    loaded, _ = load_run(tmp_path)
    assert isinstance(loaded, PretrainingModel) and loaded.head_names == ["mlm_head", "nsp_head"]
    x = torch.randint(4, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm_logits(loaded(x)), model.lm_logits(model(x)), atol=0, rtol=0)


def test_old_classifier_run_drops_the_heads_its_backbone_carried(make_model, tokenizer, tmp_path):
    clf = SequenceClassifier(make_model("bert"), 3).eval()
    heads = pretraining_model(clf.backbone, ["mlm_head", "nsp_head"])
    old_state = {**clf.state_dict(), **{f"backbone.{k}": v for k, v in heads.state_dict().items()
                                        if not k.startswith("backbone.")}}
    assert any(k.startswith("backbone.mlm_head.") for k in old_state)
    (tmp_path / "model.json").write_text(json.dumps(model_config_dict(clf)))
    save_weights(old_state, tmp_path / "model.safetensors")
    tokenizer.save(tmp_path)
    loaded, _ = load_run(tmp_path)
    loaded.eval()
    batch = {"input_ids": torch.randint(4, 61, (2, 9))}
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), clf(batch), atol=0, rtol=0)


def test_gpt_run_keeps_its_own_lm_head(make_model, tokenizer, tmp_path):
    model = make_model("gpt").eval()
    (tmp_path / "model.json").write_text(json.dumps(model_config_dict(model)))
    save_weights(model, tmp_path / "model.safetensors")  # an old causal-LM run: flat keys
    tokenizer.save(tmp_path)
    loaded, _ = load_run(tmp_path)
    assert isinstance(loaded, PretrainingModel) and loaded.head_names == []
    x = torch.randint(4, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm_logits(loaded(x)), model.lm_logits(model(x)), atol=0, rtol=0)


def test_resume_keeps_the_global_batch_not_the_per_process_one(tmp_path):
    """2 processes x 4 sequences resume as 1 x 8 (the same batches); 1 x 4 would change the run."""
    import json

    import pytest

    from pretrainer.config import load_config, save_config
    from pretrainer.errors import PretrainerError
    from pretrainer.runs import check_resume

    save_config(load_config(None, ["--train.batch_size=4"]), tmp_path / "config.toml")
    (tmp_path / "checkpoints" / "step_000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest").write_text("step_000002\n")
    state = {"step": 2, "extra": {"loader": {"epoch": 0, "samples": 16, "global_batch": 8}}}
    (tmp_path / "checkpoints" / "step_000002" / "state.json").write_text(json.dumps(state))
    check_resume(tmp_path, load_config(None, ["--train.batch_size=8"]), ("train",), world_size=1)
    check_resume(tmp_path, load_config(None, ["--train.batch_size=4"]), ("train",), world_size=2)
    with pytest.raises(PretrainerError, match=r"global batch \(train.batch_size x processes\): 8 -> 4"):
        check_resume(tmp_path, load_config(None, ["--train.batch_size=4"]), ("train",), world_size=1)
