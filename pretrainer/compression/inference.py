"""A run's model as a function of plain tensors: what `pretrainer predict` runs and what ONNX
export traces, so the fp32, pruned, int8 and ONNX forms of a model compute the same thing.

Kinds: "classifier" (SequenceClassifier: logits (B, L)), "tagger" (TokenClassifier: logits
(B, T, L)), "generator" (a causal LM: the next-token logits at the last position (B, V)),
"encoder" (any other backbone: hidden states (B, T, C) and the [CLS] pooler's output (B, C)).
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainer.models.heads import SequenceClassifier, TokenClassifier

KINDS = ("classifier", "tagger", "generator", "encoder")
OUTPUTS = {"classifier": ("logits",), "tagger": ("logits",), "generator": ("logits",), "encoder": ("hidden", "cls")}


def backbone_of(model: nn.Module) -> nn.Module:
    """The backbone inside a task head or a pre-training module (or the model itself)."""
    return getattr(model, "backbone", model)


def model_kind(model: nn.Module) -> str:
    if isinstance(model, SequenceClassifier):
        return "classifier"
    if isinstance(model, TokenClassifier):
        return "tagger"
    if getattr(backbone_of(model), "causal", False):
        return "generator"
    return "encoder"


class InferenceGraph(nn.Module):
    """`model` with tensors in (input_ids, attention_mask, token_type_ids[, case_ids]) and the
    kind's outputs (`OUTPUTS`) out, in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.kind = model_kind(model)
        self.case_features = self.kind == "tagger" and model.case_embeddings is not None
        self.input_names = ["input_ids", "attention_mask", "token_type_ids"] + ["case_ids"] * self.case_features
        self.output_names = list(OUTPUTS[self.kind])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                case_ids: torch.Tensor | None = None, chunk_doc: torch.Tensor | None = None):
        """`chunk_doc` (N,): the rows are chunks of long documents, pooled per document by a
        classifier (data/long_documents.py); not part of an exported ONNX graph."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if case_ids is not None:
            batch["case_ids"] = case_ids
        if chunk_doc is not None:
            batch["chunk_doc"] = chunk_doc
        if self.kind in ("classifier", "tagger"):
            return self.model(batch)
        backbone = backbone_of(self.model)
        if self.kind == "generator":
            hidden = backbone(input_ids, attention_mask)  # (B, T, C); one unpadded prompt per row
            return backbone.lm_logits(hidden[:, -1])  # (B, V)
        hidden = backbone(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        return hidden, backbone.pooled(hidden, attention_mask, "cls")
