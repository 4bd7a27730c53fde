"""Span corruption (T5): drop random spans from the input, and have the decoder write them out.

A packed window of train.seq_len tokens loses objective.noise_density of them in spans of mean
length objective.mean_span_length; each span becomes one sentinel in the encoder's input, and
the decoder's target is each sentinel followed by the tokens it hid (data/collators.corrupt_spans).
The decoder reads the target shifted right behind the start token ([PAD], as in T5).

Sentinels are tokens of the tokenizer (tokenizer.sentinels): when that is 0, `configure` asks
for T5's 100, so a span-corruption config needs nothing else. Held-out metric: the loss and
accuracy over target tokens (sentinels and end token included), with the same spans every time.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.config import Config, ObjectiveConfig
from pretrainer.data.collators import corrupt_spans, span_counts
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.linear_ce import linear_cross_entropy
from pretrainer.objectives.mlm import perplexity, seeded_evaluation_batches
from pretrainer.registry import OBJECTIVES

DEFAULT_SENTINELS = 100  # T5's <extra_id_0> .. <extra_id_99>


@OBJECTIVES.register("span_corruption")
class SpanCorruption(PretrainingObjective):
    batch_layout = "packed"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        # Read leniently: a description made from the config alone has no tokenizer yet (check_data).
        self.sentinel_ids = list(getattr(data, "sentinel_ids", ()) or ())
        self.eos_id = getattr(data, "eos_id", None)
        self.start_id = getattr(data, "pad_id", None)

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        """The tokenizer gets sentinels (T5's 100 unless tokenizer.sentinels says), enough for
        the spans of a train.seq_len window."""
        sentinels = cfg.tokenizer.sentinels or DEFAULT_SENTINELS
        _, n_spans = span_counts(cfg.train.seq_len, cfg.objective.noise_density, cfg.objective.mean_span_length)
        if n_spans > sentinels:
            raise PretrainerError(f"config key 'tokenizer.sentinels' = {sentinels} is too few: train.seq_len = "
                                  f"{cfg.train.seq_len} tokens hold {n_spans} noise spans, each needing its own "
                                  f"sentinel; raise tokenizer.sentinels or lower train.seq_len")
        if sentinels == cfg.tokenizer.sentinels:
            return cfg
        return dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, sentinels=sentinels))

    def check_data(self, data) -> None:
        super().check_data(data)
        if not self.sentinel_ids:
            raise PretrainerError("objective.name = \"span_corruption\" needs sentinel tokens in the tokenizer; set "
                                  "tokenizer.sentinels (e.g. 100) and prepare the data again")

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if not getattr(backbone, "is_encoder_decoder", False):
            return "span corruption trains an encoder–decoder (model.name = \"t5\"): a decoder writes the spans out"
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """The encoder–decoder carries its own LM head: no heads to add."""
        return PretrainingModel(backbone, {})

    def terms(self, model: nn.Module, batch: dict, generator: torch.Generator | None = None):
        """-> (mean loss over target tokens, n correct, n targets)."""
        ids = batch["input_ids"]
        if ids.shape[1] < 2:
            raise ValueError("span corruption needs sequences of at least 2 tokens")
        _, n_spans = span_counts(ids.shape[1], self.cfg.noise_density, self.cfg.mean_span_length)
        if n_spans > len(self.sentinel_ids):
            raise PretrainerError(f"sequences of {ids.shape[1]} tokens hold {n_spans} noise spans but the tokenizer "
                                  f"has {len(self.sentinel_ids)} sentinels (tokenizer.sentinels)")
        inputs, targets = corrupt_spans(ids, self.sentinel_ids, self.eos_id, noise_density=self.cfg.noise_density,
                                        mean_span_length=self.cfg.mean_span_length, generator=generator)
        decoder_inputs = torch.cat([torch.full_like(targets[:, :1], self.start_id), targets[:, :-1]], dim=1)
        hidden = model(inputs, decoder_input_ids=decoder_inputs)  # (B, T, C) of the decoder
        backbone = getattr(model, "backbone", model)
        features, weight, bias = backbone.decoder_projection(hidden)
        loss, hits = linear_cross_entropy(features.flatten(0, 1), weight, targets.flatten(), bias)
        return loss, hits.sum(), targets.numel()

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        loss, n_correct, n = self.terms(model, batch)
        return {"loss": loss, "span_acc": (n_correct.float() / n).detach(), "n_tokens": batch["input_ids"].numel()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum = correct = 0.0
        count = 0
        for batch, generator in seeded_evaluation_batches(model, batches):
            loss, n_correct, n = self.terms(model, batch, generator)
            loss_sum += float(loss) * n
            correct += float(n_correct)
            count += n
        loss = loss_sum / max(count, 1)
        return {"span_loss": loss, "span_acc": correct / max(count, 1), "span_ppl": perplexity(loss)}
