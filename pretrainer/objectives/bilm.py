"""Bidirectional language modelling (ELMo): a forward LM and a backward LM over the same text.

The forward stack at position t has read tokens <= t and predicts token t + 1; the backward
stack has read tokens >= t and predicts token t - 1. Both project onto the shared (tied)
embedding table; the loss is the mean of the two directions' mean losses, and each direction's
perplexity is reported on held-out text. The batch is the causal LM's (seq_len + 1 tokens), read
once by each stack.
"""

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


@OBJECTIVES.register("bilm")
class BidirectionalLM(PretrainingObjective):
    batch_layout = "clm"
    extra_positions = 1  # seq_len + 1 tokens: every position but the first has a left neighbour, and so on

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if not hasattr(backbone, "directions") or getattr(backbone, "backward_stack", None) is None:
            return ("bidirectional LM needs a model with a forward and a backward stack (model.name = \"elmo\", "
                    "or \"lstm\" with model.bidirectional = true)")
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """No heads: both directions use the backbone's tied softmax. The scalar mix is for transfer
        and never read here, so it is frozen (DDP wants a gradient for every trainable tensor);
        a fine-tuning run rebuilds the backbone, trainable."""
        backbone.scalar_mix.requires_grad_(False)
        return PretrainingModel(backbone, {})

    @staticmethod
    def direction_losses(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        """input_ids (B, T+1) -> (forward mean loss, backward mean loss, targets per direction)."""
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        backbone = model.backbone
        fwd, bwd = backbone.directions(ids, mask)  # (B, T+1, E) each
        next_ids, prev_ids = ids[:, 1:], ids[:, :-1]
        if mask is not None:  # padded batches: no loss on pad targets, nor from pad positions
            real = mask.bool()
            pair = real[:, 1:] & real[:, :-1]
            next_ids = next_ids.masked_fill(~pair, IGNORE_INDEX)
            prev_ids = prev_ids.masked_fill(~pair, IGNORE_INDEX)
        losses = []
        for features, targets in ((fwd[:, :-1], next_ids), (bwd[:, 1:], prev_ids)):
            x, weight, bias = backbone.lm_projection(features)
            loss, _ = linear_cross_entropy(x.flatten(0, 1), weight, targets.flatten(), bias)
            losses.append(loss)
        n = next_ids.numel() if mask is None else int((next_ids != IGNORE_INDEX).sum())
        return losses[0], losses[1], n

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        forward, backward, _ = self.direction_losses(model, batch)
        return {"loss": (forward + backward) / 2, "loss_forward": forward.detach(), "loss_backward": backward.detach(),
                "n_tokens": batch["input_ids"][:, :-1].numel()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        sums, count = [0.0, 0.0], 0
        for batch in evaluation_batches(model, batches):
            forward, backward, n = self.direction_losses(model, batch)
            sums[0] += float(forward) * n
            sums[1] += float(backward) * n
            count += n
        forward, backward = (s / max(count, 1) for s in sums)
        loss = (forward + backward) / 2
        return {"loss": loss, "ppl": perplexity(loss), "ppl_forward": perplexity(forward),
                "ppl_backward": perplexity(backward)}
