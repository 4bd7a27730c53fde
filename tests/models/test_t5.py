"""The T5 encoder–decoder: relative position buckets, masks, initialisation, decoding, save/load
and fine-tuning its encoder as a classifier. Parity with Hugging Face is in tests/interop."""

import json

import pytest
import torch
import torch.nn.functional as F

from tokenizers import Tokenizer, models

from pretrainer.data.tokenizer import WORDPIECE_SPECIALS
from pretrainer.io import save_weights
from pretrainer.models import SequenceClassifier, build_model
from pretrainer.models.t5 import T5Config, relative_position_bucket
from pretrainer.runs import load_run, module_spec

VOCAB = 61


def t5(**overrides):
    torch.manual_seed(0)
    cfg = dict(n_layers=2, d_model=32, n_heads=2, d_ff=48, max_len=40, relative_buckets=8,
               relative_max_distance=16, dropout=0.0)
    model = build_model(T5Config(**{**cfg, **overrides}), VOCAB).eval()
    with torch.no_grad():  # the pad/start row at zero: decoding then does not just repeat token 0
        model.shared.weight[0].zero_()
    return model


def ids(b=2, t=12, seed=0):
    return torch.randint(4, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def test_relative_position_buckets_by_hand():
    # 8 buckets, max distance 16. Bidirectional: 4 per side, distances 0, 1 exact, then
    # 2 + floor(log(d / 2) / log(16 / 2) * 2): d = 2, 4 -> 2; d = 8 -> 3; d >= 16 -> 3 (the last).
    offsets = torch.tensor([0, -1, 1, -2, -4, -8, -16, 3, 100])
    got = relative_position_bucket(offsets, bidirectional=True, num_buckets=8, max_distance=16)
    assert got.tolist() == [0, 1, 5, 2, 2, 3, 3, 6, 7]
    # Causal: keys to the right share bucket 0; 8 buckets to the left, 0..3 exact, then
    # 4 + floor(log(d / 4) / log(16 / 4) * 4): d = 4 -> 4, 8 -> 6, 15 -> 7, 100 -> 7.
    offsets = torch.tensor([5, 0, -3, -4, -8, -15, -100])
    got = relative_position_bucket(offsets, bidirectional=False, num_buckets=8, max_distance=16)
    assert got.tolist() == [0, 0, 3, 4, 6, 7, 7]


def test_decoder_is_causal_and_encoder_bidirectional():
    model = t5()
    x, y = ids(), ids(t=8, seed=1)
    y2 = y.clone()
    y2[:, 5:] = (y[:, 5:] + 1 - 4) % (VOCAB - 4) + 4
    a, b = model(x, decoder_input_ids=y), model(x, decoder_input_ids=y2)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    x2 = x.clone()
    x2[:, -1] = (x[:, -1] + 1 - 4) % (VOCAB - 4) + 4
    assert not torch.allclose(model(x)[:, 0], model(x2)[:, 0])  # the first input token sees the last


def test_encoder_padding_is_hidden_from_the_decoder():
    model = t5()
    x, y = ids(), ids(t=6, seed=1)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:, 9:] = False
    x2 = x.clone()
    x2[:, 9:] = 5
    torch.testing.assert_close(model(x, mask, decoder_input_ids=y), model(x2, mask, decoder_input_ids=y))


def test_initialisation_follows_t5():
    torch.manual_seed(0)
    model = build_model(T5Config(n_layers=2, d_model=64, n_heads=4, d_ff=256), 500)
    qkv = model.encoder.blocks[0].attn.qkv.weight  # (3 * 64, 64): q, k, v
    assert abs(qkv[64:].std().item() - 64 ** -0.5) < 0.01  # k, v: 1 / sqrt(d_model)
    assert abs(qkv[:64].std().item() - (64 * 16) ** -0.5) < 0.004  # q: also 1 / sqrt(head_dim)
    assert abs(model.encoder.blocks[0].mlp.proj.weight.std().item() - 256 ** -0.5) < 0.005
    assert abs(model.shared.weight.std().item() - 1.0) < 0.05
    assert all((p == 1).all() for n, p in model.named_parameters() if p.dim() == 1)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_tied_head_scales_and_untied_head_does_not():
    tied, untied = t5(), t5(tie_embeddings=False)
    h = torch.randn(3, 32)
    torch.testing.assert_close(tied.decoder_logits(h), (h * 32 ** -0.5) @ tied.shared.weight.T)
    torch.testing.assert_close(untied.decoder_logits(h), h @ untied.lm_head.weight.T)


@pytest.mark.parametrize("gated", [False, True])
def test_save_and_load_give_identical_outputs(gated, tmp_path):
    model = t5(gated=gated, activation="gelu_tanh" if gated else "relu", tie_embeddings=not gated)
    (tmp_path / "model.json").write_text(json.dumps(module_spec(model)))
    save_weights(model, tmp_path / "model.safetensors")
    _write_tokenizer(tmp_path)
    loaded, _ = load_run(tmp_path)
    x, y = ids(), ids(t=7, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, decoder_input_ids=y), model(x, decoder_input_ids=y))


def _write_tokenizer(folder):
    vocab = {t: i for i, t in enumerate(WORDPIECE_SPECIALS + [f"w{i}" for i in range(VOCAB - 5)])}
    Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))


def test_greedy_is_beam_search_with_one_beam():
    model = t5()
    x = ids(b=3)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[2, 8:] = False
    greedy = model.generate(x, 10, start_id=0, attention_mask=mask)
    assert greedy.shape == (3, 11) and (greedy[:, 0] == 0).all() and len(set(greedy[:, 1:].flatten().tolist())) > 2
    assert torch.equal(model.generate(x, 10, start_id=0, attention_mask=mask, num_beams=1), greedy)
    # greedy really takes the argmax at each step
    first = model.decoder_logits(model(x, mask, decoder_input_ids=greedy[:, :1]))[:, -1].argmax(-1)
    assert torch.equal(first, greedy[:, 1])
    # with an end token, rows stop there (and are padded with it)
    eos = int(greedy[0, 3])
    stopped = model.generate(x, 10, start_id=0, eos_id=eos, attention_mask=mask)
    assert torch.equal(stopped[0, :4], greedy[0, :4]) and (stopped[0, 4:] == eos).all()
    assert torch.equal(model.generate(x, 10, start_id=0, eos_id=eos, attention_mask=mask, num_beams=1), stopped)


def test_beam_search_scores_at_least_as_well_as_greedy():
    model = t5()
    x = ids(b=2)

    def log_prob(out):
        logits = model.decoder_logits(model(x, decoder_input_ids=out[:, :-1]))
        return F.log_softmax(logits, -1).gather(-1, out[:, 1:, None]).squeeze(-1).sum(-1)

    greedy = model.generate(x, 6, start_id=0)
    beam = model.generate(x, 6, start_id=0, num_beams=4)
    assert beam.shape == greedy.shape
    assert (log_prob(beam) >= log_prob(greedy) - 1e-5).all()


def test_encoder_fine_tunes_as_a_classifier():
    model = t5()
    clf = SequenceClassifier(model, 2, pooling="mean", dropout=0.0)
    # The decoder is not read, so it is frozen and the head plus the encoder train.
    assert not any(p.requires_grad for p in model.decoder.parameters())
    x = ids(b=16, t=8, seed=5)
    labels = (x[:, 0] > VOCAB // 2).long()  # the label is in the first token
    batch = {"input_ids": x, "attention_mask": torch.ones_like(x, dtype=torch.bool)}
    optimizer = torch.optim.AdamW(clf.param_groups(0.0), lr=3e-3)
    clf.train()
    for _ in range(60):
        loss = F.cross_entropy(clf(batch), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    clf.eval()
    assert (clf(batch).argmax(-1) == labels).float().mean() == 1.0


def test_too_long_target_is_refused():
    model = t5()
    with pytest.raises(ValueError, match="max_len"):
        model(ids(), decoder_input_ids=ids(t=41))
