"""SimCSE: the InfoNCE loss against a hand computation, the objective around a tiny BERT, its
held-out metrics, its config errors, and (gloo, 2 processes) the gathered negatives giving
the loss and gradients of one process with the same global batch."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrainer.config import ObjectiveConfig, load_config
from pretrainer.errors import PretrainerError
from pretrainer.objectives.simcse import SimCSE, has_dropout, info_nce

HERE = Path(__file__).parent
CLS, SEP, PAD = 1, 2, 0  # as in conftest.py


def hand_info_nce(queries, keys, positives, temperature):
    """Explicit loops: -log softmax over cosine / temperature, averaged over the queries."""
    total = 0.0
    for i, q in enumerate(queries):
        sims = [float(np.dot(q, k) / (np.linalg.norm(q) * np.linalg.norm(k))) / temperature for k in keys]
        total += -(sims[positives[i]] - math.log(sum(math.exp(s) for s in sims)))
    return total / len(queries)


def test_info_nce_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(3, 5)), rng.normal(size=(6, 5))
    positives = [4, 0, 2]  # a rank's queries read the keys of the whole global batch
    loss, hits = info_nce(torch.tensor(queries), torch.tensor(keys), torch.tensor(positives), 0.5)
    assert float(loss) == pytest.approx(hand_info_nce(queries, keys, positives, 0.5), rel=1e-6)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ \
        (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
    assert hits.tolist() == [int(np.argmax(row)) == p for row, p in zip(cosine, positives)]


def segments(b=4, t=12, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 61, (b, t), generator=g)
    lengths = torch.tensor([t, t - 3, 5, t - 1][:b])
    positions = torch.arange(t).expand(b, t)
    attention = positions < lengths[:, None]
    ids[:, 0] = CLS
    ids[positions == (lengths - 1)[:, None]] = SEP
    ids[~attention] = PAD
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": ids < 4}


def simcse(make_model, model_dropout=0.1, **cfg):
    objective = SimCSE(ObjectiveConfig(name="simcse", **cfg))
    return objective, objective.build(make_model("bert", dropout=model_dropout, attn_dropout=model_dropout)).train()


@pytest.mark.parametrize("pooling", ["cls_mlp", "mean"])
def test_the_loss_is_info_nce_over_the_two_views(make_model, pooling):
    objective, model = simcse(make_model, pooling=pooling, temperature=0.05)
    batch = segments()
    torch.manual_seed(3)
    out = objective(model, batch)
    torch.manual_seed(3)  # the same dropout masks: the views, recomputed by hand
    hidden = model(batch["input_ids"].repeat(2, 1), batch["attention_mask"].repeat(2, 1))
    if pooling == "cls_mlp":
        pooled = torch.tanh(model.simcse_mlp.dense(hidden[:, 0]))
    else:
        w = batch["attention_mask"].repeat(2, 1).unsqueeze(-1).float()
        pooled = (hidden * w).sum(1) / w.sum(1)
    first, second = pooled.detach().double().numpy()[:4], pooled.detach().double().numpy()[4:]
    assert not np.allclose(first, second)  # dropout made two different views
    assert out["loss"].item() == pytest.approx(hand_info_nce(first, second, [0, 1, 2, 3], 0.05), rel=1e-4)
    assert out["n_tokens"] == 2 * int(batch["attention_mask"].sum())
    out["loss"].backward()  # every trainable parameter is reached (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not model.backbone.pooler.weight.requires_grad  # the [CLS] MLP is the objective's head
    assert model.head_names == (["simcse_mlp"] if pooling == "cls_mlp" else [])


def test_evaluation_is_repeatable_and_leaves_the_random_stream_alone(make_model):
    objective, model = simcse(make_model)
    batches = [segments(seed=s) for s in range(2)]
    torch.manual_seed(5)
    first = objective.evaluate(model, batches)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert objective.evaluate(model, batches) == first
    assert torch.equal(torch.rand(3), after)
    assert model.training  # the mode it was in
    assert set(first) == {"simcse_loss", "simcse_acc", "alignment", "uniformity"}
    assert 0 <= first["simcse_acc"] <= 1 and first["alignment"] > 0 and first["uniformity"] < 0


def test_objective_dropout_overrides_the_backbone_and_zero_is_cautioned(make_model):
    objective, model = simcse(make_model, model_dropout=0.0, dropout=0.1)
    assert has_dropout(model.backbone) and objective.caution(model.backbone) is None
    objective, model = simcse(make_model, model_dropout=0.1, dropout=0.0)
    caution = objective.caution(model.backbone)
    assert caution and "\n" not in caution and "model.dropout" in caution and "objective.dropout" in caution


def test_cls_pooling_is_refused_on_a_causal_decoder(make_model):
    objective = SimCSE(ObjectiveConfig(name="simcse"))
    assert "objective.pooling" in objective.check_backbone(make_model("gpt"))
    assert SimCSE(ObjectiveConfig(name="simcse", pooling="mean")).check_backbone(make_model("gpt")) is None


@pytest.mark.parametrize("override,key", [("--objective.temperature=0", "objective.temperature"),
                                          ("--objective.temperature=-0.05", "objective.temperature"),
                                          ("--objective.pooling=max", "objective.pooling"),
                                          ("--objective.dropout=1.0", "objective.dropout")])
def test_bad_simcse_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--objective.name=simcse", override])
    assert key in str(error.value) and "\n" not in str(error.value)


@pytest.mark.distributed
def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path):
    """Keys gathered across 2 gloo processes (DDP and FSDP2): the mean of the ranks' losses and
    the reduced gradients equal one process's on the whole global batch. A gather whose backward
    kept only each rank's own part would not: the check has teeth."""
    sys.path.insert(0, str(HERE))
    from _simcse_worker import build_module, global_batch

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_simcse_worker.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def one_process(pooling):
        objective, model = build_module(pooling)
        out = objective(model, global_batch())
        out["loss"].backward()
        return out["loss"].item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    for pooling in ("cls_mlp", "mean"):
        loss, grads = one_process(pooling)
        for parallel in ("ddp", "fsdp"):
            got = load_file(str(tmp_path / f"{parallel}-{pooling}.safetensors"))
            assert float(got.pop("__loss__")) == pytest.approx(loss, abs=1e-6)
            assert got.keys() == grads.keys()
            for name, grad in grads.items():
                torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=f"{parallel} {pooling} {name}")
    _, grads = one_process("mean")
    naive = load_file(str(tmp_path / "naive.safetensors"))
    assert max(float((naive[n] - g).abs().max()) for n, g in grads.items()) > 1e-4
