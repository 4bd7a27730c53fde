"""A NaN loss by policy (train.on_nonfinite): "stop" names the step and leaves the last good
checkpoint as it was; "skip" drops the step's update (weights and optimizer state untouched),
counts it, and stops once more than train.max_skips steps were skipped. Injected into a toy
fit by an objective whose loss is NaN at chosen steps."""

import json
import math

import pytest
import torch

from pretrainer.errors import PretrainerError
from pretrainer.training import fit, load_checkpoint, set_determinism
from pretrainer.training.checkpoint import latest_checkpoint_path
from pretrainer.training.loop import train_step
from pretrainer.training.optim import build_optimizer
from training_toys import ToyLoader, ToyModel, ToyObjective, impl_config, train_config


class NanAt(ToyObjective):
    """The toy objective, with a NaN loss (so NaN gradients) at the given 1-based steps."""

    def __init__(self, steps):
        self.steps, self.calls = set(steps), 0

    def __call__(self, model, batch):
        self.calls += 1
        out = super().__call__(model, batch)
        if self.calls in self.steps:
            out["loss"] = out["loss"] * float("nan")
        return out


def run_fit(run_dir, nan_steps, **cfg):
    impl = impl_config()
    set_determinism(impl, seed=0)
    model = ToyModel(dropout=0.1)
    fit(model, NanAt(nan_steps), ToyLoader(), train_config(**cfg), impl, run_dir, log=lambda s: None)
    return model


def train_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["metrics"] for r in records if r["split"] == "train"}


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.faults
@pytest.mark.parametrize("nan_step, save_every, log_every, last_good", [
    (11, 4, 5, "step_000008"),  # caught before the checkpoint of step 12
    (9, 8, 5, "step_000008"),   # caught at the log line of step 10
])
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, nan_step, save_every, log_every,
                                                                 last_good):
    with pytest.raises(PretrainerError) as caught:
        run_fit(tmp_path, [nan_step], max_steps=20, save_every=save_every, log_every=log_every)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"step {nan_step}: the loss or gradient norm is not finite")
    assert f'train.on_nonfinite = "stop"); the last good checkpoint is {tmp_path / "checkpoints" / last_good}' \
        in message
    assert latest_checkpoint_path(tmp_path).name == last_good
    assert all_finite(load_checkpoint(tmp_path / "checkpoints" / last_good).model_state)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))[-1] == last_good
    assert not (tmp_path / "model.safetensors").exists()
    print(f"\nNaN, stop: {message}")


@pytest.mark.faults
def test_skip_leaves_weights_and_optimizer_untouched_and_counts(tmp_path):
    model = run_fit(tmp_path, [6, 9], max_steps=12, save_every=1, keep_checkpoints=0, log_every=4,
                    on_nonfinite="skip", max_skips=2)
    ckpt = {s: load_checkpoint(tmp_path / "checkpoints" / f"step_{s:06d}") for s in range(4, 11)}

    def same(a, b):
        opt_a, opt_b = ckpt[a].optimizer_state["state"], ckpt[b].optimizer_state["state"]
        return (all(torch.equal(ckpt[a].model_state[k], ckpt[b].model_state[k]) for k in ckpt[a].model_state)
                and all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_a for k in opt_a[i]))

    assert same(5, 6) and same(8, 9)  # the skipped steps changed nothing, not even Adam's step count
    assert not same(4, 5) and not same(6, 7) and not same(9, 10)
    assert all_finite(model.state_dict())
    records = train_records(tmp_path)
    assert records[4]["skipped_steps"] == 0 and "nonfinite_steps" not in records[4]
    assert records[8]["nonfinite_steps"] == 1 and records[8]["skipped_steps"] == 1
    assert records[12]["nonfinite_steps"] == 1 and records[12]["skipped_steps"] == 2
    assert all(math.isfinite(r["loss"]) for r in records.values())  # means over the finite steps
    assert ckpt[10].extra["nonfinite_skips"] == 2
    print(f"\nNaN, skip: steps 6 and 9 skipped (weights and optimizer state unchanged), run finished; "
          f"metrics {records[12]}")


@pytest.mark.faults
def test_skip_stops_after_max_skips(tmp_path):
    with pytest.raises(PretrainerError) as caught:
        run_fit(tmp_path, [3, 5, 7], max_steps=20, save_every=4, log_every=4, on_nonfinite="skip", max_skips=2)
    message = str(caught.value)
    assert message.startswith("step 8: 3 steps skipped for a non-finite loss or gradient norm, more than "
                              "train.max_skips = 2")
    assert f"the last good checkpoint is {tmp_path / 'checkpoints' / 'step_000004'}" in message
    assert all_finite(load_checkpoint(latest_checkpoint_path(tmp_path)).model_state)
    print(f"\nNaN, skip beyond max_skips: {message}")


@pytest.mark.faults
def test_skipping_reads_nothing_back_to_the_host():
    """The skip is decided on the device (the fused AdamW's found_inf), as the stop policy is."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.is_nonzero):
                self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = ToyModel()
    opt = build_optimizer(model, train_config(), torch.device("cpu"))
    batches = ToyLoader()
    objective = NanAt([2])
    train_step(model, objective, batches, opt, 1, None, 1.0, skip_nonfinite=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with HostReads() as reads:
        metrics = train_step(model, objective, batches, opt, 1, None, 1.0, skip_nonfinite=True)
    assert reads.seen == []
    assert bool(metrics["nonfinite"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
