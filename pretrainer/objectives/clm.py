"""Causal language modelling (GPT): predict every next token."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.linear_ce import linear_cross_entropy
from pretrainer.objectives.mlm import evaluation_batches, perplexity
from pretrainer.registry import OBJECTIVES


@OBJECTIVES.register("clm")
class CausalLM(PretrainingObjective):
    batch_layout = "clm"
    extra_positions = 1  # the batch holds seq_len + 1 tokens: inputs and shifted targets

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if not getattr(backbone, "causal", False):
            return ("causal LM needs a model that cannot see the next token; a bidirectional encoder "
                    "would read its own target (use a decoder, model.name = \"gpt\")")
        if not hasattr(backbone, "lm_projection"):
            return "causal LM needs a model with its own LM head"
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """A decoder carries its own (tied) LM head, which generation needs too: no heads to add."""
        return PretrainingModel(backbone, {})

    @staticmethod
    def mean_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, int]:
        """input_ids (B, T+1): logits from [:, :-1] against targets [:, 1:] -> (mean loss, n targets)."""
        ids = batch["input_ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        mask = batch.get("attention_mask")
        if mask is not None:  # padded batches: no loss on pad targets
            mask = mask.bool()
            targets = targets.masked_fill(~mask[:, 1:], IGNORE_INDEX)
            mask = mask[:, :-1]
        features, weight, bias = model.lm_projection(model(inputs, mask))  # (B, T, C), (V, C), (V,)
        # Chunked: the (B*T, V) logits never exist at once (823 MB for GPT-2's vocab at 32 x 128).
        loss, _ = linear_cross_entropy(features.flatten(0, 1), weight, targets.flatten(), bias)
        n = targets.numel() if mask is None else int((targets != IGNORE_INDEX).sum())
        return loss, n

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        loss, _ = self.mean_loss(model, batch)
        # perplexity is derived from the (averaged) loss by whoever logs it
        return {"loss": loss, "n_tokens": batch["input_ids"][:, :-1].numel()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum, count = 0.0, 0
        for batch in evaluation_batches(model, batches):
            loss, n = self.mean_loss(model, batch)
            loss_sum += float(loss) * n
            count += n
        loss = loss_sum / max(count, 1)
        return {"loss": loss, "ppl": perplexity(loss)}
