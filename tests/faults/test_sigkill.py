"""SIGKILL a real pre-training run 20 times at seeded random moments, half of them inside a
checkpoint write (at each stage of it), resume each time with --resume, and end with weights
bit-identical to a run that was never interrupted."""

import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from _fault_cli import STAGES
from fault_runs import assert_bit_identical, cli, env, weights, write_config
from pretrainer.training.checkpoint import latest_checkpoint_path, load_checkpoint

KILLS = 20
MAX_STEPS, SAVE_EVERY = 120, 3
TIMED_WITHIN = 8  # a timed kill comes within this many steps' time after the process resumed


class Watched:
    """A CLI run whose stdout is read in a thread, so the test can wait for a line."""

    def __init__(self, args, fault=None):
        self.proc = subprocess.Popen(cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env(fault))
        self.lines: list[str] = []
        self.resumed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("resuming from"):
                self.resumed.set()

    def wait(self, timeout=120) -> int:
        return self.proc.wait(timeout=timeout)


def wait_for(condition, proc: Watched, what: str, timeout=120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.proc.poll() is not None:
            pytest.fail(f"the run ended (code {proc.proc.returncode}) before {what}:\n{''.join(proc.lines)[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def half_saved(run_dir: Path) -> set[str]:
    """What a save cut short leaves: a temporary folder or `latest` file, or a step folder beyond
    the one `latest` names."""
    ckpt_dir = run_dir / "checkpoints"
    latest = latest_checkpoint_path(run_dir)
    return {p.name for p in ckpt_dir.iterdir()
            if p.name.startswith(".") or (p.name.startswith("step_") and p.name > latest.name)}


def schedule(rng: random.Random) -> list[dict]:
    """Kill 0 at a random moment after the first checkpoint (a run with none has nothing to resume);
    then, shuffled, 10 kills inside the N-th save of the resumed process (every stage at least
    once) and 9 more at a random moment after it resumed. Moments are drawn in steps' time, so
    the 20 kills fit in the run on a fast machine as on a slow one."""
    stages = list(STAGES) + [rng.choice(STAGES) for _ in range(10 - len(STAGES))]
    later = [{"stage": s, "save": rng.randint(1, 3)} for s in stages] + [{"steps": rng.uniform(0, TIMED_WITHIN)}
                                                                          for _ in range(KILLS - 11)]
    rng.shuffle(later)
    return [{"steps": rng.uniform(0, TIMED_WITHIN)}] + later


def seconds_per_step(stdout: str) -> float:
    """From the run's last line, `trained N steps in Xs; ...`."""
    found = re.search(r"trained (\d+) steps in ([\d.]+)s", stdout)
    assert found, stdout[-2000:]
    return float(found.group(2)) / int(found.group(1))


@pytest.mark.faults
def test_twenty_sigkills_resume_to_bit_identical_weights(tmp_path):
    straight = tmp_path / "straight"
    cfg = write_config(tmp_path, straight, max_steps=MAX_STEPS, save_every=SAVE_EVERY)
    done = subprocess.run(cli("pretrain", str(cfg)), capture_output=True, text=True, env=env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    step_s = seconds_per_step(done.stdout)

    killed = tmp_path / "killed"
    cfg = write_config(tmp_path, killed, max_steps=MAX_STEPS, save_every=SAVE_EVERY)
    plan = schedule(random.Random(20))
    survived = in_write = 0
    stages_hit = set()
    resume_steps = []
    for i, kill in enumerate(plan):
        args = ["pretrain", str(cfg)] + (["--resume"] if i else [])
        fault = {"kill_in_save": kill["save"], "stage": kill["stage"]} if "stage" in kill else None
        before = half_saved(killed) if i else set()
        proc = Watched(args, fault)
        if fault is None:
            if i == 0:
                wait_for(lambda: (killed / "checkpoints" / "latest").exists(), proc, "the first checkpoint")
            else:
                wait_for(proc.resumed.is_set, proc, "resuming")
            time.sleep(kill["steps"] * step_s)
            os.kill(proc.proc.pid, signal.SIGKILL)
        code = proc.wait()
        assert code == -signal.SIGKILL, f"kill {i} ({kill}): exit code {code}\n{''.join(proc.lines)[-3000:]}"
        survived += 1
        if fault is not None:
            stages_hit.add(kill["stage"])
        if fault is not None or half_saved(killed) - before:  # a timed kill can land inside a save too
            in_write += 1
        # What --resume will read is a whole checkpoint, whatever the moment of the kill.
        ckpt = load_checkpoint(latest_checkpoint_path(killed))
        assert 0 < ckpt.step < MAX_STEPS and not (killed / "model.safetensors").exists()
        resume_steps.append(ckpt.step)

    done = subprocess.run(cli("pretrain", str(cfg), "--resume"), capture_output=True, text=True, env=env(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_bit_identical(weights(straight), weights(killed))
    assert stages_hit == set(STAGES)
    leftovers = [p.name for p in (killed / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    print(f"\nSIGKILL: {survived}/{KILLS} kills survived, {in_write} inside a checkpoint write "
          f"({len(stages_hit)} stages); final weights bit-identical; resumed from steps {resume_steps}")
