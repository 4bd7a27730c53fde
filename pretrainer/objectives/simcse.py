"""Unsupervised SimCSE (Gao et al., 2021): a text and the same text are a positive pair.

Each text of the batch ("segments" layout: whole sentences of one document, data/segments.py)
goes through the encoder twice with dropout on; dropout is the only augmentation, so the
two views differ only by their dropout masks. Pooled (objective.pooling: [CLS] through an
MLP head that stays behind at transfer, or the mean over real tokens), L2-normalised, the
first views are queries and the second views keys; the loss is InfoNCE (cross-entropy over
cosine similarity / objective.temperature) with every other text's second view as a negative.
Under torchrun the keys of all ranks are gathered (gradients flow back to the rank that made
them, objectives/gather.py), so the negatives are the whole global batch, as in one process.

Held-out metrics (dropout on with a fixed seed, so numbers compare across evaluations):
- simcse_loss: InfoNCE within each held-out batch (train.batch_size texts);
- simcse_acc: how often a text's first view retrieves its own second view among the batch (top-1);
- alignment: mean squared distance between a text's two normalised views (lower is better);
- uniformity: log of the mean Gaussian potential exp(-2 |u - v|^2) between different texts, with
  dropout off (lower means more spread over the sphere; Wang & Isola, 2020).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.models.heads import freeze_pooler
from pretrainer.models.layers import SelfAttention, set_dropout
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.gather import gather_rows
from pretrainer.objectives.heads import PretrainingModel, SentenceMLP
from pretrainer.objectives.mlm import to_device
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 4321  # held-out dropout masks are the same at every evaluation


def info_nce(queries: torch.Tensor, keys: torch.Tensor, positives: torch.Tensor,
             temperature: float, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (n, C), keys (N, C), positives (n,): index of each query's key among `keys`.
    exclude (n,): a key each query leaves out of its softmax (itself, when the queries are
    among the keys: SimCLR's NT-Xent).
    -> (mean loss over the queries, hits (n,) bool: the query's most similar key is its own)."""
    q = F.normalize(queries.float(), dim=-1)
    k = F.normalize(keys.float(), dim=-1)
    logits = q @ k.T / temperature  # (n, N) cosine similarities / temperature
    if exclude is not None:
        logits = logits.scatter(1, exclude.unsqueeze(1), float("-inf"))
    loss = F.cross_entropy(logits, positives)
    return loss, logits.argmax(dim=-1) == positives


def has_dropout(backbone: nn.Module) -> bool:
    return any((isinstance(m, nn.Dropout) and m.p > 0) or (isinstance(m, SelfAttention) and m.attn_dropout > 0)
               for m in backbone.modules())


@OBJECTIVES.register("simcse")
class SimCSE(PretrainingObjective):
    batch_layout = "segments"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.temperature = cfg.temperature
        self.pooling = cfg.pooling

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if self.pooling == "cls_mlp" and getattr(backbone, "causal", False):
            return ("SimCSE with objective.pooling = \"cls_mlp\" reads the first token, which a causal decoder "
                    "computes from itself alone (use objective.pooling = \"mean\")")
        if not getattr(backbone, "contextual", True):
            return ("SimCSE's two views of a text differ only by the encoder's dropout; a bag of embeddings "
                    "has none, so both views are the same vector (train it with objective.name = \"word2vec\")")
        if getattr(backbone, "is_encoder_decoder", False):
            # Its decoder would get no gradient: SimCSE continues an encoder-decoder's encoder only
            # after it has been taken out (a classifier freezes the decoder; pre-training cannot).
            return ("SimCSE trains a sentence encoder; an encoder–decoder's decoder would learn nothing "
                    "(pre-train it with objective.name = \"span_corruption\")")
        return None

    def caution(self, backbone: nn.Module) -> str | None:
        if not has_dropout(backbone):
            return ("simcse with dropout 0 (model.dropout, or the run.init checkpoint's): a text's two views are "
                    "identical, so only the negatives teach; set objective.dropout = 0.1 as in the paper")
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        if self.cfg.dropout >= 0:
            set_dropout(backbone, self.cfg.dropout)
        freeze_pooler(backbone)  # the [CLS] MLP is the objective's own head, never the backbone's pooler
        heads = {"simcse_mlp": SentenceMLP(backbone)} if self.pooling == "cls_mlp" else {}
        return PretrainingModel(backbone, heads)

    def embed(self, model: nn.Module, batch: dict, views: int = 2) -> torch.Tensor:
        """(views * B, C): the batch's texts `views` times over in one forward pass (view-major),
        each row with its own dropout masks."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        ids, mask = ids.repeat(views, 1), mask.repeat(views, 1)  # (views * B, T)
        hidden = model(ids, mask)  # (views * B, T, C)
        if self.pooling == "cls_mlp":
            return model.simcse_mlp(hidden[:, 0])
        return model.pooled(hidden, mask, "mean")

    def loss_terms(self, model: nn.Module, batch: dict, gather: bool = True):
        """-> (loss, hits (B,), first views (B, C), second views (B, C))."""
        B = batch["input_ids"].shape[0]
        first, second = self.embed(model, batch).split(B)
        keys, offset = gather_rows(second) if gather else (second, 0)
        positives = torch.arange(B, device=first.device) + offset
        loss, hits = info_nce(first, keys, positives, self.temperature)
        return loss, hits, first, second

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        loss, hits, _, _ = self.loss_terms(model, batch)
        return {"loss": loss, "simcse_acc": hits.float().mean().detach(),
                "n_tokens": 2 * int(batch["attention_mask"].sum())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        was_training = model.training
        device = next(model.parameters()).device
        loss_sum = hits = align_sum = uniform_sum = 0.0
        count = pairs = 0
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(EVAL_SEED)  # the global RNG is restored afterwards: training draws stay as they were
                for batch in batches:
                    batch = to_device(batch, model)
                    n = batch["input_ids"].shape[0]
                    model.train()  # dropout on: the views
                    loss, hit, first, second = self.loss_terms(model, batch, gather=False)
                    loss_sum += float(loss) * n
                    hits += float(hit.sum())
                    align_sum += float((F.normalize(first.float(), dim=-1)
                                        - F.normalize(second.float(), dim=-1)).pow(2).sum(-1).sum())
                    count += n
                    if n > 1:
                        model.eval()  # dropout off: the texts themselves
                        z = F.normalize(self.embed(model, batch, views=1).float(), dim=-1)
                        distances = torch.pdist(z).pow(2)  # (n (n - 1) / 2,)
                        uniform_sum += float(torch.exp(-2 * distances).sum())
                        pairs += distances.numel()
        finally:
            model.train(was_training)
        count = max(count, 1)
        return {"simcse_loss": loss_sum / count, "simcse_acc": hits / count, "alignment": align_sum / count,
                "uniformity": math.log(uniform_sum / pairs) if pairs and uniform_sum > 0 else 0.0}
