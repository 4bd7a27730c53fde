"""mask_tokens: which tokens are chosen, and what they are replaced with."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from pretrainer.data.collators import mask_tokens

PAD, CLS, SEP, MASK = 0, 1, 2, 3
V = 100


def batch(b=64, t=128, seed=0, n_pad=0):
    """[CLS] words ... [SEP] [PAD]*n_pad; ids >= 4 are ordinary tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (b, t), generator=g)
    ids[:, 0] = CLS
    ids[:, t - 1 - n_pad] = SEP
    if n_pad:
        ids[:, t - n_pad:] = PAD
    special = (ids == CLS) | (ids == SEP) | (ids == PAD)
    return ids, special


def run(ids, special, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(1))
    return mask_tokens(ids, special, mask_id=MASK, vocab_size=V, **kw)


def test_special_tokens_are_never_chosen_and_labels_hold_the_originals():
    ids, special = batch(n_pad=20)
    masked, labels = run(ids, special)
    chosen = labels != -100
    assert not (chosen & special).any()
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing outside the chosen set changes


def test_rate_is_fifteen_percent_of_candidates_per_sequence():
    ids, special = batch(n_pad=28)  # 98 candidates per row -> round(14.7) = 15
    _, labels = run(ids, special)
    per_row = (labels != -100).sum(1)
    assert (per_row == 15).all()
    _, labels = run(ids, special, mask_rate=0.3)
    assert ((labels != -100).sum(1) == round(0.3 * 98)).all()


def test_eighty_ten_ten_split():
    ids, special = batch(b=256)
    masked, labels = run(ids, special)
    chosen = labels != -100
    n = chosen.sum().item()  # ~4.8k tokens
    as_mask = (masked[chosen] == MASK).sum().item() / n
    unchanged = (masked[chosen] == ids[chosen]).sum().item() / n
    random = 1 - as_mask - unchanged
    assert abs(as_mask - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.02 and abs(random - 0.1) < 0.02
    # random replacements avoid [MASK] and the ids found at special positions ([CLS], [SEP])...
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert not ((replaced == MASK) | (replaced == CLS) | (replaced == SEP)).any()
    # ...and the tokenizer's special ids when given ([PAD] does not occur in this batch)
    masked, labels = run(ids, special, special_ids=[PAD, CLS, SEP, MASK])
    chosen = labels != -100
    assert masked[chosen & (masked != MASK) & (masked != ids)].min() >= 4
    m2, l2 = run(ids, special, mask_token_rate=0.0, random_token_rate=1.0, special_ids=[PAD, *range(4, 60)])
    assert (m2[l2 != -100] >= 60).all()


def test_whole_word_masking_chooses_complete_words():
    ids, special = batch(b=32, t=96)
    g = torch.Generator().manual_seed(5)
    word_starts = torch.rand(ids.shape, generator=g) < 0.4  # words of ~2.5 tokens
    word_starts[:, 1] = False  # a word cut by packing continues right after [CLS]
    _, labels = run(ids, special, word_starts=word_starts)
    chosen = labels != -100
    assert not (chosen & special).any()
    starts = word_starts | special
    starts[:, 1:] |= special[:, :-1]
    word_id = starts.long().cumsum(1)
    n_chosen_words = 0
    for b in range(ids.shape[0]):
        for w in word_id[b].unique():
            in_word = (word_id[b] == w) & ~special[b]
            if in_word.any():
                picked = chosen[b][in_word]
                assert picked.all() or not picked.any(), "a word was partly chosen"
                n_chosen_words += int(picked.all())
    # ~15% of words, so about 15% of tokens
    rate = chosen.sum().item() / (~special).sum().item()
    assert 0.11 < rate < 0.19


def test_rng_comes_from_the_generator_or_the_global_rng():
    ids, special = batch(b=4, t=32)
    a = run(ids, special, generator=torch.Generator().manual_seed(9))
    b = run(ids, special, generator=torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    torch.manual_seed(3)
    c = mask_tokens(ids, special, mask_id=MASK, vocab_size=V)
    torch.manual_seed(3)
    d = mask_tokens(ids, special, mask_id=MASK, vocab_size=V)
    assert all(torch.equal(x, y) for x, y in zip(c, d))
    assert not torch.equal(a[1], c[1])


def test_short_sequences_get_one_target_and_empty_ones_none():
    ids = torch.tensor([[CLS, 10, 11, SEP], [CLS, SEP, PAD, PAD]])
    special = torch.tensor([[1, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    _, labels = run(ids, special)
    assert (labels[0] != -100).sum() == 1 and (labels[1] == -100).all()


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(2, 40), seed=st.integers(0, 10_000), rate=st.floats(0.0, 1.0),
       whole_word=st.booleans())
def test_invariants(b, t, seed, rate, whole_word):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, t), generator=g)
    special = ids < 4
    word_starts = torch.rand(b, t, generator=g) < 0.5 if whole_word else None
    masked, labels = run(ids, special, mask_rate=rate, word_starts=word_starts, generator=g)
    chosen = labels != -100
    assert masked.shape == labels.shape == ids.shape
    assert not (chosen & special).any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    n_cand = (~special).sum(1)
    assert ((chosen.sum(1) > 0) == (n_cand > 0)).all()  # every row with a candidate gets a target
    assert ((masked >= 0) & (masked < V)).all()


class _HostReads(TorchDispatchMode):
    """Records the ops that make the host wait for a tensor's values (.item(), bool(t), nonzero)."""

    SYNCING = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.is_nonzero,
               torch.ops.aten.masked_select, torch.ops.aten.unique_consecutive, torch.ops.aten._unique2}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in self.SYNCING:
            self.seen.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_no_host_reads_in_the_per_step_path():
    ids, special = batch(b=8, t=32, n_pad=4)
    word_starts = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    for kw in ({}, {"word_starts": word_starts, "special_ids": [PAD, CLS, SEP, MASK]}):
        with _HostReads() as reads:
            masked, labels = run(ids, special, **kw)
        assert reads.seen == [], kw
        chosen = labels != -100
        assert chosen.any() and not (chosen & special).any()


def test_tiny_vocabulary_with_every_id_excluded_still_replaces_within_range():
    # [MASK] and the specials exclude all 4 ids: replacements then come from the whole vocabulary.
    ids = torch.tensor([[1, 2, 2, 2, 2, 2, 2, 0]])
    special = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    masked, labels = mask_tokens(ids, special, mask_id=3, vocab_size=4, mask_rate=1.0, mask_token_rate=0.0,
                                 random_token_rate=1.0, special_ids=[0, 1, 2],
                                 generator=torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen.sum() == 6 and ((masked >= 0) & (masked < 4)).all()
