"""Linear probe: a frozen backbone's pooled features, then a logistic-regression head.

The features of every example are computed once and cached on disk, keyed by a hash
of the backbone's weights, the pooling and the token ids, so a probe over many label
fractions and seeds pays for the encoder forward pass once. The head is fitted with
L-BFGS on the full (standardised) feature matrix; its L2 strength is chosen on dev.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pretrainer.config import Config, save_config

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)  # weight of 0.5 * ||W||^2 against the mean cross-entropy


def linear_probe(cfg: Config, backbone: nn.Module, tokenizer, splits, source: str, log=print) -> dict:
    """Fit and evaluate a probe; writes results.json and the model like `finetune`: a plain
    SequenceClassifier whose head has the feature standardisation folded in, so a probe run
    loads, evaluates and exports like any fine-tuned classifier."""
    from pretrainer.evaluation.metrics import accuracy, macro_f1
    from pretrainer.io import atomic_write_text
    from pretrainer.transfer.finetune import _save_transferable, run_directory

    ft = cfg.finetune
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.toml")
    start = time.perf_counter()
    cache = feature_cache_dir(cfg)
    features = {name: cached_features(backbone, data, ft.pooling, ft.train.batch_size, cache)
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
        head = fit_logistic_regression(standardise(x_train), y_train, n_labels, l2, seed=cfg.run.seed)
        score = accuracy(_predict(head, standardise(features["dev"])), torch.tensor(splits.dev.labels)) \
            if select_on else 0.0
        candidates.append((score, -l2, head))  # ties go to the stronger regulariser
    score, neg_l2, head = max(candidates, key=lambda c: (c[0], c[1]))
    seconds = time.perf_counter() - start
    log(f"linear probe on {source}: {len(splits.subset):,} labeled examples, L2 {-neg_l2:g}"
        f"{' (chosen on dev)' if select_on else ''}, features {feature_seconds:.1f}s")

    trainable = sum(p.numel() for p in head.parameters())
    results = {"init": source, "method": "probe", "label_fraction": ft.label_fraction,
               "n_labels": len(splits.subset), "seed": cfg.run.seed, "labels": splits.label_names,
               "steps": 0, "l2": -neg_l2, "trainable_params": trainable,
               "total_params": trainable + sum(p.numel() for p in backbone.parameters()),
               "train_seconds": round(seconds, 1), "feature_seconds": round(feature_seconds, 1)}
    for split in ("dev", "test"):
        if split in features:
            labels = torch.tensor(getattr(splits, split).labels)
            preds = _predict(head, standardise(features[split]))
            results[split] = {"accuracy": accuracy(preds, labels), "macro_f1": macro_f1(preds, labels, n_labels)}
            log(f"{split}: accuracy {results[split]['accuracy']:.4f}, macro-F1 {results[split]['macro_f1']:.4f}")
    _save_transferable(classifier_with_probe(backbone, head, mean, std, ft.pooling), run_dir)
    tokenizer.save(run_dir)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    return results


def classifier_with_probe(backbone: nn.Module, head: nn.Linear, mean: torch.Tensor, std: torch.Tensor,
                          pooling: str) -> nn.Module:
    """The probe as a SequenceClassifier: head((x - mean) / std) is one linear map of x, with
    weight W / std and bias b - (W / std) . mean, so no standardisation step is needed."""
    from pretrainer.models.heads import SequenceClassifier

    model = SequenceClassifier(backbone, head.out_features, pooling=pooling)
    weight = head.weight.detach() / std
    with torch.no_grad():
        model.head.weight.copy_(weight)
        model.head.bias.copy_(head.bias.detach() - weight @ mean)
    return model.eval()


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
    from pretrainer.data.sources import cache_root

    return cache_root(cfg.data.cache_dir or None) / "features"


@torch.no_grad()
def pooled_features(backbone: nn.Module, dataset, pooling: str, batch_size: int) -> torch.Tensor:
    """(N, C) pooled hidden states of every example, in order, the backbone in eval mode."""
    from pretrainer.data.labeled import iterate_once

    was_training = backbone.training
    backbone.eval()
    device = next(backbone.parameters()).device
    out = []
    try:
        for batch in iterate_once(dataset, batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            mask = batch["attention_mask"]
            hidden = backbone(batch["input_ids"], mask, batch["token_type_ids"])
            out.append(backbone.pooled(hidden, mask, pooling).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)


def cached_features(backbone: nn.Module, dataset, pooling: str, batch_size: int, cache_dir: Path) -> torch.Tensor:
    """`pooled_features`, read from `cache_dir` when these weights have seen these ids before."""
    from safetensors.torch import load_file

    from pretrainer.io import save_weights

    path = cache_dir / f"{features_key(backbone, dataset, pooling)}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    features = pooled_features(backbone, dataset, pooling, batch_size)
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
    for ids, types in zip(dataset.input_ids, dataset.token_type_ids):
        h.update(bytes(str(ids), "ascii"))
        h.update(bytes(str(types), "ascii"))
    return h.hexdigest()[:32]
