import dataclasses

import pytest

from pretrainer.models import build_model
from pretrainer.registry import MODELS

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
