"""Adversarial training in `fit`: several parameter sets, each with its own optimizer, stepped in turn.

An objective that declares `optimizer_groups` (a GAN: ("discriminator", "generator")) says which
parameters each group trains (`group_parameters(module) -> {group: [(name, param)]}`) and computes
one group's loss with `objective(module, batch, group=name)`. Each `fit` step then draws its
micro-batches once and, for each group in the declared order, clears every gradient (a generator
step also puts gradients into the discriminator, which its own step must not see) and takes that
group's optimizer step on them (`train_step`, unchanged). Objectives without groups never reach
this module.

`OptimizerSet` lets the rest of `fit` treat the group optimizers as one: the learning-rate
schedule walks `param_groups` (all groups, one schedule), and a checkpoint holds one optimizer
state in torch's format, the groups' states concatenated with their parameter indices shifted
and each param group tagged with its optimizer's name, so the checkpoint format is unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrainer.errors import PretrainerError
from pretrainer.io import unwrap
from pretrainer.training.optim import adamw


def is_adversarial(objective) -> bool:
    return bool(getattr(objective, "optimizer_groups", ()))


class OptimizerSet:
    """Named optimizers in stepping order, shown as one optimizer to the schedule and checkpoints."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        # The optimizers' own dicts: the schedule setting "lr" here sets it in them.
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for name, opt in self.optimizers.items():
            sd = opt.state_dict()
            for idx, s in sd["state"].items():
                state[idx + offset] = s
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]], "optimizer": name})
            offset += _n_params(opt)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        offset = 0
        for name, opt in self.optimizers.items():
            n = _n_params(opt)
            groups = [{k: v for k, v in g.items() if k != "optimizer"} for g in sd["param_groups"]
                      if g.get("optimizer") == name]
            if not groups:
                raise ValueError(f"the checkpoint holds no optimizer state for the {name!r} parameters")
            for g in groups:
                g["params"] = [i - offset for i in g["params"]]
            state = {idx - offset: s for idx, s in sd["state"].items() if offset <= idx < offset + n}
            opt.load_state_dict({"state": state, "param_groups": groups})
            offset += n


def _n_params(opt: torch.optim.Optimizer) -> int:
    return sum(len(g["params"]) for g in opt.param_groups)


def build_optimizer_set(model: nn.Module, objective, cfg, device: torch.device) -> OptimizerSet:
    """One AdamW per declared group, over the parameters the objective assigns it (matrices decayed,
    vectors not, as for one optimizer). Every trainable parameter must belong to exactly one group."""
    inner = unwrap(model)
    named = objective.group_parameters(inner)
    if list(named) != list(objective.optimizer_groups):
        raise PretrainerError(f"objective {objective.cfg.name!r}: group_parameters gave groups {list(named)}, "
                              f"not the declared {list(objective.optimizer_groups)}")
    seen: dict[int, str] = {}
    for group, params in named.items():
        for pname, p in params:
            if id(p) in seen:
                raise PretrainerError(f"objective {objective.cfg.name!r}: parameter {pname} is in both the "
                                      f"{seen[id(p)]!r} and {group!r} groups")
            seen[id(p)] = group
    missing = [n for n, p in inner.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise PretrainerError(f"objective {objective.cfg.name!r}: parameters in no optimizer group: "
                              f"{', '.join(missing[:5])}")
    optimizers = {}
    for group, params in named.items():
        trainable = [p for _, p in params if p.requires_grad]
        param_groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
        optimizers[group] = adamw([g for g in param_groups if g["params"]], cfg, device)
    return OptimizerSet(optimizers)


class _Replay:
    """The same micro-batches again for each group's step."""

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def adversarial_step(model: nn.Module, objective, batches, optimizers: OptimizerSet, accum: int, step_fn,
                     **kwargs) -> dict:
    """One `fit` step: `accum` micro-batches drawn once, then each group's `train_step` (`step_fn`)
    on them in the declared order. Metrics: each group's loss and gradient norm as
    `<group>_loss`, `<group>_grad_norm`, the objective's other metrics as they are, `loss` the sum
    of the groups' losses (what the non-finite check and the progress line read)."""
    drawn = [next(batches) for _ in range(accum)]
    merged: dict = {}
    nonfinite = None
    total = None
    for group, optimizer in optimizers.optimizers.items():
        model.zero_grad(set_to_none=True)  # the previous group's backward left gradients everywhere
        metrics = step_fn(model, lambda m, b, g=group: objective(m, b, group=g), iter(drawn), optimizer, accum,
                          **kwargs)
        for key, value in metrics.items():
            if key in ("loss", "grad_norm"):
                merged[f"{group}_{key}"] = value
            elif key == "n_tokens":
                merged.setdefault("n_tokens", value)
            elif key != "nonfinite":
                merged[key] = value
        nonfinite = metrics["nonfinite"] if nonfinite is None else nonfinite | metrics["nonfinite"]
        total = metrics["loss"] if total is None else total + metrics["loss"]
    merged["loss"] = total
    merged["grad_norm"] = torch.stack([merged[f"{g}_grad_norm"] for g in optimizers.optimizers]).max()
    merged["nonfinite"] = nonfinite
    return merged
