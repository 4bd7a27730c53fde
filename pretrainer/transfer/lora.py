"""LoRA as a model transform: `apply_lora` in, train, `merge_lora` out.

Each targeted nn.Linear becomes y = W x + b + (alpha / rank) B A x with W and b frozen and
only A (rank, in) and B (out, rank) trained. B starts at zero, so the adapted model computes
exactly what the pre-trained one did until the first optimizer step.

While adapted, the state dict holds `...attn.qkv.base.weight` plus `...attn.qkv.lora_a/lora_b`.
`merge_lora` folds B A into W and puts plain nn.Linear layers back, so the exported model has
the original parameter names and no adapter code.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import LoraConfig
from pretrainer.errors import PretrainerError
from pretrainer.transfer.partial import count_parameters


class LoraLinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update of the same shape."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base
        self.rank = rank
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        # A gets nn.Linear's own default init; B = 0 makes the update start at exactly zero.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    # Code that inspects a layer's shape or weights (init loops, exporters) sees the base layer's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., rank) -> (..., out): never materialises the (out, in) product B A
        update = F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)
        return self.base(x) + self.scale * update

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear computing the same function (W + scale B A); this layer is unchanged."""
        w = self.base.weight
        linear = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features,
                                    bias=self.base.bias is not None, device=w.device, dtype=w.dtype)
        # Sum in at least float32 so a bf16/fp16 model rounds once, not at every step of the product.
        acc = torch.promote_types(w.dtype, torch.float32)
        delta = self.lora_b.to(acc) @ self.lora_a.to(acc)  # (out, in)
        linear.weight.copy_(w.to(acc) + self.scale * delta)
        # The merged layer keeps the base layer's trainability: merging ends adaptation, so the
        # rest of the model's frozen/trainable split is what it was before apply_lora.
        linear.weight.requires_grad_(w.requires_grad)
        if self.base.bias is not None:
            linear.bias.copy_(self.base.bias)
            linear.bias.requires_grad_(self.base.bias.requires_grad)
        return linear.train(self.training)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}"


def _matches(name: str, targets: Sequence[str]) -> bool:
    """`blocks.0.attn.qkv` matches "attn.qkv" and "qkv", not "kv": suffixes on a `.` boundary."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)  # same key in parent._modules, so state-dict order is kept


def _target_hint(model: nn.Module, limit: int = 8) -> str:
    """A few valid `targets` values: the last two name parts of the model's Linear layers."""
    seen: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            suffix = ".".join(name.split(".")[-2:])
            if suffix not in seen:
                seen.append(suffix)
    more = ", ..." if len(seen) > limit else ""
    return ", ".join(seen[:limit]) + more if seen else "(the model has no nn.Linear layers)"


def apply_lora(model: nn.Module, cfg: LoraConfig, trainable: Sequence[str] = ()) -> nn.Module:
    """Freeze `model`, wrap the Linear layers named by `cfg.targets` in LoraLinear (in place).

    Parameters whose names start with a prefix in `trainable` (e.g. ("head.",) for a
    classifier's fresh head) stay trainable; so do the new lora_a/lora_b. Returns `model`.
    """
    if any(isinstance(m, LoraLinear) for m in model.modules()):
        raise ValueError("model already has LoRA adapters; merge_lora it before applying again")
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and _matches(name, cfg.targets)]
    if not names:
        raise PretrainerError(f"config key 'finetune.lora.targets' = {list(cfg.targets)} matches no linear "
                              f"layer; this model's linear layers end in: {_target_hint(model)}")
    model.requires_grad_(False)
    for name in names:  # freeze first: the new lora_a/lora_b are created trainable
        _set_submodule(model, name, LoraLinear(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout))
    prefixes = tuple(trainable)
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoraLinear with its merged nn.Linear (in place); returns `model`."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name in names:
        _set_submodule(model, name, model.get_submodule(name).merged())
    return model


def describe_trainable(model: nn.Module, label: str = "LoRA") -> str:
    """One log line, e.g. "LoRA: 73,728 trainable of 11,244,800 parameters (0.66%)"."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / total if total else 0.0
    return f"{label}: {trainable:,} trainable of {total:,} parameters ({share:.2f}%)"
