import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrainer.errors import PretrainerError
from pretrainer.training import fit, load_checkpoint, set_determinism
from training_toys import ToyLoader, ToyModel, ToyObjective, eval_batches, impl_config, train_config

HERE = Path(__file__).parent


def _run(run_dir, objective=None, resume=False, **cfg):
    impl = impl_config()
    set_determinism(impl, seed=0)
    model = ToyModel(dropout=0.1)
    objective = objective or ToyObjective()
    lines = []
    result = fit(model, objective, ToyLoader(), train_config(**cfg), impl, run_dir,
                 eval_fn=lambda m: ToyObjective().evaluate(m, eval_batches()),
                 resume=resume, log=lines.append)
    return model, result, lines


def _weights(run_dir):
    return load_file(str(Path(run_dir) / "model.safetensors"))


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fit_writes_the_run_dir(tmp_path):
    model, result, lines = _run(tmp_path, max_steps=10, eval_every=5, save_every=4)
    assert result.step == 10
    assert [e["step"] for e in result.eval_history] == [5, 10]
    assert result.eval_history[-1]["loss"] < result.eval_history[0]["loss"] + 1.0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [5, 10]
    assert train[0]["tokens_per_s"] > 0 and train[0]["lr"] > 0
    assert {"loss", "acc", "grad_norm"} <= train[0]["metrics"].keys()
    assert [r["step"] for r in records if r["split"] == "eval"] == [5, 10]
    assert any(p.name.startswith("events") for p in (tmp_path / "tb").iterdir())
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000010"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000008", "step_000010"]
    _assert_same(_weights(tmp_path), model.state_dict())
    assert any(line.startswith("step 10/10") for line in lines)  # compact progress line


def test_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(PretrainerError, match=f"no checkpoint in {tmp_path / 'checkpoints'} to resume from"):
        _run(tmp_path, resume=True)


class InterruptAt(ToyObjective):
    """Sends this process a Ctrl-C during the given call, as a user would."""

    def __init__(self, call):
        self.call, self.calls = call, 0

    def __call__(self, model, batch):
        self.calls += 1
        if self.calls == self.call:
            signal.raise_signal(signal.SIGINT)
        return super().__call__(model, batch)


def test_interrupt_saves_and_resume_is_exact(tmp_path):
    # A process started in the background (nohup, `cmd &`) inherits SIGINT as ignored; the
    # loop leaves an ignored SIGINT alone, so give this test the interactive default.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_then_resume(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_then_resume(tmp_path):
    cfg = dict(max_steps=10, eval_every=3, accum=2)
    _run(tmp_path / "straight", **cfg)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "split", objective=InterruptAt(call=9), **cfg)  # during step 5 (2 calls a step)
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text().strip() == "step_000005"
    assert not (tmp_path / "split" / "model.safetensors").exists()
    _, result, lines = _run(tmp_path / "split", resume=True, **cfg)

    assert result.step == 10 and any("resuming from" in line for line in lines)
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
    # The metrics log reads as one run: each step once, same values.
    def records(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    def key(r):
        return (r["step"], r["split"], r["metrics"]["loss"], r["lr"])

    assert [key(r) for r in records("split")] == [key(r) for r in records("straight")]


def test_budget_mode_ends_on_time(tmp_path):
    clock = [0.0]

    class OneSecondPerBatch(ToyObjective):
        def __call__(self, model, batch):
            clock[0] += 1.0
            return super().__call__(model, batch)

    impl = impl_config()
    set_determinism(impl, seed=0)
    cfg = train_config(budget="30s", max_steps=5, warmup=0.1, min_lr_ratio=0.1, log_every=1)
    result = fit(ToyModel(), OneSecondPerBatch(), ToyLoader(), cfg, impl, tmp_path,
                 log=lambda s: None, clock=lambda: clock[0])
    assert result.step == 30 and result.elapsed == 30.0  # max_steps is ignored
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) == pytest.approx(cfg.lr)
    assert lrs[-1] == pytest.approx(cfg.lr * 0.1)


def _toy_train(run_dir, *args):
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    return subprocess.Popen([sys.executable, str(HERE / "_toy_train.py"), str(run_dir), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    straight = _toy_train(tmp_path / "straight")
    killed = _toy_train(tmp_path / "killed")
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.monotonic() + 300  # generous: a busy machine can starve the child for a while
    while not latest.exists():
        assert killed.poll() is None, killed.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists(), "run finished before the kill"

    resumed = _toy_train(tmp_path / "killed", "--resume")
    for proc in (straight, resumed):
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "killed"))


class ProgressObjective(ToyObjective):
    """Records what fit tells it of training progress before each step."""

    def __init__(self):
        self.seen = []

    def set_progress(self, fraction):
        self.seen.append(fraction)


def test_fit_tells_the_objective_its_progress(tmp_path):
    objective = ProgressObjective()
    _run(tmp_path, objective=objective, max_steps=4)
    assert objective.seen == pytest.approx([0.25, 0.5, 0.75, 1.0])  # the coming step counted, as the lr is


class RecordingObjective(ToyObjective):
    """Keeps each call's loss and accuracy, to compute the logged means by hand."""

    def __init__(self):
        self.seen = []

