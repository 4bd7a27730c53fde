"""Entity-level precision, recall and F1 for IOB2 tag sequences (CoNLL scoring).

An entity counts as found only when its type and its exact span agree with a gold entity,
so a predicted span one word too short or too long is both a false positive and a false
negative. Spans are read the way conlleval (and seqeval's default mode) read them: an I-
tag that does not continue an entity of the same type starts a new entity, so `O I-PER`
and `B-LOC I-PER` both hold a PER entity of one word.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence


def split_tag(tag: str) -> tuple[str, str]:
    """("B" | "I" | "O", entity type); "O" has the type ""."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if prefix not in ("B", "I") or not sep or not kind:
        raise ValueError(f"{tag!r} is not an IOB2 tag (O, B-TYPE or I-TYPE)")
    return prefix, kind


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one sentence as (type, first word, end word exclusive), in order."""
    spans = []
    kind, start = "", -1  # the open entity, if start >= 0
    for i, tag in enumerate(tags):
        prefix, tag_kind = split_tag(tag)
        continues = prefix == "I" and start >= 0 and tag_kind == kind
        if start >= 0 and not continues:
            spans.append((kind, start, i))
            start = -1
        if prefix != "O" and not continues:
            kind, start = tag_kind, i
    if start >= 0:
        spans.append((kind, start, len(tags)))
    return spans


def _ratio(numerator: int, denominator: int) -> float:
    # No predictions (or no gold entities) scores 0, as conlleval and seqeval do.
    return numerator / denominator if denominator else 0.0


def _scores(tp: int, fp: int, fn: int) -> dict:
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro-averaged {"precision", "recall", "f1", "tp", "fp", "fn"} over sentences, plus
    "per_type": {type: the same keys} for every type seen in gold or predictions."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold sentences")
    tp, fp, fn = Counter(), Counter(), Counter()
    for n, (gold_tags, pred_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"sentence {n}: {len(pred_tags)} predicted tags for {len(gold_tags)} words")
        gold_spans, pred_spans = set(entity_spans(gold_tags)), set(entity_spans(pred_tags))
        for kind, _, _ in gold_spans & pred_spans:
            tp[kind] += 1
        for kind, _, _ in pred_spans - gold_spans:
            fp[kind] += 1
        for kind, _, _ in gold_spans - pred_spans:
            fn[kind] += 1
    result = _scores(sum(tp.values()), sum(fp.values()), sum(fn.values()))
    result["per_type"] = {kind: _scores(tp[kind], fp[kind], fn[kind]) for kind in sorted(tp | fp | fn)}
    return result
