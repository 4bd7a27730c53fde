"""SimCLR: NT-Xent against a hand computation, the objective around the image backbones, its
held-out metrics and config errors, and (gloo, 2 processes) the gathered negatives giving the
loss and gradients of one process with the same global batch."""

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
from pretrainer.models import MLPConfig, ViTConfig, build_model
from pretrainer.objectives.simclr import SimCLR, nt_xent
from pretrainer.runs import module_spec

from ._image_data import ImageData

HERE = Path(__file__).parent
DATA = ImageData(size=16)
BACKBONES = {"vit": ViTConfig.tiny(), "mlp": MLPConfig(hidden=[64, 32])}


def hand_nt_xent(z, temperature):
    """Explicit loops: view i's positive is view i + n (mod 2n); every other view but itself is
    a negative; -log softmax of cosine / temperature, averaged over the 2n views."""
    n2 = len(z)
    total, hits = 0.0, []
    for i in range(n2):
        sims = {j: float(np.dot(z[i], z[j]) / (np.linalg.norm(z[i]) * np.linalg.norm(z[j]))) / temperature
                for j in range(n2) if j != i}
        positive = (i + n2 // 2) % n2
        total += -(sims[positive] - math.log(sum(math.exp(s) for s in sims.values())))
        hits.append(max(sims, key=sims.get) == positive)
    return total / n2, hits


def test_nt_xent_matches_a_hand_computation():
    z = np.random.default_rng(0).normal(size=(6, 5))
    loss, hits = nt_xent(torch.tensor(z), 0.5, gather=False)
    expected, expected_hits = hand_nt_xent(z, 0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert hits.tolist() == expected_hits


def simclr(model="vit", **cfg):
    objective = SimCLR(ObjectiveConfig(name="simclr", **{"temperature": 0.2, "projection_dim": 16, **cfg}), DATA.info)
    torch.manual_seed(0)
    return objective, objective.build(build_model(BACKBONES[model], DATA.info)).train()


@pytest.mark.parametrize("model", list(BACKBONES))
def test_the_loss_is_nt_xent_over_the_projected_views(model):
    objective, module = simclr(model)
    batch = next(objective.train_batches(DATA, 4, 0, seed=0))
    out = objective(module, batch)
    with torch.no_grad():  # by hand: the mean of the patch tokens (ViT) or the one vector (MLP), projected
        pooled = [module(batch[k])[:, 1:].mean(1) if model == "vit" else module(batch[k])[:, 0]
                  for k in ("images", "images2")]
        z = module.simclr_projection(torch.cat(pooled))
    expected, hits = hand_nt_xent(z.double().numpy(), 0.2)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    assert out["simclr_acc"].item() == pytest.approx(sum(hits) / len(hits))
    assert out["n_tokens"] == 8
    out["loss"].backward()  # every trainable parameter is reached (DDP without find_unused_parameters)
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert module.head_names == ["simclr_projection"]
    assert module_spec(module)["heads"] == [{"name": "simclr_projection", "config": {"d_out": 16}}]


# Without warmup a ViT's contrastive training collapses at 1e-3 (every view the same vector:
# loss log(2B - 1)), as MoCo v3 reports for ViTs; the dense network takes the larger rate.
@pytest.mark.parametrize("model,lr", [("vit", 3e-4), ("mlp", 1e-3)])
def test_loss_falls_and_views_are_found(model, lr):
    objective, module = simclr(model)
    batches = objective.train_batches(DATA, 16, 0, seed=0)
    before = objective.evaluate(module, objective.eval_batches(DATA, 8, 0))
    optimizer = torch.optim.AdamW(module.param_groups(0.0), lr=lr)
    losses = []
    for _ in range(50):
        out = objective(module, next(batches))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    after = objective.evaluate(module, objective.eval_batches(DATA, 8, 0))
    assert set(after) == {"simclr_loss", "simclr_acc"} and 0 <= after["simclr_acc"] <= 1
    assert after["simclr_loss"] < before["simclr_loss"]
    assert module.training  # evaluation gives the mode back


def test_evaluation_is_repeatable():
    objective, module = simclr()
    batches = list(objective.eval_batches(DATA, 8, 0))
    assert objective.evaluate(module, batches) == objective.evaluate(module, batches)


def test_batches_are_two_views_and_text_models_are_refused(make_model):
    objective, module = simclr()
    assert objective.batch_layout == "views" and objective.modality == "image"
    batch = next(objective.train_batches(DATA, 3, 0, seed=0))
    assert batch["images"].shape == batch["images2"].shape == (3, 1, 16, 16)
    assert objective.check_backbone(module.backbone) is None
    reason = objective.check_backbone(make_model("bert"))
    assert reason and "\n" not in reason and "bert" in reason


@pytest.mark.parametrize("override,key", [("--objective.temperature=0", "objective.temperature"),
                                          ("--objective.projection_dim=0", "objective.projection_dim")])
def test_bad_simclr_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--objective.name=simclr", override])
    assert key in str(error.value) and "\n" not in str(error.value)


@pytest.mark.distributed
def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path):
    """Projections gathered across 2 gloo processes (DDP and FSDP2): the mean of the ranks' losses
    and the reduced gradients equal one process's on the whole global batch. A gather whose
    backward kept only each rank's own part would not: the check has teeth."""
    sys.path.insert(0, str(HERE))
    from _simclr_worker import CONFIGS, build_module, global_batch

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_simclr_worker.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def one_process(model):
        objective, module = build_module(model)
        out = objective(module, global_batch())
        out["loss"].backward()
        return out["loss"].item(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}

    for model in CONFIGS:
        loss, grads = one_process(model)
        for parallel in ("ddp", "fsdp"):
            got = load_file(str(tmp_path / f"{parallel}-{model}.safetensors"))
            assert float(got.pop("__loss__")) == pytest.approx(loss, abs=1e-5)
            assert got.keys() == grads.keys()
            for name, grad in grads.items():
                # Relative to the tensor's largest entry: float32 sums in another order, and the
                # gradients of the small initial projections run to the hundreds.
                scale = max(1.0, float(grad.abs().max()))
                torch.testing.assert_close(got[name] / scale, grad / scale, atol=1e-5, rtol=1e-5,
                                           msg=f"{parallel} {model} {name}")
    _, grads = one_process("vit")
    naive = load_file(str(tmp_path / "naive.safetensors"))
    assert max(float((naive[n] - g).abs().max()) for n, g in grads.items()) > 1e-4
