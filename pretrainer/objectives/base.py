"""What a pre-training objective is to the rest of pretrainer.

An objective is built from its config and the data's description
(`OBJECTIVES.get(name)(cfg.objective, data_info)`), and then:
- names the batches it needs (`batch_layout`, plus `layout_options` such as whole-word
  starts), which the data module builds; `check_data`, `train_batches` and `eval_batches`
  ask the data module for them (a mixture of objectives overrides these to ask once per
  sub-objective);
- builds what is trained around a backbone (`build(backbone)` -> backbone + its heads);
- computes `objective(module, batch) -> {"loss", <metrics>, "n_tokens"}` on that module;
- evaluates it on held-out batches without keeping logits (`evaluate(module, batches)`).
A new objective is a subclass in its own file, registered with `@OBJECTIVES.register(name)`.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn as nn

from pretrainer.config import Config, ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.models import model_modality
from pretrainer.objectives.heads import PretrainingModel


def image_backbone_refusal(backbone: nn.Module, what: str, advice: str) -> str | None:
    """The refusal of an image objective given a text backbone (None for an image one): `what` says
    what the objective does with images, `advice` which model to name instead."""
    if model_modality(backbone) == "image":
        return None
    return f"{what}; model {backbone.config.name!r} reads token ids ({advice})"


class PretrainingObjective:
    batch_layout: str = ""  # a layout the data module builds (data/loader.py LAYOUTS for text)
    modality = "text"  # what its batches hold ("text" or "image"): which data modules and models fit it
    extra_positions = 0  # positions a sequence needs beyond train.seq_len
    # What may train it (objective.engine; registry.ENGINES): the first is what "auto" means.
    engines: tuple[str, ...] = ("fit",)

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        self.cfg = cfg
        self.layout_options: dict[str, Any] = {}

    @property
    def engine(self) -> str:
        """The training engine (registry.ENGINES) this run uses: objective.engine, "auto" = the first."""
        engine = getattr(self.cfg, "engine", "auto")
        return self.engines[0] if engine == "auto" else engine

    def layouts(self) -> tuple[str, ...]:
        """Every batch layout this objective asks the data module for (a mixture: its sub-objectives')."""
        return (self.batch_layout,)

    def check_data(self, data) -> None:
        """Stop with a one-line error when the data module cannot build this objective's batches."""
        data.check_layout(self.batch_layout, self.cfg.name)

    def train_batches(self, data, batch_size: int, seq_len: int, *, seed: int, rank: int = 0,
                      world_size: int = 1):
        """Infinite, resumable (state_dict / load_state_dict) training batches from `data`."""
        return data.train_batches(self.batch_layout, batch_size, seq_len, seed=seed, rank=rank,
                                  world_size=world_size, **self.layout_options)

    def eval_batches(self, data, batch_size: int, seq_len: int, max_batches: int = 0):
        """Held-out batches from `data`, the same every time; what `evaluate` takes."""
        return data.eval_batches(self.batch_layout, batch_size, seq_len, max_batches=max_batches,
                                 **self.layout_options)

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        """The config the data is prepared with, before this objective exists (distill: reading
        text with the teacher's tokenizer); `cfg` itself is left alone."""
        return cfg

    def initial_backbone(self, data) -> nn.Module | None:
        """A backbone this objective starts from instead of building [model] (distill: blocks
        taken from its teacher), or None."""
        return None

    def save(self, run_dir) -> None:
        """What the run records about this objective beside config.toml (distill: the teacher's
        identity; never its weights)."""

    def check_backbone(self, backbone: nn.Module) -> str | None:
        """Why this objective cannot train `backbone`, or None when it can."""
        return None

    def caution(self, backbone: nn.Module) -> str | None:
        """A one-line warning about training `backbone` this way that does not stop the run
        (simcse: dropout 0 makes its two views identical), or None."""
        return None

    def set_progress(self, fraction: float) -> None:
        """Told by `fit` before each step how much of training is done, in [0, 1] (for schedules
        an objective runs itself, e.g. a decreasing mask rate)."""

    def initialise(self, module: PretrainingModel, data) -> None:
        """Initialise fresh heads from the prepared data module (called once, before training
        from scratch; never on resume or on heads a checkpoint brought)."""

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """The module `fit` trains and checkpoints: the backbone and this objective's heads."""
        return PretrainingModel(backbone, {})

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        raise NotImplementedError
