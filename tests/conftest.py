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
