from pathlib import Path

import dataclasses

import pytest
import torch

from pretrainer.models import build_model
from pretrainer.registry import MODELS

# Tests run on 2 shared cores; one intra-op thread keeps them from fighting each other.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (../shared/data beside the repository)")
    return SHARED_DATA


# Tiny models shared by the model and objective tests.
VOCAB = 61  # not equal to max_len, so the word embedding is the only (V, C) matrix


def tiny_config(name: str, **overrides):
    """2 layers, width 32, no dropout (outputs are deterministic unless a test turns it on)."""
    cls = MODELS.get(name).config_class
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = dict(n_layers=2, d_model=32, n_heads=2, max_len=24, dropout=0.0)
    if "attn_dropout" in fields:
        kw["attn_dropout"] = 0.0
    kw.update(overrides)
    return cls(**kw)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture
def make_model():
    def make(name: str, vocab_size: int = VOCAB, **overrides):
        return build_model(tiny_config(name, **overrides), vocab_size).eval()

    return make


# A tiny pre-trained BERT and a labeled task, shared by the transfer and curve tests.
TASK_WORDS = "good bad fine poor great awful nice dull".split()


def _tiny_transfer_task(root: Path, labeled_rows: list[dict], *overrides: str, seed: int = 0):
    """Write a 40-line corpus and `labeled_rows` (jsonl) under `root`, pre-train a tiny BERT for
    2 steps, and return the config (fine-tuning from it, dev = the labeled file)."""
    import json
    import random

    from pretrainer.api import pretrain
    from pretrainer.config import load_config

    rng = random.Random(seed)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choices(TASK_WORDS, k=20)) for _ in range(40)))
    (root / "labeled.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labeled_rows))
    cfg = load_config(None, [
        f'--run.dir="{root / "run"}"', f'--data.train="{root / "corpus.txt"}"', f'--data.cache_dir="{root / "cache"}"',
        "--tokenizer.vocab_size=40", "--tokenizer.min_frequency=1", "--model.n_layers=1", "--model.d_model=16",
        "--model.n_heads=2", "--model.max_len=32", "--train.batch_size=4", "--train.seq_len=16",
        "--train.max_steps=2", "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false",
        f'--finetune.init="{root / "run"}"', f'--finetune.data.train="{root / "labeled.jsonl"}"',
        f'--finetune.data.dev="{root / "labeled.jsonl"}"', "--finetune.train.epochs=1.0",
        "--finetune.train.batch_size=8", "--finetune.max_len=32", *overrides])
    pretrain(cfg, log=lambda *_: None)
    return cfg


@pytest.fixture(scope="session")
def tiny_transfer_task():
    """`_tiny_transfer_task` as a fixture (tests are imported by path, not as a package)."""
    return _tiny_transfer_task


@pytest.fixture(scope="session")
def task_words():
    return TASK_WORDS


def _good_task_rows(n: int = 60, seed: int = 0) -> list[dict]:
    """Labeled rows for a task a tiny model learns: label "1" when the text holds "good"."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(TASK_WORDS[1:], k=5)
        if i % 2:
            words[rng.randrange(5)] = "good"
        rows.append({"text": " ".join(words), "label": str(i % 2)})
    return rows


@pytest.fixture(scope="session")
def good_task_rows():
    """`_good_task_rows` as a fixture."""
    return _good_task_rows


class CrashAfter:
    """A loader that dies after `n` batches, as a killed process would (no checkpoint on the way
    out); its state is the wrapped loader's, so a resumed run continues from the last checkpoint."""

    def __init__(self, loader, n: int):
        self.loader, self.left = loader, n

    def __iter__(self):
        return self

    def __next__(self):
        if self.left == 0:
            raise RuntimeError("killed (simulated)")
        self.left -= 1
        return next(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)


@pytest.fixture(scope="session")
def crash_after():
    """`CrashAfter` as a fixture (tests are imported by path, not as a package)."""
    return CrashAfter
