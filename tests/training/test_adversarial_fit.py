"""fit with an objective that declares optimizer groups (training/adversarial.py): each group its
own optimizer, stepped in the declared order; both states in the checkpoint; resume exact."""

import json
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from pretrainer.errors import PretrainerError
from pretrainer.training import fit, load_checkpoint, set_determinism
from pretrainer.training import loop
from training_toys import ToyLoader, ToyModel, impl_config, train_config


class TwoPlayers:
    """A toy 'game': the head fits the labels; the embeddings and norm push the head's confidence
    down (a loss through the head, so its step leaves gradients on the head that the head's next
    step must not see)."""

    optimizer_groups = ("head", "body")

    class cfg:
        name = "two_players"

    def __init__(self, interrupt_at: int = 0):
        self.calls, self.interrupt_at = 0, interrupt_at
        self.order = []

    def group_parameters(self, model):
        return {"head": [(n, p) for n, p in model.named_parameters() if n.startswith("head.")],
                "body": [(n, p) for n, p in model.named_parameters() if not n.startswith("head.")]}

    def __call__(self, model, batch, group=None):
        self.calls += 1
        if self.calls == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        self.order.append(group)
        logits = model(batch["input_ids"])
        ce = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())
        loss = ce if group == "head" else -0.1 * ce + logits.pow(2).mean()
        return {"loss": loss, "ce": ce.detach(), "n_tokens": batch["labels"].numel()}


def _run(run_dir, objective, resume=False, **cfg):
    impl = impl_config()
    set_determinism(impl, seed=0)
    model = ToyModel(dropout=0.0)
    result = fit(model, objective, ToyLoader(), train_config(**cfg), impl, run_dir, resume=resume,
                 log=lambda s: None)
    return model, result


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_groups_step_in_order_with_their_own_optimizers(tmp_path):
    objective = TwoPlayers()
    set_determinism(impl_config(), seed=0)
    before = {k: v.clone() for k, v in ToyModel(dropout=0.0).state_dict().items()}
    model, result = _run(tmp_path, objective, max_steps=4, accum=2)
    assert objective.order == ["head", "head", "body", "body"] * 4  # accum micro-batches per group
    assert {"head_loss", "body_loss", "head_grad_norm", "body_grad_norm", "ce", "loss"} <= result.metrics.keys()
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in after)  # both groups moved
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_000004")
    owners = [g["optimizer"] for g in ckpt.optimizer_state["param_groups"]]
    assert set(owners) == {"head", "body"}
    n_params = len(list(model.parameters()))
    assert sorted(ckpt.optimizer_state["state"]) == list(range(n_params))  # every parameter's moments


def test_interrupted_adversarial_run_resumes_exactly(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cfg = dict(max_steps=8, log_every=2)
        _run(tmp_path / "straight", TwoPlayers(), **cfg)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "split", TwoPlayers(interrupt_at=7), **cfg)  # during step 4 (2 calls a step)
        assert (tmp_path / "split" / "checkpoints" / "latest").read_text().strip() == "step_000004"
        _run(tmp_path / "split", TwoPlayers(), resume=True, **cfg)
    finally:
        signal.signal(signal.SIGINT, previous)
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert straight.keys() == split.keys()
    for k in straight:
        assert torch.equal(straight[k], split[k]), k

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["metrics"]["head_loss"], r["metrics"]["body_loss"]) for r in map(json.loads, lines)]

    assert losses("split") == losses("straight")


def test_adversarial_training_is_refused_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "world_size", lambda: 2)
    with pytest.raises(PretrainerError, match="runs in one process only; start it without torchrun"):
        _run(tmp_path, TwoPlayers(), max_steps=2)


def test_a_parameter_in_no_group_is_an_error(tmp_path):
    class Partial(TwoPlayers):
        def group_parameters(self, model):
            groups = super().group_parameters(model)
            return {"head": groups["head"], "body": groups["body"][1:]}

    with pytest.raises(PretrainerError, match="parameters in no optimizer group: emb.weight"):
        _run(tmp_path, Partial(), max_steps=2)
