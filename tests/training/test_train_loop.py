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

    def __call__(self, model, batch):
        out = super().__call__(model, batch)
        self.seen.append((out["loss"].detach().clone(), out["acc"].clone()))
        return out


@pytest.mark.parametrize("accum", [1, 2])
def test_logged_train_metrics_are_the_means_of_the_step_values(tmp_path, accum):
    objective = RecordingObjective()
    _run(tmp_path, objective=objective, max_steps=10, log_every=4, accum=accum)
    # What train_step reported per step before metrics stayed on the device: the micro-batch
    # sum in float32, then a Python float divided by accum; a log line averages its steps.
    per_step = []
    for i in range(0, len(objective.seen), accum):
        micro = objective.seen[i:i + accum]
        per_step.append({name: float(sum(m[j] for m in micro)) / accum for j, name in enumerate(("loss", "acc"))})
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 10]
    for record, (start, end) in zip(train, [(0, 4), (4, 8), (8, 10)]):
        for name in ("loss", "acc"):
            total = 0.0
            for values in per_step[start:end]:
                total += values[name]
            assert record["metrics"][name] == total / (end - start), (record["step"], name)


def test_metrics_are_read_back_and_reduced_only_when_logging(tmp_path, monkeypatch):
    from pretrainer.training import loop

    calls = []
    real = loop.mean_over_ranks
    monkeypatch.setattr(loop, "mean_over_ranks", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    _, result, lines = _run(tmp_path, max_steps=12, log_every=5)
    assert len(calls) == 3  # steps 5 and 10, and the last two steps at the end; not once per step
    assert result.metrics.keys() >= {"loss", "acc", "grad_norm"}
    assert any(line.startswith("step 10/12  loss ") for line in lines)  # the progress line shows the mean


def test_prefetch_changes_nothing_but_speed(tmp_path):
    def run(prefetch):
        impl = impl_config(prefetch=prefetch)
        set_determinism(impl, seed=0)
        run_dir = tmp_path / str(prefetch)
        fit(ToyModel(dropout=0.1), ToyObjective(), ToyLoader(), train_config(max_steps=20, save_every=7), impl,
            run_dir, log=lambda s: None)
        records = [{k: v for k, v in json.loads(line).items() if k not in ("elapsed", "tokens_per_s")}
                   for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        state = load_checkpoint(run_dir / "checkpoints" / "step_000014").extra
        return _weights(run_dir), records, state

    weights_on, records_on, state_on = run(True)
    weights_off, records_off, state_off = run(False)
    _assert_same(weights_on, weights_off)
    assert records_on == records_off
    assert state_on["loader"] == state_off["loader"] == {"epoch": 0, "position": 14 * 4}
