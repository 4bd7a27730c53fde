"""FLOPs of one pre-training step (forward + backward) per config, counted by PyTorch's
FlopCounterMode on a real batch: a load-independent measure of what a step costs, used to give
each variant in a comparison the same compute (max_steps scaled to the baseline's FLOPs).

    python benchmarks/step_flops.py configs/bert-mini-imdb-recipe.toml configs/bert-mini-imdb-electra.toml ...

The first config is the baseline; prints each config's FLOPs per step and the steps that match
the baseline's `train.max_steps`.
"""

from __future__ import annotations

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from pretrainer.api import prepare
from pretrainer.config import load_config
from pretrainer.models import build_model
from pretrainer.registry import OBJECTIVES


def step_flops(path: str) -> tuple[float, int]:
    cfg = load_config(path)
    cfg = OBJECTIVES.get(cfg.objective.name).configure(cfg)
    data = prepare(cfg, log=lambda *_: None)
    objective = OBJECTIVES.get(cfg.objective.name)(cfg.objective, data.info)
    torch.manual_seed(0)
    model = objective.build(objective.initial_backbone(data) or build_model(cfg.model, data.info))
    objective.initialise(model, data)
    batch = next(iter(objective.train_batches(data, cfg.train.batch_size, cfg.train.seq_len, seed=0)))
    model.train()
    with FlopCounterMode(display=False) as counter:
        objective(model, batch)["loss"].backward()
    return float(counter.get_total_flops()), cfg.train.max_steps


def main(paths: list[str]) -> None:
    results = [(p, *step_flops(p)) for p in paths]
    base_flops, base_steps = results[0][1], results[0][2]
    print(f"{'config':<45} {'GFLOPs/step':>12} {'x baseline':>10} {'equal-compute steps':>20}")
    for path, flops, _ in results:
        print(f"{path:<45} {flops / 1e9:>12.1f} {flops / base_flops:>10.3f} {round(base_steps * base_flops / flops):>20,}")


if __name__ == "__main__":
    main(sys.argv[1:])
