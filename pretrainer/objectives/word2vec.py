"""Word vectors: word2vec's skip-gram with negative sampling, on the tokenizer's pieces.

The backbone is a bag of embeddings without a projection (models/boe.py): its table holds each
piece's vector as a center word; the `context_embeddings` head holds its vector as a context
(and noise) word. For a pair (center c, context o) with noise pieces n_1..n_k drawn from the
unigram distribution raised to `ns_exponent`, the loss is

    -log sigmoid(u_o . v_c) - sum_j log sigmoid(-u_nj . v_c)

averaged over pairs. Pairs are word2vec's: frequent pieces are first dropped at random
(`subsample`), the rest close ranks, and each center takes the contexts within a reach drawn
from 1..window on both sides, never across a document border (the separator).

Two engines train it (objective.engine): gensim (training/gensim_word2vec.py: word2vec's own C
code, SGD per pair) or `fit` with the loss below. For `fit` the pairs of a row of T pieces are
scored as one (T, T) matrix product masked to the window, and the noise pieces are drawn per
row: K = T of them, each center scored against all, weighted k / K. The expected loss is
word2vec's (k noise terms per pair); only the variance differs.

The held-out metric `sgns_loss` is that loss on held-out text without subsampling, every pair
within `window`, and noise drawn from a fixed seed: the same number for either engine's vectors.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import ContextEmbeddings, PretrainingModel
from pretrainer.objectives.mlm import evaluation_batches
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 4321  # held-out noise pieces are the same every evaluation


def noise_distribution(counts: torch.Tensor, special_ids: list[int], exponent: float) -> torch.Tensor:
    """(V,) float probabilities of drawing each piece as noise: counts ** exponent, never a
    special token; uniform over the other pieces when nothing was counted."""
    weights = counts.double().clamp_min(0) ** exponent
    weights[special_ids] = 0
    if weights.sum() <= 0:
        weights = torch.ones_like(weights)
        weights[special_ids] = 0
    return (weights / weights.sum()).float()


def keep_probability(counts: torch.Tensor, special_ids: list[int], threshold: float) -> torch.Tensor:
    """(V,) probability that subsampling keeps a piece: word2vec's (sqrt(f / t) + 1) * t / f with f
    the piece's share of the corpus, capped at 1; 0 for special tokens, 1 with threshold 0."""
    counts = counts.double()
    total = counts.sum()
    keep = torch.ones_like(counts)
    if threshold > 0 and total > 0:
        scaled = counts / (threshold * total)  # f / t
        keep = torch.where(counts > 0, (scaled.sqrt() + 1) / scaled.clamp_min(1e-30), keep).clamp(max=1.0)
    keep[special_ids] = 0
    return keep.float()


def compact(ids: torch.Tensor, keep: torch.Tensor, is_special: torch.Tensor):
    """Drop the pieces `keep` rejects and close the gaps, as word2vec does before it windows.

    ids, keep, is_special (B, T) -> (ids (B, T), document (B, T), valid (B, T)): the kept pieces
    first in their order, then the dropped ones (valid False); `document` numbers the documents of
    a row (it grows at each separator), so pairs never cross one."""
    document = is_special.long().cumsum(dim=1)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept first, order kept
    return ids.gather(1, order), document.gather(1, order), keep.gather(1, order)


def pair_mask(valid: torch.Tensor, document: torch.Tensor, reach: torch.Tensor) -> torch.Tensor:
    """(B, T) each -> (B, T, T) bool: [b, i, j] is a (center i, context j) pair: both valid, in one
    document, 0 < |i - j| <= reach[b, i]."""
    positions = torch.arange(valid.shape[1], device=valid.device)
    distance = (positions[None, :] - positions[:, None]).abs()  # (T, T)
    return (valid[:, :, None] & valid[:, None, :] & (document[:, :, None] == document[:, None, :])
            & (distance > 0) & (distance <= reach[:, :, None]))


def sgns_loss(centers: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor, pairs: torch.Tensor,
              negatives: int) -> tuple[torch.Tensor, int]:
    """The skip-gram negative-sampling loss, mean over pairs, and the number of pairs.

    centers (B, T, C): the center vectors v of a row's pieces; contexts (B, T, C): their context
    vectors u; noise (B, K, C): the context vectors of K noise pieces per row; pairs (B, T, T)
    from `pair_mask`. Each pair's loss is softplus(-u_o . v_c) plus, for its center,
    (negatives / K) * sum over the row's K noise pieces of softplus(u_n . v_c): with K draws the
    expectation of k draws' sum."""
    n_pairs = int(pairs.sum())
    if n_pairs == 0:  # nothing to learn from (a row of separators): a zero that backprops
        return (centers.sum() + contexts.sum() + noise.sum()) * 0.0, 0
    scores = torch.bmm(centers, contexts.transpose(1, 2))  # (B, T, T): center i . context j
    positive = F.softplus(-scores).masked_fill(~pairs, 0.0).sum()
    noise_scores = torch.bmm(centers, noise.transpose(1, 2))  # (B, T, K)
    per_center = F.softplus(noise_scores).sum(dim=2) * (negatives / noise.shape[1])  # (B, T)
    contexts_per_center = pairs.sum(dim=2).to(per_center.dtype)  # (B, T): each pair pays its center's noise term
    return (positive + (per_center * contexts_per_center).sum()) / n_pairs, n_pairs


@OBJECTIVES.register("word2vec")
class Word2Vec(PretrainingObjective):
    batch_layout = "packed"
    # gensim first: at equal held-out loss it is the faster (benchmarks/README.md, 2026-12-03).
    engines = ("gensim", "fit")

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.special_ids = list(getattr(data, "special_ids", None) or [])

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if getattr(backbone, "word_vector_table", None) is None:
            return ("word2vec trains a table of word vectors and nothing above it: use model.name = \"boe\" "
                    "with model.hidden = 0 (model.init_embeddings then starts a Transformer from it)")
        return None

    def build(self, backbone: nn.Module) -> PretrainingModel:
        return PretrainingModel(backbone, {"context_embeddings": ContextEmbeddings(backbone)})

    def initialise(self, module: PretrainingModel, data) -> None:
        """The corpus' piece counts into the context head (noise and subsampling come from them)."""
        with torch.no_grad():
            module.context_embeddings.token_counts.copy_(torch.as_tensor(data.token_counts()))

    def _tables(self, module: nn.Module) -> tuple[nn.Embedding, ContextEmbeddings]:
        return module.backbone.word_vector_table, module.context_embeddings

    def loss_terms(self, module: nn.Module, ids: torch.Tensor, keep: torch.Tensor, reach: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
        """ids (B, T), keep (B, T) bool (subsampling's draw), reach (B, T) -> (mean loss, pairs)."""
        table, context = self._tables(module)
        special = torch.zeros(table.num_embeddings, dtype=torch.bool, device=ids.device)
        special[self.special_ids] = True
        ids, document, valid = compact(ids, keep & ~special[ids], special[ids])
        pairs = pair_mask(valid, document, reach)
        noise_p = noise_distribution(context.token_counts, self.special_ids, self.cfg.ns_exponent)
        B, T = ids.shape
        # K = T noise pieces per row: the noise product then costs what the pairs' product does.
        noise_ids = torch.multinomial(noise_p.to(ids.device), B * T, replacement=True,
                                      generator=generator).view(B, T)
        return sgns_loss(table(ids), F.embedding(ids, context.weight), F.embedding(noise_ids, context.weight),
                         pairs, self.cfg.negatives)

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        ids = batch["input_ids"]  # (B, T)
        keep_p = keep_probability(model.context_embeddings.token_counts, self.special_ids,
                                  self.cfg.subsample).to(ids.device)
        keep = torch.rand(ids.shape, device=ids.device) < keep_p[ids]
        reach = torch.randint(1, self.cfg.window + 1, ids.shape, device=ids.device)
        loss, n_pairs = self.loss_terms(model, ids, keep, reach)
        return {"loss": loss, "pairs": float(n_pairs), "n_tokens": ids.numel()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum, count = 0.0, 0
        generator = None
        for batch in evaluation_batches(model, batches):
            ids = batch["input_ids"]
            if generator is None:
                generator = torch.Generator(ids.device).manual_seed(EVAL_SEED)
            keep = torch.ones_like(ids, dtype=torch.bool)
            reach = torch.full_like(ids, self.cfg.window)
            loss, n = self.loss_terms(model, ids, keep, reach, generator)
            loss_sum += float(loss) * n
            count += n
        return {"sgns_loss": loss_sum / max(count, 1)}
