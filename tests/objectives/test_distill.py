"""Task-agnostic distillation (objectives/distill.py): each loss against a hand computation, zero
when the student is the teacher, projections, tokenizers, and what a run keeps of the teacher."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from pretrainer import api
from pretrainer.config import ObjectiveConfig, TokenizerConfig, load_config
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import read_model_state, save_weights
from pretrainer.models import build_model
from pretrainer.objectives.distill import Distillation
from pretrainer.runs import write_run_header

PAD, CLS, SEP = 0, 1, 2
VOCAB = 61
WORDS = "the a cat dog bird sat ran flew on under over mat log tree quickly slowly".split()
QUIET = dict(log=lambda *_: None)


def distill(teacher, tokenizer=None, **cfg) -> Distillation:
    """The objective with `teacher` given directly (a run's teacher is loaded from objective.teacher)."""
    objective = Distillation(ObjectiveConfig(name="distill", teacher="test", **cfg))
    objective._teacher = (teacher.eval().requires_grad_(False), tokenizer, "test")
    return objective


def text_batch(b=3, t=12, pad_row0=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    mask = torch.ones(b, t, dtype=torch.bool)
    if pad_row0:
        mask[0, t - pad_row0:] = False
        ids[0, t - pad_row0:] = PAD
    return {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": (ids == CLS) | (ids == SEP)}


@pytest.mark.parametrize("pooled_loss", ["cosine", "mse"])
def test_loss_is_zero_when_the_student_is_the_teacher(make_model, pooled_loss):
    teacher = make_model("bert")
    objective = distill(teacher, pooled_loss=pooled_loss, attention_relations=["qk", "vv", "qq", "kk"])
    module = objective.build(copy.deepcopy(teacher)).train()
    assert module.head_names == []  # same width: nothing to project
    out = objective(module, text_batch(pad_row0=4))
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    for key in ("pooled_loss", "hidden_loss", "attention_loss"):
        assert out[key].item() == pytest.approx(0.0, abs=1e-6), key
    assert out["pooled_cos"].item() == pytest.approx(1.0, abs=1e-6)


def layers_by_hand(model, ids, mask):
    """Hidden states entering each block and after the last one, and each block's q, k, v."""
    x = model.embeddings(ids, None)
    hidden, qkv = [x], []
    attn_mask = mask[:, None, None, :]
    for block in model.blocks:
        qkv.append(block.attn.qkv(x).split(model.d_model, dim=-1))
        x = block(x, attn_mask)
        hidden.append(x)
    return hidden, qkv


def relation_by_hand(a, b, heads, mask):
    B, T, C = a.shape
    a = a.view(B, T, heads, C // heads).transpose(1, 2)
    b = b.view(B, T, heads, C // heads).transpose(1, 2)
    scores = a @ b.transpose(-1, -2) / math.sqrt(C // heads)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return scores.softmax(-1)  # (B, H, T, T)


def test_each_loss_matches_a_hand_computation(make_model):
    torch.manual_seed(3)
    teacher = make_model("bert", n_layers=3, d_model=48, n_heads=2)
    student = make_model("bert")  # 2 layers, width 32, 2 heads
    objective = distill(teacher, hidden_pairs=["1:2", "2:3"], attention_pairs=["2:3"],
                        attention_relations=["qk", "vv"], hidden_weight=0.5, attention_weight=2.0)
    module = objective.build(student).train()
    batch = text_batch(pad_row0=5)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    terms = objective.terms(module, batch)

    with torch.no_grad():
        hs, qkv_s = layers_by_hand(student, ids, mask)
        ht, qkv_t = layers_by_hand(teacher, ids, mask)
        w = mask.float().unsqueeze(-1)
        s_pooled = module.distill_pooled((hs[-1] * w).sum(1) / w.sum(1))
        t_pooled = (ht[-1] * w).sum(1) / w.sum(1)
        cos = (s_pooled * t_pooled).sum(-1) / (s_pooled.norm(dim=-1) * t_pooled.norm(dim=-1))
        pooled = (1 - cos).mean()
        hidden = []
        for j, (s, t) in enumerate([(1, 2), (2, 3)]):
            err = ((module.distill_hidden(hs[s], j) - ht[t]) ** 2).mean(-1)  # (B, T)
            hidden.append(err[mask].mean())
        attention = []
        for a, b in ((0, 1), (2, 2)):  # qk, vv of student block 2 (index 1) and teacher block 3 (index 2)
            p_s = relation_by_hand(qkv_s[1][a], qkv_s[1][b], 2, mask)
            p_t = relation_by_hand(qkv_t[2][a], qkv_t[2][b], 2, mask)
            kl = torch.where(p_t > 0, p_t * (p_t.log() - p_s.log()), torch.zeros(())).sum(-1)  # (B, H, T)
            attention.append(kl.mean(1)[mask].mean())
    torch.testing.assert_close(terms["pooled"], pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["hidden"], torch.stack(hidden).mean(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(terms["attention"], torch.stack(attention).mean(), atol=1e-5, rtol=1e-4)
    total = objective(module, batch)["loss"]
    torch.testing.assert_close(total, pooled + 0.5 * torch.stack(hidden).mean() + 2.0 * torch.stack(attention).mean(),
                               atol=1e-5, rtol=1e-4)


def test_projections_exist_and_train_when_widths_differ(make_model):
    teacher = make_model("bert", n_layers=3, d_model=48, n_heads=2)
    objective = distill(teacher)
    module = objective.build(make_model("bert")).train()
    assert module.head_names == ["distill_hidden", "distill_pooled"]
    assert module.distill_hidden.maps[0].weight.shape == (48, 32) and len(module.distill_hidden.maps) == 2
    assert objective.pairs == {"hidden": [(1, 2), (2, 3)], "attention": [(2, 3)]}  # uniform depth map; last layers
    objective(module, text_batch())["loss"].backward()
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    assert all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]
    assert not any(p.requires_grad for p in teacher.parameters())


def test_relation_heads_must_divide_both_widths(make_model):
    teacher = make_model("bert", d_model=48, n_heads=2)
    with pytest.raises(PretrainerError, match="relation_heads = 5 does not divide"):
        distill(teacher, relation_heads=5).build(make_model("bert"))
    distill(teacher, relation_heads=8).build(make_model("bert"))  # 32 / 8 and 48 / 8: allowed


def test_student_from_teacher_blocks_copies_them(make_model):
    teacher = make_model("bert", n_layers=3)
    student = distill(teacher, student_layers_from_teacher=[0, 2]).initial_backbone(None)
    assert student.n_layers == 2
    for mine, theirs in ((0, 0), (1, 2)):
        for (name, p), (_, q) in zip(student.blocks[mine].named_parameters(), teacher.blocks[theirs].named_parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.embeddings.word_embeddings.weight, teacher.embeddings.word_embeddings.weight)
    with pytest.raises(PretrainerError, match="blocks 0..2"):
        distill(teacher, student_layers_from_teacher=[3]).initial_backbone(None)


def two_tokenizers():
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
    small = train_tokenizer(texts, TokenizerConfig(vocab_size=50, min_frequency=1))
    large = train_tokenizer(texts, TokenizerConfig(vocab_size=80, min_frequency=1))
    assert small.vocab_size != large.vocab_size
    return small, large


def test_token_level_distillation_across_tokenizers_is_a_one_line_error(make_model):
    with pytest.raises(PretrainerError, match="needs one tokenizer") as e:
        Distillation(ObjectiveConfig(name="distill", teacher="x", student_tokenizer="own"))
    assert "\n" not in str(e.value)
    small, large = two_tokenizers()
    objective = distill(make_model("bert", vocab_size=large.vocab_size), large)
    data = type("Data", (), {"tokenizer": small, "check_layout": lambda *a: None})()
    with pytest.raises(PretrainerError, match="between tokenizers that differ") as e:
        objective.check_data(data)
    assert "\n" not in str(e.value)


def test_pooled_distillation_across_tokenizers_works(make_model):
    small, large = two_tokenizers()
    teacher = make_model("bert", vocab_size=large.vocab_size, d_model=48, max_len=64)
    objective = distill(teacher, large, student_tokenizer="own", hidden_weight=0.0, attention_weight=0.0)
    objective.check_data(type("Data", (), {"tokenizer": small, "check_layout": lambda *a: None})())
    module = objective.build(make_model("bert", vocab_size=small.vocab_size, max_len=64)).train()
    encoded = small.encode_batch([" ".join(WORDS[:6]), " ".join(WORDS[6:12])], add_special=True)
    ids = torch.tensor([e[:min(map(len, encoded))] for e in encoded])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool)}
    t_ids, t_mask, _ = objective.teacher_inputs(batch)  # the teacher tokenizes the text itself
    assert t_ids[0, 0] == large.cls_id and large.decode(t_ids[0][t_mask[0]].tolist(), skip_special=True) == \
        small.decode(ids[0].tolist(), skip_special=True)
    out = objective(module, batch)
    assert set(out) >= {"loss", "pooled_loss", "pooled_cos"} and "hidden_loss" not in out
    out["loss"].backward()
    assert module.distill_pooled.maps[0].weight.grad is not None


def test_a_run_keeps_the_student_only_and_records_the_teacher(tmp_path):
    rng_texts = [" ".join(WORDS[i % 7:] + WORDS[:i % 5]) for i in range(80)]
    (tmp_path / "corpus.txt").write_text("\n".join(rng_texts) + "\n")
    tokenizer = train_tokenizer(rng_texts, TokenizerConfig(vocab_size=60, min_frequency=1))
    teacher = build_model(load_config(None, ["--model.n_layers=3", "--model.d_model=48", "--model.n_heads=2",
                                             "--model.max_len=64"]).model, tokenizer.vocab_size)
    write_run_header(tmp_path / "teacher", None, teacher, tokenizer)
    save_weights(teacher, tmp_path / "teacher" / "model.safetensors")
    cfg = load_config(None, [
        f'--run.dir="{tmp_path / "student"}"', f'--data.train="{tmp_path / "corpus.txt"}"',
        f'--data.cache_dir="{tmp_path / "cache"}"', "--data.holdout=0.1", "--model.n_layers=2",
        "--model.d_model=32", "--model.n_heads=2", "--model.max_len=64", f'--objective.teacher="{tmp_path / "teacher"}"',
        "--train.batch_size=4", "--train.seq_len=16", "--train.max_steps=2", "--train.eval_every=0",
        "--train.eval_batches=1", "--impl.progress=false", "--impl.threads=1"])
    result = api.distill(cfg, **QUIET)  # no [finetune] teacher: pre-training with objective "distill"
    assert result.step == 2
    run = tmp_path / "student"
    # The data was read with the teacher's tokenizer, and the checkpoint holds the student and its
    # projections only.
    assert json.loads((run / "tokenizer.json").read_text()) == json.loads((tmp_path / "teacher" / "tokenizer.json").read_text())
    for weights in (run / "model.safetensors", next((run / "checkpoints").glob("step_*")) / "model.safetensors"):
        keys = read_model_state(weights).keys()
        assert keys and all(k.startswith(("backbone.", "distill_hidden.", "distill_pooled.")) for k in keys)
        assert sum(read_model_state(weights)[k].numel() for k in keys) < sum(p.numel() for p in teacher.parameters())
    record = json.loads((run / "teacher.json").read_text())
    assert record["teacher"] == str(tmp_path / "teacher") and record["n_layers"] == 3 and record["weights_sha256"]
    metrics = api.evaluate(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="distill")), **QUIET)
    assert {"distill_loss", "pooled_cos", "hidden_loss", "attention_loss"} <= metrics.keys()


def test_distill_command_needs_a_teacher():
    with pytest.raises(PretrainerError, match="nothing to distil from"):
        api.distill(load_config(None, []), **QUIET)


def test_causal_students_are_refused(make_model):
    assert "causal" in Distillation(ObjectiveConfig(name="distill")).check_backbone(make_model("gpt"))
