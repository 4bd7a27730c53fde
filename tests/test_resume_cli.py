"""Kill `pretrainer pretrain` with SIGKILL mid-run, resume with --resume, compare with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORDS = ("the cat sat on a mat while dogs ran past quickly and birds sang loud songs "
         "over green hills under grey skies near old towns with red roofs").split()


def write_corpus(path: Path) -> None:
    import random

    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "."
                              for _ in range(300)))


def write_config(tmp_path: Path, run_dir: Path) -> Path:
    cfg = tmp_path / f"{run_dir.name}.toml"
    cfg.write_text(f"""
[run]
dir = "{run_dir}"
seed = 3
[data]
train = ["{tmp_path / 'corpus.txt'}"]
cache_dir = "{tmp_path / 'cache'}"
[tokenizer]
vocab_size = 120
min_frequency = 1
[model]
name = "bert"
n_layers = 2
d_model = 32
n_heads = 2
max_len = 32
[train]
batch_size = 8
seq_len = 32
max_steps = 24
eval_every = 0
save_every = 4
log_every = 4
[impl]
progress = false
deterministic = true
threads = 1
""")
    return cfg


def pretrain_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pretrainer", "pretrain", str(cfg), *extra]


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    write_corpus(tmp_path / "corpus.txt")
    straight = tmp_path / "straight"
    subprocess.run(pretrain_cmd(write_config(tmp_path, straight)), check=True, capture_output=True)

    killed = tmp_path / "killed"
    cfg = write_config(tmp_path, killed)
    proc = subprocess.Popen(pretrain_cmd(cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 120
    # Kill once a checkpoint past the first few steps exists, i.e. genuinely mid-run.
    while time.time() < deadline:
        if latest.exists() and int(latest.read_text().strip().split("_")[-1]) >= 8:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed; make the run longer")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()

    # A fresh start over a run that exists is refused; --resume continues it.
    refused = subprocess.run(pretrain_cmd(cfg), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    subprocess.run(pretrain_cmd(cfg, "--resume"), check=True, capture_output=True)

    a = load_file(straight / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


# ---------------------------------------------------------------- a refused --resume changes nothing


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


SHORT = ["--train.max_steps=4", "--train.save_every=2"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A finished 4-step run (checkpoints at steps 2 and 4), trained in this process."""
    from pretrainer.cli.main import main

    tmp_path = tmp_path_factory.mktemp("resume")
    write_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    cfg = write_config(tmp_path, run)
    assert main(["pretrain", str(cfg), *SHORT]) == 0
    return cfg, run


@pytest.mark.parametrize("changes, keys", [
    (["--model.n_layers=3"], ["model.n_layers: 2 -> 3"]),
    (['--objective.name="mlm_sop"', "--train.lr=0.01"], ["objective.name", "train.lr: 0.0005 -> 0.01"]),
    (["--train.max_steps=2"], ["train.max_steps: 4 -> 2"]),  # shortening would change the schedule
    (["--run.seed=4", "--tokenizer.vocab_size=99"], ["run.seed: 3 -> 4", "tokenizer.vocab_size"]),
])
def test_a_refused_resume_leaves_the_run_byte_identical_and_usable(short_run, capsys, changes, keys):
    from pretrainer.cli.main import main

    cfg, run = short_run
    before = snapshot(run)
    code = main(["pretrain", str(cfg), *SHORT, "--resume", *changes])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "--resume would change the run" in err and all(key in err for key in keys), err
    assert snapshot(run) == before
    assert main(["evaluate", str(cfg), *SHORT]) == 0  # the run still loads and evaluates


def test_resume_accepts_what_does_not_change_the_run(tmp_path, capsys):
    """impl.*, logging and checkpoint cadence may change; max_steps may be raised (the run goes on)."""
    from pretrainer.cli.main import main

    write_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "run"
    cfg = write_config(tmp_path, run)
    assert main(["pretrain", str(cfg), *SHORT]) == 0
    assert main(["pretrain", str(cfg), "--resume", "--train.max_steps=6", "--train.save_every=3",
                 "--train.log_every=1", "--impl.threads=2", "--impl.prefetch=false"]) == 0
    assert (run / "checkpoints" / "latest").read_text().strip().endswith("6")
    assert "max_steps = 6" in (run / "config.toml").read_text()  # the header says what the run now is


def test_a_finetune_resume_that_changes_the_run_is_refused(tmp_path, tiny_transfer_task, good_task_rows):
    import dataclasses

    from pretrainer.errors import PretrainerError
    from pretrainer.transfer.finetune import finetune

    cfg = tiny_transfer_task(tmp_path, good_task_rows(16))
    finetune(cfg, log=lambda *_: None)
    ft_dir = Path(cfg.run.dir) / "finetune"
    before = snapshot(ft_dir)
    changed = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, label_fraction=0.5))
    with pytest.raises(PretrainerError, match=r"--resume would change the run: finetune\.label_fraction: 1\.0 -> 0\.5"):
        finetune(changed, resume=True, log=lambda *_: None)
    assert snapshot(ft_dir) == before
