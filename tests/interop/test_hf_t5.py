"""Hugging Face T5ForConditionalGeneration <-> our T5: import and export give the same logits
(<= 1e-4) and the same greedy tokens as transformers' own `generate`."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from pretrainer.config import TokenizerConfig  # noqa: E402
from pretrainer.data.tokenizer import train_tokenizer  # noqa: E402
from pretrainer.errors import PretrainerError  # noqa: E402
from pretrainer.interop.hf_export import export_hf  # noqa: E402
from pretrainer.interop.hf_import import import_hf  # noqa: E402
from pretrainer.io import save_weights  # noqa: E402
from pretrainer.models import build_model  # noqa: E402
from pretrainer.models.t5 import T5Config  # noqa: E402
from pretrainer.objectives.heads import pretraining_model  # noqa: E402
from pretrainer.runs import module_spec  # noqa: E402

transformers.logging.set_verbosity_error()

CORPUS = ["the quick brown fox jumps over the lazy dog .", "a second , shorter line !",
          "the dog and the fox are friends", "lazy dogs sleep all day long"] * 5
SHAPES = dict(d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=3,
              relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)
# (feed_forward_proj, tied): T5 v1.0 (relu, tied, scaled) and v1.1 (gated-gelu, untied)
VARIANTS = [("relu", True), ("gated-gelu", False)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=90, min_frequency=1, sentinels=4))


def perturb(model):
    """Non-trivial norms and a distinct untied head, so a mixed-up mapping shows."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
        head = getattr(model, "lm_head", None)
        if head is not None and head.weight is not model.shared.weight:
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.2)


def inputs(tokenizer):
    rows = tokenizer.encode_batch(CORPUS[:3])
    x = torch.full((3, max(map(len, rows))), tokenizer.pad_id)
    mask = torch.zeros_like(x)
    for i, row in enumerate(rows):
        x[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    targets = torch.randint(5, tokenizer.vocab_size, (3, 7), generator=torch.Generator().manual_seed(2))
    targets[:, 0] = tokenizer.pad_id  # the decoder starts from [PAD], as T5's
    return x, mask, targets


def hf_t5(tokenizer, projection, tied):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=tokenizer.vocab_size, feed_forward_proj=projection, tie_word_embeddings=tied,
                                pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
                                decoder_start_token_id=tokenizer.pad_id, **SHAPES)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not tied:  # transformers ties the head at construction; an untied checkpoint has its own
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    perturb(model)
    with torch.no_grad():  # rows of one length: no single token's large norm wins every step
        table = model.shared.weight
        table.copy_(table / table.norm(dim=1, keepdim=True) * table.shape[1] ** 0.5)
        table[tokenizer.pad_id] = 0  # nor the start token, whose row the decoder reads first
        model.lm_head.weight.data[tokenizer.pad_id] = 0
    return model


@pytest.mark.parametrize("projection,tied", VARIANTS)
def test_import_matches_transformers(projection, tied, tokenizer, tmp_path):
    ref = hf_t5(tokenizer, projection, tied)
    ref.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    model, loaded_tokenizer, info = import_hf(tmp_path)
    assert model.config.tie_embeddings == tied and model.config.gated == (projection != "relu")
    assert info["dropped"] == [] and loaded_tokenizer.sentinel_ids == tokenizer.sentinel_ids
    x, mask, y = inputs(tokenizer)
    with torch.no_grad():
        expected = ref(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
        got = model.backbone.decoder_logits(model(x, mask.bool(), decoder_input_ids=y))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # greedy decoding gives transformers' tokens (no KV cache there either, so the same sums)
    with torch.no_grad():
        ours = model.backbone.generate(x, 8, start_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                                       pad_id=tokenizer.pad_id, attention_mask=mask.bool())
        theirs = ref.generate(input_ids=x, attention_mask=mask, max_new_tokens=8, do_sample=False, num_beams=1,
                              use_cache=False)
    assert ours.tolist() == theirs.tolist() and len(set(ours[:, 1:].flatten().tolist())) > 1


def write_run(run_dir, model, tokenizer):
    run_dir.mkdir(parents=True)
    (run_dir / "model.json").write_text(json.dumps(module_spec(model)))
    save_weights(model, run_dir / "model.safetensors")
    tokenizer.save(run_dir)
    return run_dir


@pytest.mark.parametrize("gated,tied", [(False, True), (True, False)])
def test_export_loads_in_transformers_with_the_same_logits(gated, tied, tokenizer, tmp_path):
    torch.manual_seed(0)
    cfg = T5Config(n_layers=2, n_decoder_layers=3, d_model=32, n_heads=4, d_kv=6, d_ff=40, gated=gated,
                   activation="gelu_tanh" if gated else "relu", relative_buckets=8, relative_max_distance=20,
                   dropout=0.0, tie_embeddings=tied)
    model = pretraining_model(build_model(cfg, tokenizer.vocab_size), []).eval()
    perturb(model.backbone)
    out = export_hf(write_run(tmp_path / "run", model, tokenizer), tmp_path / "hf")
    hf, info = transformers.T5ForConditionalGeneration.from_pretrained(out, local_files_only=True,
                                                                       output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["T5ForConditionalGeneration"]
    assert written["decoder_start_token_id"] == tokenizer.pad_id and written["eos_token_id"] == tokenizer.eos_id
    x, mask, y = inputs(tokenizer)
    with torch.no_grad():
        expected = model.backbone.decoder_logits(model(x, mask.bool(), decoder_input_ids=y))
        torch.testing.assert_close(hf.eval()(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits,
                                   expected, atol=1e-4, rtol=0)
        again, _, _ = import_hf(out)  # and back: exactly our weights
        torch.testing.assert_close(again.backbone.decoder_logits(again(x, mask.bool(), decoder_input_ids=y)),
                                   expected, atol=0, rtol=0)


def test_unsupported_feed_forward_is_refused(tokenizer, tmp_path):
    hf_t5(tokenizer, "relu", True).save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "feed_forward_proj": "gated-silu"}))
    with pytest.raises(PretrainerError, match="feed_forward_proj = 'gated-silu'"):
        import_hf(tmp_path)


def test_untied_checkpoint_without_its_head_gets_shared_unscaled(tokenizer, tmp_path):
    """transformers ties a missing lm_head.weight to shared; with scale_decoder_outputs false that
    is an unscaled head equal to the embedding, which we hold as an untied copy."""
    ref = hf_t5(tokenizer, "relu", True)
    ref.config.scale_decoder_outputs = False  # T5 v1.1-style output, but the head left tied
    ref.save_pretrained(tmp_path)
    tokenizer.save(tmp_path)
    state = {k: v for k, v in load_file(str(tmp_path / "model.safetensors")).items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    model, _, info = import_hf(tmp_path)
    assert not model.config.tie_embeddings and any("copy of shared" in n for n in info["notes"])
    x, mask, y = inputs(tokenizer)
    with torch.no_grad():
        expected = ref(input_ids=x, attention_mask=mask, decoder_input_ids=y).logits
        got = model.backbone.decoder_logits(model(x, mask.bool(), decoder_input_ids=y))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
