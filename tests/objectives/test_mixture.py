"""Multi-task pre-training (`objective.name = "mixture"`): the weighted loss, the shared module,
the per-sub-objective batches and metrics, exact resume, and the config errors."""

import json
import random

import numpy as np
import pytest
import torch

from pretrainer import api
from pretrainer.config import ObjectiveConfig, load_config, validate
from pretrainer.errors import PretrainerError
from pretrainer.io import read_model_state
from pretrainer.objectives.mixture import Mixture, ZipLoader
from pretrainer.registry import DATA

PAD, CLS, SEP, MASK = 0, 1, 2, 3  # as in conftest.py
VOCAB = 61
QUIET = dict(log=lambda *_: None)


def pair_batch(label: str, b=4, t=16, seed=0) -> dict:
    """A sentence-pair batch (ids >= 4 between [CLS] / [SEP]); `label` names its (B,) target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    ids[:, 0], ids[:, t // 2], ids[:, -1] = CLS, SEP, SEP
    return {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.bool),
            "special_tokens_mask": (ids == CLS) | (ids == SEP),
            "token_type_ids": (torch.arange(t) > t // 2).long().expand(b, t).clone(),
            label: torch.randint(0, 2, (b,), generator=g)}


def mlm_batch(b=4, t=16, seed=1) -> dict:
    batch = pair_batch("unused", b, t, seed)
    ids = batch["input_ids"]
    ids[:, t // 2] = 5  # one segment
    return {"input_ids": ids, "attention_mask": batch["attention_mask"], "special_tokens_mask": (ids == CLS) | (ids == SEP)}


def mixture(tokenizer, names=("mlm", "mlm_sop"), weights=(), **cfg) -> Mixture:
    return Mixture(ObjectiveConfig(name="mixture", mixture=list(names), weights=list(weights), **cfg), tokenizer)


def flat(**batches) -> dict:
    return {f"{name}/{key}": value for name, batch in batches.items() for key, value in batch.items()}


def test_loss_is_the_weighted_sum_of_the_sub_objectives_losses(tokenizer, make_model):
    objective = mixture(tokenizer, weights=[1.0, 0.5], mask_rate=0.3)
    model = objective.build(make_model("bert"))
    batches = {"mlm": mlm_batch(), "mlm_sop": pair_batch("sentence_order_label")}
    torch.manual_seed(7)
    out = objective(model, flat(**batches))
    torch.manual_seed(7)  # the same masks again: the sub-objectives draw them in mixture order
    mlm = objective.subs["mlm"](model, batches["mlm"])
    sop = objective.subs["mlm_sop"](model, batches["mlm_sop"])
    assert out["loss"].item() == pytest.approx(mlm["loss"].item() + 0.5 * sop["loss"].item(), rel=1e-6)
    assert out["mlm_sop/loss"].item() == pytest.approx(sop["mlm_loss"].item() + sop["sop_loss"].item(), rel=1e-6)
    # Each sub-objective's metrics under its own prefix; tokens of both batches counted.
    assert {"mlm/loss", "mlm/mlm_acc", "mlm_sop/loss", "mlm_sop/mlm_acc", "mlm_sop/sop_acc"} <= out.keys()
    assert out["mlm/mlm_acc"] == mlm["mlm_acc"] and out["mlm_sop/sop_acc"] == sop["sop_acc"]
    assert out["n_tokens"] == 2 * 4 * 16


@pytest.mark.parametrize("names,batches", [
    (("mlm", "mlm_sop"), ("mlm", "sentence_order_label")),
    (("mlm_sop", "mlm"), ("sentence_order_label", "mlm")),  # the order does not change the module
    (("mlm", "mlm_nsp"), ("mlm", "next_sentence_label")),
])
def test_one_module_with_the_union_of_heads_and_every_parameter_trained(names, batches, tokenizer, make_model):
    objective = mixture(tokenizer, names)
    model = objective.build(make_model("bert")).train()
    pair = [n for n in names if n != "mlm"][0]
    assert model.head_names == sorted({"mlm_head", pair.replace("mlm_", "") + "_head"})  # mlm_head once, shared
    assert model.backbone.pooler.weight.requires_grad  # the pair head reads it, though MLM alone freezes it
    parts = {name: mlm_batch() if label == "mlm" else pair_batch(label) for name, label in zip(names, batches)}
    objective(model, flat(**parts))["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_weights_scale_each_sub_objectives_gradient(tokenizer, make_model):
    grads = {}
    for weight in (0.5, 2.0):
        objective = mixture(tokenizer, weights=[1.0, weight])
        torch.manual_seed(0)
        model = objective.build(make_model("bert"))
        torch.manual_seed(3)
        objective(model, flat(mlm=mlm_batch(), mlm_sop=pair_batch("sentence_order_label")))["loss"].backward()
        grads[weight] = model.sop_head.weight.grad.clone()  # only the SOP loss reaches the SOP head
    torch.testing.assert_close(grads[2.0], 4 * grads[0.5])


def test_a_zero_weight_leaves_that_sub_objective_out(tokenizer, make_model):
    objective = mixture(tokenizer, weights=[1.0, 0.0])
    assert list(objective.subs) == ["mlm"]
    model = objective.build(make_model("bert"))
    # No head that only weight decay would move; the pooler MLM does not read stays frozen,
    # so every trainable parameter still gets a gradient (DDP without find_unused_parameters).
    assert model.head_names == ["mlm_head"] and not model.backbone.pooler.weight.requires_grad
    out = objective(model, flat(mlm=mlm_batch()))
    out["loss"].backward()
    assert not any(k.startswith("mlm_sop/") for k in out)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_progress_and_initialisation_reach_every_sub_objective(tokenizer, make_model):
    objective = mixture(tokenizer, mask_rate=0.4, mask_rate_end=0.1, unigram_bias=True)
    objective.set_progress(0.5)
    assert [sub.mask_rate for sub in objective.subs.values()] == [pytest.approx(0.25)] * 2
    module = objective.build(make_model("bert"))

    class CountingData:
        def token_counts(self):
            return np.arange(VOCAB)

    objective.initialise(module, CountingData())
    assert int(module.mlm_head.bias.argmax()) == VOCAB - 1  # the shared head, from the counts


def test_zip_loader_resumes_every_sub_loader():
    def counter(start):
        class Counter:
            def __init__(self):
                self.n = start

            def __next__(self):
                self.n += 1
                return {"x": torch.tensor([self.n])}

            def state_dict(self):
                return {"n": self.n}

            def load_state_dict(self, state):
                self.n = state["n"]

        return Counter()

    loader = ZipLoader({"a": counter(0), "b": counter(100)})
    next(loader)
    state = json.loads(json.dumps(loader.state_dict()))  # as the checkpoint's state.json holds it
    expected = next(loader)
    again = ZipLoader({"a": counter(0), "b": counter(100)})
    again.load_state_dict(state)
    assert {k: int(v) for k, v in next(again).items()} == {k: int(v) for k, v in expected.items()} == {"a/x": 2, "b/x": 102}
    with pytest.raises(PretrainerError, match="objective.mixture"):
        ZipLoader({"a": counter(0), "c": counter(0)}).load_state_dict(state)


@pytest.mark.parametrize("names,weights,key", [
    ([], [], "'objective.mixture'"),
    (["mlm", "nope"], [], "'objective.mixture[1]'"),
    (["mlm", "classification"], [], "'objective.mixture[1]'"),
    (["mlm", "mixture"], [], "'objective.mixture[1]'"),
    (["mlm_sop", "mlm_sop"], [], "'objective.mixture[1]'"),
    (["mlm", "mlm_sop"], [1.0], "'objective.weights'"),
    (["mlm", "mlm_sop"], [1.0, 0.5, 1.0], "'objective.weights'"),
    (["mlm", "mlm_sop"], [1.0, -0.5], "'objective.weights[1]'"),
    (["mlm", "mlm_sop"], [float("nan"), 1.0], "'objective.weights[0]'"),
    (["mlm", "mlm_sop"], [0.0, 0.0], "'objective.weights'"),
])
def test_bad_mixture_keys_stop_with_one_line_naming_the_key(names, weights, key, tokenizer):
    with pytest.raises(PretrainerError) as error:
        # as a run builds it: the config's rules (ObjectiveConfig.check), then the objective
        cfg = ObjectiveConfig(name="mixture", mixture=list(names), weights=list(weights))
        validate(cfg, prefix="objective.")
        Mixture(cfg, tokenizer)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_mlm_with_clm_on_one_backbone_is_refused(tokenizer, make_model):
    objective = mixture(tokenizer, ["mlm", "clm"])
    assert "objective.mixture[1] = 'clm'" in objective.check_backbone(make_model("bert"))
    assert "objective.mixture[0] = 'mlm'" in objective.check_backbone(make_model("gpt"))
    assert objective.extra_positions == 1  # the CLM batches' extra target position


# ---------------------------------------------------------------- whole runs

WORDS = "the a cat dog bird sat ran flew on under over mat log tree".split()


@pytest.fixture(scope="module")
def config_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    rng = random.Random(0)
    docs = [" ".join(f"{rng.choice(WORDS[:2])} {rng.choice(WORDS[2:5])} {rng.choice(WORDS[5:8])} "
                     f"{rng.choice(WORDS[8:11])} the {rng.choice(WORDS[11:])} ." for _ in range(rng.randint(2, 4)))
            for _ in range(40)]
    (root / "corpus.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    return {"data": {"train": [str(root / "corpus.txt")], "cache_dir": str(root / "cache"), "holdout": 0.1},
            "tokenizer": {"vocab_size": 80, "min_frequency": 1},
            "model": {"n_layers": 1, "d_model": 16, "n_heads": 2, "max_len": 32},
            "objective": {"name": "mixture", "mixture": ["mlm", "mlm_nsp"], "weights": [1.0, 0.5]},
            "train": {"batch_size": 4, "seq_len": 24, "log_every": 1, "eval_every": 3, "eval_batches": 2,
                      "warmup": 0.0, "max_steps": 6, "save_every": 2},
            "impl": {"threads": 1, "deterministic": True, "progress": False}}


def run_config(config_data, run_dir, **objective):
    return load_config(base={**config_data, "run": {"dir": str(run_dir)},
                             "objective": {**config_data["objective"], **objective}})


def test_mixture_run_logs_prefixed_metrics_and_resumes_exactly(config_data, tmp_path, monkeypatch, crash_after):
    whole = api.pretrain(run_config(config_data, tmp_path / "whole"), **QUIET)
    assert whole.step == 6
    records = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    train = next(r["metrics"] for r in records if r["split"] == "train")
    held_out = next(r["metrics"] for r in records if r["split"] == "eval")
    assert {"loss", "mlm/loss", "mlm/mlm_acc", "mlm_nsp/loss", "mlm_nsp/nsp_acc", "mlm_nsp/mlm_acc"} <= train.keys()
    assert {"mlm/mlm_acc", "mlm/mlm_loss", "mlm_nsp/nsp_acc", "mlm_nsp/mlm_acc"} <= held_out.keys()
    assert train["loss"] == pytest.approx(train["mlm/loss"] + 0.5 * train["mlm_nsp/loss"], rel=1e-5)

    text = DATA.get("text")
    real = text.train_batches
    # Dies in step 5 (after the step-4 checkpoint), on the first sub-objective's fifth batch.
    monkeypatch.setattr(text, "train_batches", lambda self, *a, **k: crash_after(real(self, *a, **k), 4))
    with pytest.raises(RuntimeError, match="simulated"):
        api.pretrain(run_config(config_data, tmp_path / "killed"), **QUIET)
    monkeypatch.undo()
    api.pretrain(run_config(config_data, tmp_path / "killed"), resume=True, **QUIET)
    a = read_model_state(tmp_path / "whole" / "model.safetensors")
    b = read_model_state(tmp_path / "killed" / "model.safetensors")
    assert {k.split(".")[0] for k in a} == {"backbone", "mlm_head", "nsp_head"}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not exact"

    evaluated = api.evaluate(run_config(config_data, tmp_path / "whole"), **QUIET)
    assert {"mlm/mlm_acc", "mlm_nsp/nsp_acc"} <= evaluated.keys()
    assert evaluated == api.evaluate(run_config(config_data, tmp_path / "whole"), **QUIET)


def test_mlm_with_clm_run_is_refused_in_one_line(config_data, tmp_path):
    with pytest.raises(PretrainerError) as error:
        api.pretrain(run_config(config_data, tmp_path / "run", mixture=["mlm", "clm"], weights=[]), **QUIET)
    message = str(error.value)
    assert "objective.mixture[1] = 'clm'" in message and "\n" not in message
