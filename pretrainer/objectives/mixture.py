"""Multi-task pre-training: a weighted mixture of objectives trained on one backbone in one run.

`objective.mixture = ["mlm", "mlm_sop"]`, `objective.weights = [1.0, 0.5]`: each sub-objective
is built from the same `[objective]` section (mask_rate etc. apply to each) and keeps its own
batch layout. Every step draws one batch per sub-objective, each from that sub-objective's own
loader, and runs each sub-objective on its batch:
    loss = sum_i weights[i] * loss_i
Metrics carry the sub-objective's name as a prefix (`mlm/loss`, `mlm/mlm_acc`, `mlm_sop/sop_acc`).

A weight of 0 leaves its sub-objective out altogether (no head, no loader, no forward pass):
kept with a zero weight, its head would get zero gradients yet still be moved by weight decay.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch
import torch.nn as nn

from pretrainer.config import ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.registry import OBJECTIVES

SEP = "/"  # between a sub-objective's name and its batch key or metric name


class ZipLoader:
    """One batch from each named loader per step, as one flat dict: `{"<name>/<key>": tensor}`.

    Flat keys keep the batch a plain `dict[str, Tensor]`, so the loop moves it to the device as
    any other. Its state is every sub-loader's, so a resumed run continues each exactly.
    """

    def __init__(self, loaders: dict):
        self.loaders = loaders
        self.tokens_per_batch = sum(getattr(loader, "tokens_per_batch", 0) for loader in loaders.values())

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return {f"{name}{SEP}{key}": value for name, loader in self.loaders.items()
                for key, value in next(loader).items()}

    def state_dict(self) -> dict:
        return {name: loader.state_dict() for name, loader in self.loaders.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.loaders) - set(state))
        if missing:
            raise PretrainerError(f"the checkpoint holds no data position for objective.mixture entries {missing}; "
                                  f"resume with the mixture the run was started with")
        for name, loader in self.loaders.items():
            loader.load_state_dict(state[name])


def split_batch(batch: dict) -> dict[str, dict]:
    """The flat batch of `ZipLoader` -> {sub-objective name: its own batch}."""
    parts: dict[str, dict] = {}
    for key, value in batch.items():
        name, _, inner = key.partition(SEP)
        parts.setdefault(name, {})[inner] = value
    return parts


def mixture_weights(cfg: ObjectiveConfig) -> list[float]:
    """`objective.weights`, or 1.0 per entry of `objective.mixture` when it is empty (the
    config's rules have checked them: ObjectiveConfig.check)."""
    return list(cfg.weights) if cfg.weights else [1.0] * len(cfg.mixture)


@OBJECTIVES.register("mixture")
class Mixture(PretrainingObjective):
    """Weighted sub-objectives on one backbone; see the module doc."""

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        weights = mixture_weights(cfg)
        self.subs: dict[str, PretrainingObjective] = {}
        self.weights: dict[str, float] = {}
        self.seed_offsets: dict[str, int] = {}
        for i, name in enumerate(cfg.mixture):
            cls = OBJECTIVES.get(name)
            if not issubclass(cls, PretrainingObjective):  # a registered objective of fine-tuning
                known = [n for n in OBJECTIVES.names() if issubclass(OBJECTIVES.get(n), PretrainingObjective)
                         and not issubclass(OBJECTIVES.get(n), Mixture)]
                raise PretrainerError(f"config key 'objective.mixture[{i}]' = {name!r} is not a pre-training "
                                      f"objective; choose from: {', '.join(known)}")
            if weights[i] == 0:
                continue  # left out: see the module doc
            self.subs[name] = cls(dataclasses.replace(cfg, name=name), data)
            self.weights[name] = weights[i]
            # Each loader draws from its own seed; the first entry's is the run's, so a
            # one-entry mixture reads the very batches its objective alone would.
            self.seed_offsets[name] = i
        self.extra_positions = max(sub.extra_positions for sub in self.subs.values())

    def layouts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(layout for sub in self.subs.values() for layout in sub.layouts()))

    def check_data(self, data) -> None:
        for sub in self.subs.values():
            sub.check_data(data)

    def train_batches(self, data, batch_size: int, seq_len: int, *, seed: int, rank: int = 0,
                      world_size: int = 1) -> ZipLoader:
        """One loader per sub-objective, `batch_size` sequences each per step."""
        return ZipLoader({name: sub.train_batches(data, batch_size, seq_len, seed=seed + self.seed_offsets[name],
                                                  rank=rank, world_size=world_size)
                          for name, sub in self.subs.items()})

    def eval_batches(self, data, batch_size: int, seq_len: int, max_batches: int = 0) -> dict[str, Iterable]:
        """{sub-objective name: its held-out batches}; sub-objectives' held-out sets differ in length."""
        return {name: sub.eval_batches(data, batch_size, seq_len, max_batches=max_batches)
                for name, sub in self.subs.items()}

    def check_backbone(self, backbone: nn.Module) -> str | None:
        for i, name in enumerate(self.cfg.mixture):
            refused = self.subs[name].check_backbone(backbone) if name in self.subs else None
            if refused:
                return f"objective.mixture[{i}] = {name!r}: {refused}"
        return None

    def set_progress(self, fraction: float) -> None:
        for sub in self.subs.values():
            sub.set_progress(fraction)

    def initialise(self, module: PretrainingModel, data) -> None:
        for sub in self.subs.values():  # a shared head is initialised alike by each
            sub.initialise(module, data)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """One module with the union of the sub-objectives' heads (a head two want, e.g. `mlm_head`,
        exists once and is shared). A backbone parameter stays trainable when any sub-objective
        leaves it so (the [CLS] pooler: MLM freezes it, a sentence-pair task trains it), each
        judged from the backbone as it came, so the order of `objective.mixture` does not matter."""
        as_given = {name: p.requires_grad for name, p in backbone.named_parameters()}
        trainable: set[str] = set()
        heads: dict[str, nn.Module] = {}
        for sub in self.subs.values():
            for name, p in backbone.named_parameters():
                p.requires_grad_(as_given[name])
            built = sub.build(backbone)
            trainable |= {name for name, p in backbone.named_parameters() if p.requires_grad}
            for head in built.head_names:
                heads.setdefault(head, getattr(built, head))
        for name, p in backbone.named_parameters():
            p.requires_grad_(name in trainable)
        return PretrainingModel(backbone, heads)

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        parts = split_batch(batch)
        loss = None
        out: dict = {"n_tokens": 0}
        for name, sub in self.subs.items():
            result = sub(model, parts[name])
            weighted = self.weights[name] * result["loss"]
            loss = weighted if loss is None else loss + weighted
            out["n_tokens"] += int(result.get("n_tokens", 0))
            out[f"{name}{SEP}loss"] = result["loss"].detach()
            out.update({f"{name}{SEP}{k}": v for k, v in result.items() if k not in ("loss", "n_tokens")})
        out["loss"] = loss
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: dict[str, Iterable]) -> dict:
        """`batches` as `eval_batches` gives them; each sub-objective's metrics under its prefix."""
        metrics = {}
        for name, sub in self.subs.items():
            metrics.update({f"{name}{SEP}{k}": v for k, v in sub.evaluate(model, batches[name]).items()})
        return metrics
