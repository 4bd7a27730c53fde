"""BERT's original pre-training: masked LM plus next-sentence prediction on the [CLS] vector."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.objectives.heads import PretrainingModel, mlm_head_for, pair_head_for
from pretrainer.objectives.mlm import MaskedLM, perplexity, seeded_evaluation_batches
from pretrainer.registry import OBJECTIVES


@OBJECTIVES.register("mlm_nsp")
class MaskedLMWithNSP(MaskedLM):
    """loss = MLM loss + nsp_weight * NSP cross-entropy; both heads share one encoder pass.

    A sentence-pair task on the pooled [CLS] vector; a variant (sentence order, objectives/sop.py)
    changes the layout, the head's name, the label and the metric names.
    """

    batch_layout = "mlm_nsp"
    pair_head = "nsp_head"  # the sentence-pair head's name (and its Hugging Face mapping)
    pair_label = "next_sentence_label"  # the batch's (B,) target: 0 = B follows A, 1 = random B
    pair_metric = "nsp"  # metrics are nsp_loss, nsp_acc

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if not hasattr(backbone, "pooler"):
            return "a sentence-pair head reads the [CLS] pooler, which this model has not"
        return super().check_backbone(backbone)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        heads = {"mlm_head": mlm_head_for(backbone), self.pair_head: pair_head_for(backbone)}
        backbone.pooler.requires_grad_(True)  # the pair head reads the pooled [CLS] vector
        return PretrainingModel(backbone, heads)

    def terms(self, model: nn.Module, batch: dict, generator: torch.Generator | None = None):
        hidden, labels = self.encode(model, batch, generator)
        mlm_loss, mlm_correct, n = self.masked_lm_terms(model, hidden, labels)
        pooled = model.pooled(hidden, batch.get("attention_mask"), "cls")  # (B, C)
        nsp_logits = getattr(model, self.pair_head)(pooled)  # (B, 2)
        target = batch[self.pair_label]
        nsp_loss = F.cross_entropy(nsp_logits.float(), target)
        nsp_correct = (nsp_logits.argmax(dim=-1) == target).sum()
        return mlm_loss, mlm_correct, n, nsp_loss, nsp_correct

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        mlm_loss, mlm_correct, n, nsp_loss, nsp_correct = self.terms(model, batch)
        pair = self.pair_metric
        return {"loss": mlm_loss + self.cfg.nsp_weight * nsp_loss,
                "mlm_loss": mlm_loss.detach(), f"{pair}_loss": nsp_loss.detach(),
                "mlm_acc": (mlm_correct.float() / max(n, 1)).detach(),
                f"{pair}_acc": (nsp_correct.float() / len(batch[self.pair_label])).detach(),
                "n_tokens": batch["input_ids"].numel()}

    def _evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        mlm_sum = mlm_correct = nsp_sum = nsp_correct = 0.0
        n_masked = n_pairs = 0
        for batch, generator in seeded_evaluation_batches(model, batches):
            mlm_loss, m_correct, n, nsp_loss, s_correct = self.terms(model, batch, generator)
            pairs = len(batch[self.pair_label])
            mlm_sum += float(mlm_loss) * n
            mlm_correct += float(m_correct)
            n_masked += n
            nsp_sum += float(nsp_loss) * pairs
            nsp_correct += float(s_correct)
            n_pairs += pairs
        mlm = mlm_sum / max(n_masked, 1)
        return {"mlm_loss": mlm, "mlm_acc": mlm_correct / max(n_masked, 1), "mlm_ppl": perplexity(mlm),
                f"{self.pair_metric}_loss": nsp_sum / max(n_pairs, 1),
                f"{self.pair_metric}_acc": nsp_correct / max(n_pairs, 1)}
