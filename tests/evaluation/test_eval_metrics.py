import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretrainer.evaluation.metrics import (
    StreamingMean,
    accuracy,
    confusion_matrix,
    macro_f1,
    mean_std,
    per_class_f1,
)

# Class 2 is a label but never predicted; class 3 (num_labels=4) occurs nowhere.
LABELS = [0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("convert", [list, np.array, torch.tensor])
def test_accuracy_accepts_lists_arrays_tensors(convert):
    assert accuracy(convert(PREDS), convert(LABELS)) == pytest.approx(3 / 6)


def test_accuracy_argmaxes_scores():
    logits = torch.tensor([[2.0, 1.0], [0.1, 0.9], [0.3, 0.2]])
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)


def test_accuracy_rejects_length_mismatch_and_empty():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="no examples"):
        accuracy([], [])


def test_confusion_matrix_rows_are_true_labels():
    cm = confusion_matrix(PREDS, LABELS, num_labels=3)
    assert cm.tolist() == [[2, 0, 0], [1, 1, 0], [0, 2, 0]]
    with pytest.raises(ValueError, match="label 2 is outside 0..1"):
        confusion_matrix(PREDS, LABELS, num_labels=2)


def test_macro_f1_counts_never_predicted_class_as_zero():
    # class 0: tp=2 fp=1 fn=0 -> 4/5; class 1: tp=1 fp=2 fn=1 -> 2/5; class 2: 0.
    assert macro_f1(PREDS, LABELS, num_labels=3) == pytest.approx((0.8 + 0.4 + 0.0) / 3)
    f1 = per_class_f1(PREDS, LABELS, num_labels=4)
    assert f1[:3] == pytest.approx([0.8, 0.4, 0.0])
    assert math.isnan(f1[3])


def test_macro_f1_skips_classes_absent_from_labels_and_preds():
    # Same as scikit-learn's f1_score(average="macro") with labels=None.
    assert macro_f1(PREDS, LABELS, num_labels=4) == pytest.approx(0.4)


def test_macro_f1_includes_class_only_predicted():
    # class 0: 2/3; class 1: 1; class 2 (predicted, never a label): 0.
    assert macro_f1([0, 2, 1], [0, 0, 1], num_labels=3) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_macro_f1_matches_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    assert macro_f1(p, y, 6) == pytest.approx(metrics.f1_score(y, p, average="macro"))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_metrics_agree_with_confusion_matrix(pairs):
    preds, labels = zip(*pairs)
    cm = confusion_matrix(preds, labels, 4)
    assert cm.sum() == len(pairs)
    assert accuracy(preds, labels) == pytest.approx(np.trace(cm) / len(pairs))
    assert 0.0 <= macro_f1(preds, labels, 4) <= 1.0
    if list(preds) == list(labels):
        assert macro_f1(preds, labels, 4) == 1.0


def test_mean_std_uses_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std(torch.tensor([0.5, 0.7])) == pytest.approx((0.6, math.sqrt(0.02)))
    assert mean_std(np.array([1.0, 3.0])) == pytest.approx((2.0, math.sqrt(2.0)))


def test_mean_std_single_and_empty():
    assert mean_std([0.85]) == (0.85, 0.0)
    assert mean_std(v for v in [2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_streaming_mean_is_weighted():
    m = StreamingMean()
    assert math.isnan(m.mean)
    m.update(0.5, weight=10)
    m.update(torch.tensor(1.0), weight=torch.tensor(30))
    m.update(123.0, weight=0)
    assert m.mean == pytest.approx((0.5 * 10 + 30) / 40)
    restored = StreamingMean()
    restored.load_state_dict(m.state_dict())
    assert restored.mean == m.mean
    with pytest.raises(ValueError):
        m.update(1.0, weight=-1)
