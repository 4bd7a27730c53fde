"""A full disk while saving: simulated by a limit on the size of any file the run writes
(RLIMIT_FSIZE, set after its second checkpoint), so writes fail with EFBIG as they would
with ENOSPC. The run stops with one line naming the last good checkpoint; that checkpoint
is intact, and --resume with space continues to the same weights as an uninterrupted run."""

import pytest

from fault_runs import assert_bit_identical, one_error_line, run, weights, write_config
from pretrainer.training.checkpoint import latest_checkpoint_path, load_checkpoint

STEPS, SAVE_EVERY = 30, 5
# model.safetensors of this model is ~134 kB: the third checkpoint cannot be written; the
# logs written so far (metrics.jsonl, TensorBoard) stay far below the limit.
CHECKPOINT_TOO_BIG = 100_000


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("disk")
    run_dir = root / "straight"
    done = run("pretrain", str(write_config(root, run_dir, max_steps=STEPS, save_every=SAVE_EVERY, keep=0)))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, run_dir


def assert_last_good_is_step_10(run_dir, straight_dir):
    latest = latest_checkpoint_path(run_dir)
    assert latest.name == "step_000010"
    assert_bit_identical(load_checkpoint(latest).model_state,
                         load_checkpoint(straight_dir / "checkpoints" / "step_000010").model_state)
    assert not any(p.name.startswith(".") for p in (run_dir / "checkpoints").iterdir())  # no half-written leftovers
    assert not (run_dir / "model.safetensors").exists()


@pytest.mark.faults
def test_disk_full_while_saving_keeps_the_last_checkpoint_and_resume_continues(straight):
    root, straight_dir = straight
    run_dir = root / "full"
    cfg = write_config(root, run_dir, max_steps=STEPS, save_every=SAVE_EVERY, keep=1)
    done = run("pretrain", str(cfg), fault={"fsize_after_saves": 2, "limit": CHECKPOINT_TOO_BIG})
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "step_000015: disk full while saving the checkpoint of step 15 (File too large" in line
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'step_000010'} (continue" in line
    assert_last_good_is_step_10(run_dir, straight_dir)
    print(f"\ndisk full while saving: exit 2, {line}")

    resumed = run("pretrain", str(cfg), "--resume")  # space again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bit_identical(weights(straight_dir), weights(run_dir))


@pytest.mark.faults
def test_disk_full_while_logging_names_the_last_checkpoint(straight):
    root, straight_dir = straight
    run_dir = root / "full_log"
    cfg = write_config(root, run_dir, max_steps=STEPS, save_every=SAVE_EVERY)
    done = run("pretrain", str(cfg), fault={"fsize_after_saves": 2, "limit": "metrics.jsonl"})
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "disk full at step 12" in line and "step_000010 (continue" in line, line
    assert_last_good_is_step_10(run_dir, straight_dir)
    print(f"\ndisk full while logging: exit 2, {line}")
