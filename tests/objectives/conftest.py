"""The objective tests' stand-in tokenizer; tiny models come from tests/conftest.py."""

import pytest

VOCAB = 61  # as in tests/conftest.py

PAD, CLS, SEP, MASK = 0, 1, 2, 3


@pytest.fixture
def tokenizer():
    from types import SimpleNamespace

    return SimpleNamespace(vocab_size=VOCAB, pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK,
                           bos_id=SEP, eos_id=SEP, special_ids=[PAD, CLS, SEP, MASK])
