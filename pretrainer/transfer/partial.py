"""Partial fine-tuning: which parameters train, and at what rate.

Both rules read a model's `layer_id(name)`: 0 for the embeddings, i + 1 for block i, and
the top (n_layers + 1) for everything above the backbone (heads).
"""

from __future__ import annotations

from torch import nn

from pretrainer.errors import PretrainerError


def freeze_bottom_layers(model: nn.Module, n_layers: int) -> int:
    """Freeze the embeddings and the bottom `n_layers` blocks; returns how many tensors froze.

    The lower layers of a pre-trained encoder hold general features; freezing them keeps
    those intact on small label sets and saves their backward pass.
    """
    top = _top_layer(model)
    if not 0 <= n_layers < top - 1:
        raise PretrainerError(f"config key 'finetune.freeze_layers' = {n_layers}: the model has "
                              f"{top - 1} layers; freeze between 0 and {top - 2} of them")
    frozen = 0
    for name, p in model.named_parameters():
        if model.layer_id(name) <= n_layers:
            p.requires_grad_(False)
            frozen += 1
    return frozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total); `parameters()` yields a tied tensor once, so it is counted once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def default_freeze_layers(model: nn.Module) -> int:
    """Half the blocks (rounded down), the usual starting point."""
    return (_top_layer(model) - 1) // 2


def check_layer_decay(decay: float) -> None:
    if not 0 < decay <= 1:
        raise PretrainerError(f"config key 'finetune.layer_decay' must be in (0, 1], got {decay}")


def _top_layer(model: nn.Module) -> int:
    if not hasattr(model, "layer_id"):
        raise PretrainerError(f"{type(model).__name__} has no layer_id(): partial fine-tuning needs one")
    return max(model.layer_id(name) for name, _ in model.named_parameters())
