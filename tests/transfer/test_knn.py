"""finetune.method = "knn": the weighted vote (transfer/methods/knn.py)."""

import pytest
import torch

from pretrainer.transfer.methods.knn import knn_votes


def separable(n_per_class: int, n_classes: int, dim: int = 16, seed: int = 0):
    """Points near one axis per class: each point's nearest neighbours by cosine are its own class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.eye(dim)[labels] * 5 + 0.3 * torch.randn(len(labels), dim, generator=g)
    return x, labels


def test_knn_is_exact_on_separable_features():
    keys, key_labels = separable(10, 4, seed=0)
    queries, labels = separable(25, 4, seed=1)
    votes = knn_votes(queries, keys, key_labels, 4, k=5, temperature=0.07, chunk=7)  # chunks split the queries
    assert votes.shape == (100, 4)
    assert torch.equal(votes.argmax(-1), labels)


def test_closer_neighbours_outvote_more_numerous_ones():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])  # one key of class 0, two of class 1
    key_labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])  # nearly on the class-0 key
    assert knn_votes(query, keys, key_labels, 2, k=3, temperature=0.07).argmax().item() == 0
    # with a hot temperature every neighbour counts about the same: the majority wins
    assert knn_votes(query, keys, key_labels, 2, k=3, temperature=100.0).argmax().item() == 1


def test_k_above_the_keys_is_refused():
    keys, key_labels = separable(2, 2)
    with pytest.raises(ValueError, match="k = 5 is more than the 4 keys"):
        knn_votes(keys, keys, key_labels, 2, k=5, temperature=0.07)
