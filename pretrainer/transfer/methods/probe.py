"""probe: a frozen backbone's pooled features, then a logistic-regression head.

The features of every example are computed once and cached on disk, keyed by a hash
of the backbone's weights, the pooling and the token ids, so a probe over many label
fractions and seeds pays for the encoder forward pass once. The head is fitted with
L-BFGS on the full (standardised) feature matrix; its L2 strength is chosen on dev. The run
is saved as a plain SequenceClassifier with the standardisation folded into its head, so it
loads, evaluates and exports like any fine-tuned classifier.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pretrainer.config import Config
from pretrainer.data.labeled import iterate_once
from pretrainer.data.sources import cache_root
from pretrainer.evaluation.metrics import accuracy, macro_f1
from pretrainer.io import save_weights
from pretrainer.models.layers import pool_chunks
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.methods.base import TransferMethod

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # weight of 0.5 * ||W||^2 against the mean cross-entropy


@TRANSFER_METHODS.register("probe")
class Probe(TransferMethod):
    tasks = ("classification", "image_classification")
    distills = False  # a logistic regression on cached features, not a loss fitted by gradient

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        return super().build(task, backbone.requires_grad_(False), tokenizer, label_names, log)

    def fit(self, task, model, splits, run_dir, resume, log) -> dict:
        """Features of every split, then one logistic regression per L2 strength; the one best on
        dev is folded into `model.head`."""
        start = time.perf_counter()
        features = {name: self.features(model, data)
                    for name, data in (("train", splits.train), ("dev", splits.dev), ("test", splits.test))
                    if data is not None}
        feature_seconds = time.perf_counter() - start

        idx = torch.tensor(splits.subset, dtype=torch.long)
        x_train, y_train = features["train"][idx], torch.tensor(splits.train.labels)[idx]
        mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp(min=1e-6)
        n_labels = len(splits.label_names)

        def standardise(x):
            return (x - mean) / std

        select_on = "dev" if "dev" in features else None
        candidates = []
        for l2 in (L2_GRID if select_on else (1e-2,)):
            head = fit_logistic_regression(standardise(x_train), y_train, n_labels, l2, seed=self.cfg.run.seed)
            score = accuracy(_predict(head, standardise(features["dev"])), torch.tensor(splits.dev.labels)) \
                if select_on else 0.0
            candidates.append((score, -l2, head))  # ties go to the stronger regulariser
        score, neg_l2, head = max(candidates, key=lambda c: (c[0], c[1]))
        fold_standardisation(model.head, head, mean, std)
        log(f"linear probe: L2 {-neg_l2:g}{' (chosen on dev)' if select_on else ''}, "
            f"features {feature_seconds:.1f}s")
        return {"steps": 0, "l2": -neg_l2, "feature_seconds": round(feature_seconds, 1)}

    def score(self, task, model, dataset, label_names) -> dict:
        # From the cached features: the folded head on them is exactly what the saved model
        # computes, without another pass of the encoder.
        x = self.features(model, dataset)
        labels = torch.tensor(dataset.labels)
        with torch.no_grad():
            logits = model.head(x.to(model.head.weight)).float().cpu()
        preds = logits.argmax(dim=-1)
        return {"loss": float(F.cross_entropy(logits, labels)), "accuracy": accuracy(preds, labels),
                "macro_f1": macro_f1(preds, labels, len(label_names))}

    def features(self, model: nn.Module, dataset) -> torch.Tensor:
        # A chunked document's vector is its chunks' pooled the classifier's way, so the folded
        # head reads the same features the saved SequenceClassifier computes.
        return cached_features(model, dataset, self.ft.pooling, self.ft.train.batch_size,
                               feature_cache_dir(self.cfg), chunk_pooling=model.chunk_pooling)


@torch.no_grad()
def fold_standardisation(target: nn.Linear, head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Set `target` to head((x - mean) / std) as one linear map of x: weight W / std and bias
    b - (W / std) . mean, so no standardisation step is needed."""
    weight = head.weight.detach() / std
    target.weight.copy_(weight)
    target.bias.copy_(head.bias.detach() - weight @ mean)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_labels: int, l2: float,
                            seed: int = 0, max_iter: int = 200) -> nn.Linear:
    """Multinomial logistic regression, full batch, L-BFGS: deterministic and converges in seconds."""
    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], n_labels)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def _predict(head: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head(x).argmax(dim=-1)


def feature_cache_dir(cfg: Config) -> Path:
    return cache_root(cfg.data.cache_dir or None) / "features"


@torch.no_grad()
def pooled_features(model: nn.Module, dataset, pooling: str, batch_size: int,
                    chunk_pooling: str = "mean") -> torch.Tensor:
    """(N, C) pooled hidden states of every example, in order, the backbone in eval mode; a
    chunked document's chunks pooled into one row by `chunk_pooling`. `model` is a classifier
    (its `features` give what its head reads: text or images) or a bare text backbone."""
    backbone = getattr(model, "backbone", model)
    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    out = []
    try:
        for batch in iterate_once(dataset, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            if hasattr(model, "features"):
                pooled = model.features(batch)  # (B, C), chunks already pooled the classifier's way
            else:
                mask = batch["attention_mask"]
                hidden = backbone(batch["input_ids"], mask, batch["token_type_ids"])
                pooled = backbone.pooled(hidden, mask, pooling)  # (B or N chunks, C)
                if "chunk_doc" in batch:
                    pooled = pool_chunks(pooled, batch["chunk_doc"], chunk_pooling)  # (B, C)
            out.append(pooled.float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def cached_features(model: nn.Module, dataset, pooling: str, batch_size: int, cache_dir: Path,
                    chunk_pooling: str = "mean") -> torch.Tensor:
    """`pooled_features`, read from `cache_dir` when these weights have seen these inputs before
    (the key covers the backbone, not a classifier's fresh head)."""
    chunks = getattr(dataset, "chunk_lengths", None)
    key_pooling = f"{pooling}/{chunk_pooling}" if chunks else pooling
    path = cache_dir / f"{features_key(getattr(model, 'backbone', model), dataset, key_pooling)}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    features = pooled_features(model, dataset, pooling, batch_size, chunk_pooling)
    save_weights({"features": features}, path)  # atomic: a killed run never leaves half a file
    return features


def features_key(backbone: nn.Module, dataset, pooling: str) -> str:
    """A content hash: any change to the weights, pooling or token ids gives a new key."""
    h = hashlib.sha256()
    h.update(pooling.encode())
    h.update(json.dumps(getattr(backbone, "config", None).__dict__ if hasattr(backbone, "config") else {},
                        sort_keys=True, default=str).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    if hasattr(dataset, "content_key"):  # images: the pixels
        h.update(dataset.content_key())
    for ids, types in zip(getattr(dataset, "input_ids", ()), getattr(dataset, "token_type_ids", ())):
        h.update(bytes(str(ids), "ascii"))
        h.update(bytes(str(types), "ascii"))
    if getattr(dataset, "chunk_lengths", None):  # where one document's chunks end
        h.update(bytes(str(dataset.chunk_lengths), "ascii"))
    return h.hexdigest()[:32]
