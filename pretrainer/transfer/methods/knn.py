"""knn: a frozen backbone's pooled features and a weighted k-nearest-neighbour vote; no training.

As in InstDisc (Wu et al., 2018) and DINO's evaluation (Caron et al., 2021): features are
L2-normalised, a query's k most cosine-similar labeled examples (finetune.knn_k) each vote
exp(similarity / finetune.knn_temperature) for their label, and the label with the most weight
wins. The features come from the probe's cache (transfer/methods/probe.py), so a curve's kNN
and probe share one encoder pass. knn_k above the number of labeled examples is a one-line
error (not clamped: a vote of every example is a different classifier than the one asked for).

The run's scores are in its results.json; it saves the classifier it was built on (backbone
and an unused head), which is no kNN, so `evaluate --finetuned` refuses it (`rescorable`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrainer.errors import PretrainerError
from pretrainer.evaluation.metrics import accuracy, macro_f1
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.methods.probe import Probe, pooled_features

def knn_votes(queries: torch.Tensor, keys: torch.Tensor, key_labels: torch.Tensor, n_labels: int, k: int,
              temperature: float, chunk: int = 1024) -> torch.Tensor:
    """queries (N, C), keys (M, C), key_labels (M,) -> (N, n_labels) summed vote weights, the k
    most cosine-similar keys each adding exp(similarity / temperature) to its label."""
    if k > keys.shape[0]:
        raise ValueError(f"k = {k} is more than the {keys.shape[0]} keys")
    keys = F.normalize(keys.float(), dim=1)
    out = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sims, idx = (q @ keys.T).topk(k, dim=1)  # (n, k)
        weights = (sims / temperature).exp()
        out.append(torch.zeros(q.shape[0], n_labels).scatter_add_(1, key_labels[idx], weights))
    return torch.cat(out) if out else torch.zeros(0, n_labels)


class Rows:
    """Some rows of an encoded split, batched as the split batches them."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)
        self.labels = [dataset.labels[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, indices) -> dict:
        return self.dataset.batch([self.indices[i] for i in indices])


@TRANSFER_METHODS.register("knn")
class KNearestNeighbours(Probe):
    tasks = ("classification", "image_classification")
    distills = False  # no loss is fitted
    rescorable = False  # the vote needs the labeled features, which the saved classifier lacks

    memory: tuple[torch.Tensor, torch.Tensor] | None = None  # the labeled examples' features, labels

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        return super().build(task, backbone, tokenizer, label_names, log).requires_grad_(False)  # nothing trains

    def check_splits(self, splits) -> None:
        k = self.ft.knn_k
        if k > len(splits.subset):
            raise PretrainerError(f"config key 'finetune.knn_k' = {k} is more than the {len(splits.subset)} labeled "
                                  f"examples; use at most {len(splits.subset)} or more labels")

    def fit(self, task, model, splits, run_dir, resume, log) -> dict:
        k, temperature = self.ft.knn_k, self.ft.knn_temperature
        start = time.perf_counter()
        # Only the labeled examples are neighbours: encode those alone (600 of MNIST's 60,000 at 1%),
        # uncached (the cache keys whole splits).
        labeled = Rows(splits.train, splits.subset)
        features = pooled_features(model, labeled, self.ft.pooling, self.ft.train.batch_size,
                                   chunk_pooling=model.chunk_pooling)
        self.memory = (features, torch.tensor(labeled.labels, dtype=torch.long))
        idx = splits.subset
        seconds = time.perf_counter() - start
        log(f"kNN: {len(idx)} labeled examples, k {k}, temperature {temperature:g}, features {seconds:.1f}s")
        return {"steps": 0, "knn_k": k, "knn_temperature": temperature, "feature_seconds": round(seconds, 1)}

    def score(self, task, model, dataset, label_names) -> dict:
        keys, key_labels = self.memory
        votes = knn_votes(self.features(model, dataset), keys, key_labels, len(label_names),
                          self.ft.knn_k, self.ft.knn_temperature)
        labels = torch.tensor(dataset.labels)
        preds = votes.argmax(dim=-1)
        share = votes / votes.sum(dim=-1, keepdim=True).clamp(min=1e-30)  # the vote as a distribution
        loss = F.nll_loss(share.clamp(min=1e-12).log(), labels)
        return {"loss": float(loss), "accuracy": accuracy(preds, labels),
                "macro_f1": macro_f1(preds, labels, len(label_names))}

    def rebuild(self, task, run_dir: Path, label_names: list[str], log) -> tuple[nn.Module, object]:
        raise PretrainerError(f"{run_dir}: a knn run is scored when it runs (results.json); it keeps no "
                              f"classifier that `evaluate --finetuned` could score again")
