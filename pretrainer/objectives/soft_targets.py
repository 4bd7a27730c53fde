"""Task-specific distillation's loss (Hinton et al. 2015): a fine-tuned teacher's soft labels at
temperature T, plus the gold labels,

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(gold)

where p_T = softmax(logits / T). T^2 keeps the soft term's gradient on the scale of the hard
one's as T grows. Wraps the task's own objective (classification, token classification),
whose `from_logits` gives the gold term: rows or tokens without a gold label (unlabeled text the
teacher labelled) count only in the KL term. The batch carries the teacher's logits
(`teacher_logits`, shaped like the student's) and, for tagging, `teacher_mask` (B, T): where
the teacher saw a word; transfer/distill.py puts them into the training data.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.errors import PretrainerError


def soft_target_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(t / T) || softmax(s / T)) summed over classes, averaged over rows (classification,
    (B, K)) or over the masked positions (tagging, (B, T, K) with mask (B, T))."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (B,) or (B, T)
    if mask is None:
        return kl.mean()
    w = mask.to(kl.dtype)
    return (kl * w).sum() / w.sum().clamp(min=1.0)


class SoftTargets:
    """`inner` (the task's objective) with the teacher's soft labels mixed in."""

    def __init__(self, inner, alpha: float, temperature: float):
        if not 0 <= alpha <= 1:
            raise PretrainerError(f"config key 'finetune.distill_alpha' must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise PretrainerError(f"config key 'finetune.distill_temperature' must be > 0, got {temperature}")
        self.inner, self.alpha, self.temperature = inner, alpha, temperature
        self.batch_layout = getattr(inner, "batch_layout", "")

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        if "teacher_logits" not in batch:
            raise RuntimeError("a distillation batch carries the teacher's logits (transfer/distill.py)")
        logits = model(batch)
        gold = self.inner.from_logits(model, logits, batch)
        kd = soft_target_kl(logits, batch["teacher_logits"], self.temperature, batch.get("teacher_mask"))
        loss = self.alpha * self.temperature ** 2 * kd + (1 - self.alpha) * gold["loss"]
        return {"loss": loss, "acc": gold["acc"], "ce_loss": gold["loss"].detach(), "kd_loss": kd.detach(),
                "n_tokens": batch["input_ids"].numel()}

    def evaluate(self, model: nn.Module, batches: Iterable[dict], **kwargs) -> dict:
        return self.inner.evaluate(model, batches, **kwargs)
