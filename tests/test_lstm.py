"""Recurrent language models (models/lstm.py, objectives/bilm.py) and ULMFiT's transfer recipe:
slanted triangular rates (training/schedule.py) and gradual unfreezing (transfer/unfreeze.py).

The registry contract tests (tests/test_registry_contracts.py) already train "lstm" with clm and
"elmo" with bilm, and check that both save, load and resume exactly."""

import json
import math
import random

import pytest
import torch

from pretrainer.api import pretrain
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.models import build_model
from pretrainer.models.heads import SequenceClassifier
from pretrainer.models.lstm import ELMoConfig, LSTMConfig, reverse_within
from pretrainer.objectives.bilm import BidirectionalLM
from pretrainer.objectives.clm import CausalLM
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.training.schedule import lr_factor
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.unfreeze import GradualUnfreezing

V = 50
QUIET = dict(log=lambda *_: None)


def lstm(bidirectional: bool = False, **overrides):
    torch.manual_seed(0)
    cfg = ELMoConfig.tiny() if bidirectional else LSTMConfig.tiny()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return build_model(cfg, V).eval()


# ---------------------------------------------------------------- the model


def test_forward_lm_is_causal():
    model = lstm()
    ids = torch.randint(5, V, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = torch.randint(5, V, (2, 5))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 12, model.d_model) and model.causal
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_backward_stack_reads_right_to_left_and_ignores_pads():
    model = lstm(bidirectional=True)
    assert not model.causal and model.d_model == 2 * model.config.d_embed
    ids = torch.randint(5, V, (2, 12))
    changed = ids.clone()
    changed[:, :5] = torch.randint(5, V, (2, 5))
    with torch.no_grad():
        fwd_a, bwd_a = model.directions(ids)
        fwd_b, bwd_b = model.directions(changed)
    # the backward stack at t has read tokens >= t: the tokens before 5 do not reach positions >= 5
    torch.testing.assert_close(bwd_a[:, 5:], bwd_b[:, 5:], atol=0, rtol=0)
    assert not torch.allclose(bwd_a[:, :5], bwd_b[:, :5]) and not torch.allclose(fwd_a[:, 5:], fwd_b[:, 5:])
    # Right padding: a row's real positions read the same as the row alone, in both directions.
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 8:] = False
    padded = ids.clone()
    padded[0, 8:] = 0
    with torch.no_grad():
        fwd_p, bwd_p = model.directions(padded, mask)
        fwd_1, bwd_1 = model.directions(ids[:1, :8])
    torch.testing.assert_close(bwd_p[0, :8], bwd_1[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fwd_p[0, :8], fwd_1[0], atol=1e-6, rtol=1e-5)


def test_reverse_within_keeps_pads_in_place_and_is_its_own_inverse():
    x = torch.arange(10.0).view(2, 5, 1)
    r = reverse_within(x, torch.tensor([3, 5]))
    assert r[0, :, 0].tolist() == [2, 1, 0, 3, 4] and r[1, :, 0].tolist() == [9, 8, 7, 6, 5]
    torch.testing.assert_close(reverse_within(r, torch.tensor([3, 5])), x)


def test_output_softmax_is_the_embedding_table():
    model = lstm()
    _, weight, bias = model.lm_projection(torch.zeros(1, 1, model.config.d_embed))
    assert weight is model.embeddings.word_embeddings.weight and bias is None
    names = [n for n, _ in model.named_parameters()]
    assert sum(p.shape[0] == V for _, p in model.named_parameters()) == 1, names  # one (V, E) matrix


def test_poolings_and_concat_head_width():
    model = lstm()
    hidden = torch.randn(2, 6, model.d_model)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6], dtype=torch.bool)
    torch.testing.assert_close(model.pooled(hidden, mask, "last")[0], hidden[0, 2])
    torch.testing.assert_close(model.pooled(hidden, mask, "max")[0], hidden[0, :3].max(0).values)
    concat = model.pooled(hidden, mask, "concat")
    assert concat.shape == (2, 3 * model.d_model)
    clf = SequenceClassifier(model, 2, pooling="concat")
    assert clf.head.in_features == 3 * model.d_model
    out = clf({"input_ids": torch.randint(5, V, (2, 6)), "attention_mask": mask})
    assert out.shape == (2, 2)


def test_layer_ids_one_per_lstm_layer_for_discriminative_rates():
    model = lstm(n_layers=3)
    depth = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert depth["embeddings.word_embeddings.weight"] == 0
    for i in range(3):
        assert {d for n, d in depth.items() if n.startswith(f"forward_stack.layers.{i}.")} == {i + 1}
    clf = SequenceClassifier(model, 2, layer_decay=0.5)
    scales = {g["lr_scale"] for g in clf.param_groups(0.01)}
    assert scales == {1.0, 0.5, 0.25, 0.125, 0.0625}  # head, layers 3..1, embeddings


def test_scalar_mix_weights_sum_to_one_and_start_as_the_average():
    model = lstm(bidirectional=True)
    mix = model.scalar_mix
    assert torch.softmax(mix.weights, 0).sum().item() == pytest.approx(1.0)
    layers = [torch.randn(2, 3, 4) for _ in range(3)]
    torch.testing.assert_close(mix(layers), sum(layers) / 3)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([5.0, -1.0, 2.0]))
        mix.gamma.fill_(2.0)
    s = torch.softmax(mix.weights, 0)
    assert s.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(mix(layers), 2.0 * sum(w * h for w, h in zip(s, layers)))


def test_dropouts_are_off_in_eval_and_locked_over_time_in_training():
    model = lstm(embed_dropout=0.3, input_dropout=0.5, hidden_dropout=0.5, output_dropout=0.5)
    x = torch.ones(2, 7, model.config.d_embed)
    model.train()
    y = model.output_dropout(x)
    assert (y == 0).any() and torch.equal(y[:, 0], y[:, 5])  # one mask per sequence, every time step
    ids = torch.full((1, 4), 7)
    rows = model.embeddings(ids)[0]
    assert all(torch.equal(rows[0], r) for r in rows)  # a word dropped everywhere or nowhere
    model.eval()
    assert torch.equal(model.output_dropout(x), x)


# ---------------------------------------------------------------- objectives


def tiny_corpus_batches(n: int, T: int = 16, seed: int = 0):
    """Sequences with a strong left-to-right rule (each token the previous + 1, mod a cycle)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        start = torch.randint(5, V, (8, 1), generator=g)
        yield {"input_ids": 5 + (start - 5 + torch.arange(T + 1)) % (V - 5)}


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lm_loss_falls(bidirectional):
    objective = (BidirectionalLM if bidirectional else CausalLM)(load_config().objective)
    backbone = lstm(bidirectional).train()
    assert objective.check_backbone(backbone) is None
    module = objective.build(backbone)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for batch in tiny_corpus_batches(60):
        loss = objective(module, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    metrics = objective.evaluate(module, tiny_corpus_batches(2, seed=1))
    if bidirectional:
        assert metrics["ppl_forward"] < V and metrics["ppl_backward"] < V
    assert metrics["ppl"] == pytest.approx(math.exp(metrics["loss"]))


def test_objectives_refuse_the_wrong_direction():
    cfg = load_config().objective
    assert "causal" in CausalLM(cfg).check_backbone(lstm(bidirectional=True))
    assert "backward" in BidirectionalLM(cfg).check_backbone(lstm())


def test_bilm_freezes_the_scalar_mix_only_for_pre_training():
    backbone = lstm(bidirectional=True)
    module = BidirectionalLM(load_config().objective).build(backbone)
    assert isinstance(module, PretrainingModel) and not module.backbone.scalar_mix.weights.requires_grad
    assert all(p.requires_grad for n, p in module.named_parameters() if "scalar_mix" not in n)


# ---------------------------------------------------------------- ULMFiT's transfer recipe


def test_stlr_is_a_slanted_triangle_peaking_at_cut_frac():
    cut, ratio = 0.1, 32
    factors = [lr_factor(t / 1000, cut, "stlr", 1 / ratio) for t in range(1001)]
    assert max(range(1001), key=factors.__getitem__) == 100
    assert factors[0] == pytest.approx(1 / ratio) and factors[100] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(1 / ratio)
    # Howard & Ruder's formula at T = 1000 steps
    for t in (0, 37, 100, 480, 999):
        p = t / 100 if t < 100 else 1 - (t - 100) / (100 * (1 / cut - 1))
        assert factors[t] == pytest.approx((1 + p * (ratio - 1)) / ratio)
    # after the cut it is "linear" with the same floor; before it, linear starts from 0
    assert factors[500] == pytest.approx(lr_factor(0.5, cut, "linear", 1 / ratio))
    assert lr_factor(0.0, cut, "linear", 1 / ratio) == 0.0


def test_gradual_unfreezing_trains_one_more_group_from_the_top_every_n_steps():
    clf = SequenceClassifier(lstm(n_layers=2), 2)
    seen = []
    unfreezing = GradualUnfreezing(clf, every=3, log=seen.append)
    assert unfreezing.groups == [3, 2, 1, 0]  # head, layer 2 (+ projection), layer 1, embeddings

    def trainable():
        return {n for n, p in clf.named_parameters() if p.requires_grad}

    unfreezing(0)
    assert trainable() == {"head.weight", "head.bias"}
    unfreezing(2)
    assert trainable() == {"head.weight", "head.bias"}
    unfreezing(3)
    assert trainable() == {"head.weight", "head.bias"} | {n for n, _ in clf.named_parameters()
                                                           if n.startswith(("backbone.forward_stack.layers.1.",
                                                                            "backbone.forward_stack.proj."))}
    unfreezing(9)
    assert trainable() == {n for n, _ in clf.named_parameters()}
    unfreezing(100)
    assert len(seen) == 3  # a log line when a group joins, not every step
    unfreezing.restore()
    assert trainable() == {n for n, _ in clf.named_parameters()}


def test_gradual_unfreezing_leaves_what_the_method_froze_frozen():
    clf = SequenceClassifier(lstm(), 2)
    clf.backbone.embeddings.requires_grad_(False)
    unfreezing = GradualUnfreezing(clf, every=1, log=lambda *_: None)
    unfreezing(10)
    assert not clf.backbone.embeddings.word_embeddings.weight.requires_grad
    unfreezing.restore()
    assert not clf.backbone.embeddings.word_embeddings.weight.requires_grad


def test_gradual_unfreezing_needs_two_groups():
    clf = SequenceClassifier(lstm(), 2)
    clf.backbone.requires_grad_(False)  # only the head trains: nothing to unfreeze
    with pytest.raises(PretrainerError, match="finetune.gradual_unfreezing"):
        GradualUnfreezing(clf, every=1)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory):
    """A tiny causal LSTM LM pre-trained for a few steps, and a config that fine-tunes it."""
    root = tmp_path_factory.mktemp("lstm")
    rng = random.Random(0)
    words = "good bad fine poor great awful nice dull the a film".split()
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choices(words, k=20)) for _ in range(40)))
    rows = [{"text": " ".join(rng.choices(words[2:], k=5) + (["good"] if i % 2 else ["bad"])), "label": str(i % 2)}
            for i in range(48)]
    (root / "labeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        f'--run.dir="{root / "run"}"', f'--data.train="{root / "corpus.txt"}"', f'--data.cache_dir="{root / "cache"}"',
        "--tokenizer.vocab_size=40", "--tokenizer.min_frequency=1", "--model.name=lstm", "--model.d_embed=16",
        "--model.hidden=24", "--model.n_layers=2", "--objective.name=clm", "--train.batch_size=4",
        "--train.seq_len=16", "--train.max_steps=3", "--train.eval_every=0", "--train.save_every=0",
        "--impl.progress=false", "--impl.deterministic=true", f'--finetune.init="{root / "run"}"',
        f'--finetune.data.train="{root / "labeled.jsonl"}"', f'--finetune.data.dev="{root / "labeled.jsonl"}"',
        "--finetune.train.batch_size=8", "--finetune.max_len=16", "--finetune.pooling=concat",
        "--finetune.method=llrd", "--finetune.layer_decay=0.385", "--finetune.gradual_unfreezing=true",
        "--finetune.unfreeze_every=2", "--finetune.train.schedule=stlr", "--finetune.train.warmup=0.1",
        "--finetune.train.min_lr_ratio=0.03125", "--finetune.train.max_steps=8", "--finetune.train.epochs=0", "--finetune.train.save_every=4",
        "--finetune.train.eval_every=4", "--finetune.train.lr=3e-3"]
    pretrain(load_config(None, overrides), **QUIET)
    return root, overrides


def test_ulmfit_recipe_fine_tunes_and_resumes_exactly(lstm_run, monkeypatch, crash_after):
    root, overrides = lstm_run
    lines = []
    whole = finetune(load_config(None, overrides + [f'--finetune.dir="{root / "whole"}"']), log=lines.append)
    assert whole["steps"] == 8 and 0 <= whole["dev"]["accuracy"] <= 1
    assert sum("gradual unfreezing" in line for line in lines) == 4  # head, layer 2, layer 1, embeddings
    from pretrainer.runs import load_run

    saved, _ = load_run(root / "whole")  # the concat head (3 x d_model wide) is rebuilt from model.json
    assert isinstance(saved, SequenceClassifier) and saved.pooling == "concat"
    assert saved.head.in_features == 3 * saved.backbone.d_model
    # A run killed after step 5 (its last checkpoint at step 4, mid-unfreezing) resumes to the same weights.
    from pretrainer.transfer.tasks import classification

    real = classification.Classification.batches

    def dying(self, *a, **k):
        return crash_after(real(self, *a, **k), 5)

    monkeypatch.setattr(classification.Classification, "batches", dying)
    killed = load_config(None, overrides + [f'--finetune.dir="{root / "killed"}"'])
    with pytest.raises(RuntimeError, match="simulated"):
        finetune(killed, **QUIET)
    monkeypatch.undo()
    finetune(killed, resume=True, **QUIET)
    from pretrainer.io import read_model_state

    a, b = (read_model_state(root / d / "model.safetensors") for d in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not exact"


def test_probe_reads_concat_features_and_refuses_gradual_unfreezing(lstm_run, tmp_path):
    root, overrides = lstm_run
    cfg = load_config(None, overrides + [f'--finetune.dir="{tmp_path / "ft"}"', "--finetune.pooling=concat",
                                         "--finetune.method=probe", "--finetune.gradual_unfreezing=false"])
    assert finetune(cfg, **QUIET)["dev"]["accuracy"] >= 0  # the probe reads [last, max, mean] features
    bad = load_config(None, overrides + [f'--finetune.dir="{tmp_path / "bad"}"', "--finetune.method=probe"])
    with pytest.raises(PretrainerError, match="finetune.gradual_unfreezing"):
        finetune(bad, **QUIET)
