"""CLIP: the symmetric InfoNCE against a hand computation, recall@k on a constructed case, the
objective around an image backbone and a text tower, config errors, and (gloo, 2 processes) the
gathered negatives giving the loss and gradients of one process at the same global batch."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.objectives.clip import clip_loss, recall_at_k
from pretrainer.runs import module_from_spec, module_spec

HERE = Path(__file__).parent


def hand_clip_loss(images, texts, scale):
    """Explicit loops: pair i's image should pick caption i among all captions, and caption i
    image i among all images; -log softmax of scale * cosine, the two directions averaged."""
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    n = len(images)
    total = 0.0
    for i in range(n):
        to_texts = [scale * cos(images[i], texts[j]) for j in range(n)]
        to_images = [scale * cos(texts[i], images[j]) for j in range(n)]
        for logits in (to_texts, to_images):
            total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return total / (2 * n)


def test_clip_loss_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    loss, hits_i2t, hits_t2i = clip_loss(torch.tensor(images), torch.tensor(texts), torch.tensor(3.0), gather=False)
    assert float(loss) == pytest.approx(hand_clip_loss(images, texts, 3.0), rel=1e-6)
    # Matched pairs make the loss fall below chance (log n) and every hit right.
    loss, hits_i2t, hits_t2i = clip_loss(torch.tensor(images), torch.tensor(images), torch.tensor(10.0), gather=False)
    assert float(loss) < math.log(5) and hits_i2t.all() and hits_t2i.all()


def test_recall_at_k_on_a_constructed_case():
    # Row 0's right column is the most similar; row 1's is third; row 2's fifth; row 3 ties with
    # two others at the top (a tie counts against the query: rank 2).
    similarity = torch.tensor([[0.9, 0.1, 0.2, 0.3, 0.0],
                               [0.8, 0.5, 0.7, 0.1, 0.0],
                               [0.9, 0.8, 0.1, 0.7, 0.6],
                               [0.5, 0.5, 0.0, 0.5, 0.1],
                               [0.0, 0.1, 0.2, 0.3, 0.4]])
    assert recall_at_k(similarity, ks=(1, 3, 5)) == {1: pytest.approx(2 / 5), 3: pytest.approx(4 / 5), 5: 1.0}
    assert recall_at_k(torch.ones(4, 4), ks=(1,)) == {1: 0.0}  # a collapsed encoder finds nothing


def build_clip():
    sys.path.insert(0, str(HERE))
    from _clip_worker import build_module, global_batch

    return build_module(), global_batch()


def test_the_objective_trains_both_towers_and_saves_them():
    (objective, module), batch = build_clip()
    out = objective(module, batch)
    assert out["n_tokens"] == 8 and 0 <= float(out["clip_acc"]) <= 1
    assert float(out["temperature"]) == pytest.approx(0.1)
    out["loss"].backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert module.head_names == ["clip_image_projection", "clip_logit_scale", "clip_text"]
    # model.json rebuilds the text tower from its own config
    rebuilt = module_from_spec(module_spec(module))
    rebuilt.load_state_dict(module.state_dict())
    assert rebuilt.clip_text.encoder.config == module.clip_text.encoder.config
    metrics = objective.evaluate(module, [batch])
    assert {"clip_loss", "image_to_text_r@10", "text_to_image_r@1"} <= set(metrics)
    assert metrics["image_to_text_r@10"] == 1.0  # 8 pairs: every caption is among the 10 best
    assert module.training


def test_a_few_steps_lower_the_loss():
    (objective, module), batch = build_clip()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = objective(module, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_text_models_are_refused_as_backbone(make_model):
    (objective, _), _ = build_clip()
    reason = objective.check_backbone(make_model("bert"))
    assert reason and "\n" not in reason and "bert" in reason


@pytest.mark.parametrize("override,key", [("--objective.clip_dim=0", "objective.clip_dim"),
                                          ("--objective.text_model.n_layers=0", "objective.text_model.n_layers"),
                                          ("--objective.text_model.name=nope", "objective.text_model.name")])
def test_bad_clip_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--objective.name=clip", override])
    assert key in str(error.value) and "\n" not in str(error.value)


@pytest.mark.distributed
def test_two_processes_give_the_loss_and_gradients_of_one(tmp_path):
    """Image and caption vectors gathered across 2 gloo processes (DDP): the mean of
    the ranks' losses and the reduced gradients equal one process's on the whole global batch;
    a gather whose backward kept only each rank's part would not."""
    sys.path.insert(0, str(HERE))
    from _clip_worker import build_module, global_batch

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_clip_worker.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    objective, module = build_module()
    out = objective(module, global_batch())
    out["loss"].backward()
    loss, grads = out["loss"].item(), {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    for parallel in ("ddp",):
        got = load_file(str(tmp_path / f"{parallel}.safetensors"))
        assert float(got.pop("__loss__")) == pytest.approx(loss, abs=1e-5)
        assert got.keys() == grads.keys()
        for name, grad in grads.items():
            scale = max(1.0, float(grad.abs().max()))
            torch.testing.assert_close(got[name] / scale, grad / scale, atol=1e-5, rtol=1e-5, msg=f"{parallel} {name}")
    naive = load_file(str(tmp_path / "naive.safetensors"))
    assert max(float((naive[n] - g).abs().max()) for n, g in grads.items()) > 1e-4
