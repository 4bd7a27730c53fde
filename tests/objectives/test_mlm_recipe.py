"""The small-budget masked-LM recipe knobs: a decreasing mask rate, a unigram-initialised
output bias, and dropout given back to a backbone for fine-tuning."""

import numpy as np
import pytest
import torch

from pretrainer.config import ObjectiveConfig
from pretrainer.models.layers import SelfAttention, set_dropout
from pretrainer.registry import OBJECTIVES


def test_mask_rate_moves_from_start_to_end_and_evaluation_uses_the_end(tokenizer, make_model):
    objective = OBJECTIVES.get("mlm")(ObjectiveConfig(mask_rate=0.4, mask_rate_end=0.1), tokenizer)
    objective.set_progress(0.0)
    assert objective.mask_rate == pytest.approx(0.4)
    objective.set_progress(0.5)
    assert objective.mask_rate == pytest.approx(0.25)
    module = objective.build(make_model("bert"))
    seen = []
    real_mask = objective.mask

    def spy(batch, generator=None):
        seen.append(objective.mask_rate)
        return real_mask(batch, generator)

    objective.mask = spy
    ids = torch.randint(4, 61, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
             "special_tokens_mask": torch.zeros_like(ids, dtype=torch.bool)}
    objective.evaluate(module, [batch])
    assert seen == [pytest.approx(0.1)] and objective.mask_rate == pytest.approx(0.25)  # restored
    objective.set_progress(1.0)
    assert objective.mask_rate == pytest.approx(0.1)
    constant = OBJECTIVES.get("mlm")(ObjectiveConfig(mask_rate=0.3), tokenizer)
    constant.set_progress(0.7)
    assert constant.mask_rate == pytest.approx(0.3)


class CountingData:
    def __init__(self, counts):
        self.counts = np.asarray(counts)

    def token_counts(self):
        return self.counts


def test_unigram_bias_starts_at_the_log_frequencies(tokenizer, make_model):
    objective = OBJECTIVES.get("mlm")(ObjectiveConfig(unigram_bias=True), tokenizer)
    module = objective.build(make_model("bert"))
    counts = np.zeros(61, dtype=np.int64)
    counts[10], counts[11], counts[1] = 99, 9, 10_000  # id 1 is [CLS]: special, never a target
    objective.initialise(module, CountingData(counts))
    bias = module.mlm_head.bias.detach().double()
    assert int(bias.argmax()) == 10
    assert bias[10] - bias[11] == pytest.approx(np.log(100 / 10))  # add-one smoothed
    assert bias[1] == bias[20]  # the special id counts as unseen
    plain = OBJECTIVES.get("mlm")(ObjectiveConfig(), tokenizer)
    untouched = plain.build(make_model("bert"))
    plain.initialise(untouched, CountingData(counts))
    assert torch.count_nonzero(untouched.mlm_head.bias) == 0


def test_set_dropout_reaches_every_dropout(make_model):
    model = make_model("bert")  # built with dropout 0
    set_dropout(model, 0.25)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    rates += [m.attn_dropout for m in model.modules() if isinstance(m, SelfAttention)]
    assert rates and all(r == 0.25 for r in rates)
