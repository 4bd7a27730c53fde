"""A rank SIGKILLed in a 2-process job (gloo on the CPU): the job fails within seconds, not
after a collective timeout, saying which process died; then --resume continues from the
last checkpoint to the weights of a job that was never interrupted.

Two launches are checked. Under torchrun the agent notices the dead worker, stops the other
and reports the one that failed. Started without an agent (as processes on separate nodes
are, when a whole node goes), the survivor notices the lost connection itself and stops
with one line naming the last checkpoint.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_runs import assert_bit_identical, cli, env, one_error_line, weights, write_config
from pretrainer.training.checkpoint import latest_checkpoint_path, load_checkpoint

STEPS, SAVE_EVERY, PER_RANK_BATCH = 40, 5, 4
FAIL_WITHIN_S = 30  # what the test allows; a dead peer is noticed at once (impl.dist_timeout is for hung ones)


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(Path(__file__).parent / "_fault_cli.py"), *args]


def latest_step(run_dir: Path) -> int:
    path = latest_checkpoint_path(run_dir)
    return int(path.name.split("_")[-1]) if path is not None else -1


def wait_for_checkpoint_after(run_dir: Path, step: int, procs: list[subprocess.Popen], timeout=180) -> None:
    deadline = time.monotonic() + timeout
    while latest_step(run_dir) <= step:
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"the job ended before the checkpoint after step {step}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for a checkpoint")
        time.sleep(0.02)


def worker_pid(agent_pid: int, rank: int) -> int:
    """The torchrun worker of `rank` (read from its environment)."""
    for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no worker with RANK={rank} under {agent_pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.faults
@pytest.mark.distributed
def test_a_killed_rank_fails_the_job_fast_and_the_run_resumes(tmp_path):
    straight = tmp_path / "straight"
    args = [f"--train.batch_size={PER_RANK_BATCH}"]
    cfg = write_config(tmp_path, straight, max_steps=STEPS, save_every=SAVE_EVERY)
    done = subprocess.run(torchrun("pretrain", str(cfg), *args), capture_output=True, text=True, env=env(),
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run_dir = tmp_path / "killed"
    cfg = write_config(tmp_path, run_dir, max_steps=STEPS, save_every=SAVE_EVERY)

    # 1. No agent: the two processes as torchrun would start them; rank 1 dies, rank 0 reports it.
    port = free_port()
    ranks = [subprocess.Popen(cli("pretrain", str(cfg), *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in range(2)]
    wait_for_checkpoint_after(run_dir, SAVE_EVERY, ranks)
    killed_at = time.monotonic()
    ranks[1].kill()
    _, stderr = ranks[0].communicate(timeout=FAIL_WITHIN_S)
    survivor_s = time.monotonic() - killed_at
    ranks[1].wait()
    assert ranks[0].returncode == 2
    line = one_error_line(stderr)
    assert line.startswith("error: rank 0: lost contact with the other processes at step "), line
    assert f"the last good checkpoint is {latest_checkpoint_path(run_dir)} (continue from it with --resume)" in line
    load_checkpoint(latest_checkpoint_path(run_dir))

    # 2. Under torchrun, resumed and killed again: the agent stops the job and names rank 1.
    agent = subprocess.Popen(torchrun("pretrain", str(cfg), "--resume", *args), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env())
    wait_for_checkpoint_after(run_dir, latest_step(run_dir), [agent])
    killed_at = time.monotonic()
    os.kill(worker_pid(agent.pid, 1), signal.SIGKILL)
    output, _ = agent.communicate(timeout=FAIL_WITHIN_S)
    torchrun_s = time.monotonic() - killed_at
    assert agent.returncode != 0
    assert "Root Cause (first observed failure)" in output and "rank      : 1 (local_rank: 1)" in output
    assert "Signal 9 (SIGKILL) received by PID" in output
    load_checkpoint(latest_checkpoint_path(run_dir))

    # 3. --resume continues from the last checkpoint to the uninterrupted job's weights.
    resumed_from = latest_step(run_dir)
    done = subprocess.run(torchrun("pretrain", str(cfg), "--resume", *args), capture_output=True, text=True,
                          env=env(), timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"resuming from {latest_checkpoint_path(run_dir).parent / f'step_{resumed_from:06d}'}" in done.stdout
    assert_bit_identical(weights(straight), weights(run_dir))
    print(f"\nrank death: without an agent the survivor stopped {survivor_s:.1f}s after the kill ({line}); "
          f"under torchrun the job failed {torchrun_s:.1f}s after the kill; --resume from step {resumed_from} "
          f"ended bit-identical to the uninterrupted job")
