"""ROUGE-1, ROUGE-2 and ROUGE-L F1 of generated texts against references, by Google's
`rouge-score` package (the reference implementation of the ROUGE paper's scores, as used by
the T5 and PEGASUS papers), so the numbers here compare with published ones.

Texts are lowercased and split on non-alphanumerics by the package's own tokenizer, with the
Porter stemmer on (as the papers report). Each pair gets its F1; the corpus score is their mean.
"""

from __future__ import annotations

from typing import Sequence

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_f1(predictions: Sequence[str], references: Sequence[str], stemmer: bool = True) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL"}: the mean F1 over the pairs, in [0, 1]."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise ValueError("ROUGE of no texts")
    from rouge_score import rouge_scorer  # a dependency read only when generated text is scored

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction), in that order
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: total / len(predictions) for name, total in totals.items()}
