"""objective.masking on the MLM objective: "word" is whole_word; "span" predicts whole-word spans
at the token budget, and evaluation masks the same spans every time."""

import torch

from pretrainer.config import ObjectiveConfig
from pretrainer.objectives.mlm import MaskedLM

PAD, CLS, SEP, MASK = 0, 1, 2, 3


def batch(b=8, t=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 61, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return {"input_ids": ids, "attention_mask": torch.ones(b, t, dtype=torch.bool),
            "special_tokens_mask": (ids == CLS) | (ids == SEP), "word_starts": torch.rand(b, t, generator=g) < 0.6}


def test_word_masking_is_whole_word(tokenizer):
    a = MaskedLM(ObjectiveConfig(masking="word"), tokenizer)
    b = MaskedLM(ObjectiveConfig(whole_word=True), tokenizer)
    assert a.layout_options == b.layout_options == {"whole_word": True}
    x = batch()
    assert all(torch.equal(u, v) for u, v in zip(a.mask(x, torch.Generator().manual_seed(1)),
                                                 b.mask(x, torch.Generator().manual_seed(1))))


def test_span_masking_predicts_whole_words_at_the_budget(tokenizer):
    objective = MaskedLM(ObjectiveConfig(masking="span", mask_rate=0.15), tokenizer)
    assert objective.layout_options == {"whole_word": True}
    x = batch()
    masked, labels = objective.mask(x, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert torch.equal(labels[chosen], x["input_ids"][chosen])
    starts = x["word_starts"] | x["special_tokens_mask"]
    starts[:, 1:] |= x["special_tokens_mask"][:, :-1]
    after = torch.cat([chosen[:, 1:], torch.zeros(len(chosen), 1, dtype=torch.bool)], 1)
    assert not (chosen & ~after & ~torch.cat([starts[:, 1:], torch.ones(len(chosen), 1, dtype=torch.bool)], 1)).any()
    assert (chosen.sum(1) >= 6).all()  # round(0.15 * 38) = 6 tokens at least
    again = objective.mask(x, torch.Generator().manual_seed(0))
    assert torch.equal(again[1], labels) and torch.equal(again[0], masked)
    assert (masked[chosen] == MASK).float().mean() > 0.5  # 80/10/10 applies to the chosen
