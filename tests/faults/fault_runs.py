"""A tiny real pre-training run (BERT, 2 layers, width 32, masked LM on a generated corpus,
deterministic) driven through the CLI in a subprocess, for the fault-injection tests."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
WORDS = ("the cat sat on a mat while dogs ran past quickly and birds sang loud songs "
         "over green hills under grey skies near old towns with red roofs").split()


def write_corpus(root: Path) -> Path:
    rng = random.Random(0)
    path = root / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "."
                              for _ in range(300)))
    return path


def write_config(root: Path, run_dir: Path, *, max_steps: int, save_every: int, log_every: int = 4,
                 keep: int = 2, batch_size: int = 8) -> Path:
    """One config per run directory; every run shares the corpus and the prepared data."""
    corpus = root / "corpus.txt"
    if not corpus.exists():
        write_corpus(root)
    cfg = root / f"{run_dir.name}.toml"
    cfg.write_text(f"""
[run]
dir = "{run_dir}"
seed = 3
[data]
train = ["{corpus}"]
cache_dir = "{root / 'cache'}"
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
batch_size = {batch_size}
seq_len = 32
max_steps = {max_steps}
eval_every = 0
eval_batches = 2
save_every = {save_every}
keep_checkpoints = {keep}
log_every = {log_every}
[impl]
device = "cpu"
progress = false
deterministic = true
threads = 1
""")
    return cfg


def env(fault: dict | None = None) -> dict:
    out = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    out.pop("PRETRAINER_FAULT", None)
    if fault:
        out["PRETRAINER_FAULT"] = json.dumps(fault)
    return out


def cli(*args: str) -> list[str]:
    """`pretrainer ARGS` through the fault-injecting wrapper (no fault unless PRETRAINER_FAULT is set)."""
    return [sys.executable, str(HERE / "_fault_cli.py"), *args]


def run(*args: str, fault: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args), capture_output=True, text=True, env=env(fault), timeout=timeout)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name


def one_error_line(stderr: str) -> str:
    """The CLI's error contract: exactly one line, `error: ...`, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]
