import json
import random

import pytest

from pretrainer.config import TokenizerConfig
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.io import save_weights
from pretrainer.runs import write_run_header

WORDS = "good bad fine poor great awful nice dull paris kim joe the a of walked".split()


def _corpus(n=200, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=8)) for _ in range(n)]


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    return train_tokenizer(_corpus(), TokenizerConfig(kind="wordpiece", vocab_size=60, min_frequency=1))


@pytest.fixture(scope="session")
def bytebpe_tokenizer():
    return train_tokenizer(_corpus(), TokenizerConfig(kind="bytebpe", vocab_size=300, min_frequency=1))


def _write_run(run_dir, model, tokenizer, labels=None):
    """A run directory (model.json, weights, tokenizer, results.json with the labels) for `model`."""
    write_run_header(run_dir, None, model, tokenizer)
    save_weights(model, run_dir / "model.safetensors")
    if labels:
        (run_dir / "results.json").write_text(json.dumps({"labels": labels}))
    return run_dir


@pytest.fixture(scope="session")
def write_run():
    return _write_run
