"""Span corruption (T5): the noise layout, its budget and span lengths, the sentinels in the
tokenizer, and the objective's loss against one computed by hand from the model."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pretrainer.config import TokenizerConfig, load_config
from pretrainer.data.collators import corrupt_spans, noise_span_mask, span_counts
from pretrainer.data.tokenizer import SENTINEL, train_tokenizer, with_sentinels
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models import build_model
from pretrainer.models.t5 import T5Config
from pretrainer.objectives.span import SpanCorruption

SENTINELS = [99, 98, 97, 96, 95, 94, 93, 92]
EOS = 3


def spans_of(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    lengths, run = [], 0
    for flag in row.tolist() + [False]:
        if flag:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_toy_sequence_layout():
    ids = torch.arange(10, 30)[None]  # 20 tokens: 3 noise tokens (15%) in 1 span
    inputs, targets = corrupt_spans(ids, SENTINELS, EOS, generator=torch.Generator().manual_seed(0))
    assert span_counts(20, 0.15, 3.0) == (3, 1)
    assert inputs.shape == (1, 20 - 3 + 1 + 1) and targets.shape == (1, 3 + 1 + 1)
    assert inputs[0, -1] == EOS and targets[0, -1] == EOS
    # the target is <extra_id_0> then the hidden span; the input has <extra_id_0> where it was
    assert targets[0, 0] == SENTINELS[0]
    where = inputs[0].tolist().index(SENTINELS[0])
    hidden = targets[0, 1:-1].tolist()
    assert hidden == list(range(10 + where, 10 + where + 3))


def rebuild(inputs: list[int], targets: list[int]) -> list[int]:
    """Put each sentinel's span back where the sentinel stands in the input."""
    spans, current = {}, None
    for token in targets[:-1]:
        if token in SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs[:-1]:
        out.extend(spans[token] if token in SENTINELS else [token])
    return out


def test_sentinels_in_order_and_the_text_comes_back():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 90, (64, 60), generator=g)
    inputs, targets = corrupt_spans(ids, SENTINELS, EOS, generator=g)
    n_noise, m = span_counts(60, 0.15, 3.0)
    assert (n_noise, m) == (9, 3)
    for x, y, original in zip(inputs.tolist(), targets.tolist(), ids.tolist()):
        assert [t for t in x if t in SENTINELS] == SENTINELS[:m]  # <extra_id_0>, <extra_id_1>, ... in order
        assert [t for t in y if t in SENTINELS] == SENTINELS[:m]
        assert sum(t not in SENTINELS for t in y[:-1]) == n_noise  # exactly the 15% budget, every row
        assert x[0] not in SENTINELS  # T5's layout starts with kept tokens
        assert rebuild(x, y) == original


def test_mean_span_length_over_many_draws():
    # 128 tokens: 19 noise tokens in 6 spans; over many draws the spans average 19 / 6 and vary in length.
    noise, span = noise_span_mask(4000, 128, 0.15, 3.0, generator=torch.Generator().manual_seed(0))
    assert (noise.sum(1) == 19).all()
    lengths = torch.tensor([n for row in noise[:500] for n in spans_of(row)], dtype=torch.float)
    assert len(lengths) == 500 * 6
    assert abs(lengths.mean().item() - 3.0) < 0.2 and lengths.std() > 1.0 and lengths.min() == 1
    # each of the 6 spans is equally likely to be the long one: mean length ~ 19 / 6 at every index
    per_index = torch.stack([(noise & (span == i)).sum(1).float() for i in range(6)], 1).mean(0)
    assert torch.allclose(per_index, torch.full((6,), 19 / 6), atol=0.15)
    # a mean span of 1 makes every noise token its own span
    single, _ = noise_span_mask(200, 40, 0.15, 1.0, generator=torch.Generator().manual_seed(0))
    assert all(spans_of(row) == [1] * 6 for row in single)


def test_same_seed_same_corruption():
    ids = torch.randint(10, 90, (4, 50), generator=torch.Generator().manual_seed(0))
    a = corrupt_spans(ids, SENTINELS, EOS, generator=torch.Generator().manual_seed(5))
    b = corrupt_spans(ids, SENTINELS, EOS, generator=torch.Generator().manual_seed(5))
    c = corrupt_spans(ids, SENTINELS, EOS, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_loss_is_the_decoders_cross_entropy_on_the_targets():
    info = DataInfo("text", vocab_size=100, pad_id=0, eos_id=EOS, sentinel_ids=tuple(SENTINELS))
    objective = SpanCorruption(load_config().objective, info)
    torch.manual_seed(0)
    model = objective.build(build_model(T5Config.tiny(), info)).eval()
    batch = {"input_ids": torch.randint(10, 90, (3, 40), generator=torch.Generator().manual_seed(2))}
    loss, correct, n = objective.terms(model, batch, torch.Generator().manual_seed(7))
    inputs, targets = corrupt_spans(batch["input_ids"], SENTINELS, EOS, generator=torch.Generator().manual_seed(7))
    shifted = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)  # start = [PAD] = 0
    logits = model.backbone.decoder_logits(model(inputs, decoder_input_ids=shifted))
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))
    assert n == targets.numel() and correct == (logits.argmax(-1) == targets).sum()


def test_sentinels_are_added_and_old_tokenizers_load_unchanged():
    corpus = ["the cat sat on the mat", "a dog ran under the log"] * 5
    plain = train_tokenizer(corpus, TokenizerConfig(vocab_size=60, min_frequency=1))
    assert plain.sentinel_ids == []
    more = with_sentinels(plain, 5)
    assert len(more.sentinel_ids) == 5 and more.vocab_size == plain.vocab_size + 5
    # T5's layout: <extra_id_0> has the highest id, the rest count down
    assert more.sentinel_ids == list(range(more.vocab_size - 1, more.vocab_size - 6, -1))
    assert more.token_to_id(SENTINEL.format(0)) == more.vocab_size - 1
    assert set(more.sentinel_ids) <= set(more.special_ids)
    assert more.encode_batch(corpus) == plain.encode_batch(corpus)  # the text's ids do not move
    assert with_sentinels(more, 3) is more
    trained = train_tokenizer(corpus, TokenizerConfig(vocab_size=60, min_frequency=1, sentinels=5))
    assert trained.sentinel_ids == more.sentinel_ids


def test_configure_adds_t5s_sentinels_and_refuses_too_few():
    cfg = load_config(base={"objective": {"name": "span_corruption"}, "model": {"name": "t5"}})
    assert cfg.tokenizer.sentinels == 0 and SpanCorruption.configure(cfg).tokenizer.sentinels == 100
    few = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, sentinels=2))
    with pytest.raises(PretrainerError, match="'tokenizer.sentinels' = 2 is too few: train.seq_len = 128"):
        SpanCorruption.configure(few)


def test_models_without_a_decoder_and_tokenizers_without_sentinels_are_refused():
    objective = SpanCorruption(load_config().objective, DataInfo("text", vocab_size=100))
    assert "encoder–decoder" in objective.check_backbone(build_model(load_config().model, 100))

    class NoSentinels:
        def check_layout(self, layout, name):
            pass

    with pytest.raises(PretrainerError, match="tokenizer.sentinels"):
        objective.check_data(NoSentinels())
