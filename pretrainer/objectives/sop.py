"""ALBERT's sentence-order prediction with masked LM: given two consecutive spans of one
document, in order or swapped, say which. Unlike next-sentence prediction, a topic change
cannot give the answer away: both spans always come from the same document."""

from __future__ import annotations

from pretrainer.objectives.nsp import MaskedLMWithNSP
from pretrainer.registry import OBJECTIVES


@OBJECTIVES.register("mlm_sop")
class MaskedLMWithSOP(MaskedLMWithNSP):
    """loss = MLM loss + nsp_weight * sentence-order cross-entropy, on the pooled [CLS] vector."""

    batch_layout = "mlm_sop"
    pair_head = "sop_head"
    pair_label = "sentence_order_label"  # 0 = in order, 1 = swapped
    pair_metric = "sop"
