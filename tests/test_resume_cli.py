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
