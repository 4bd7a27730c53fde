"""Gradual unfreezing (ULMFiT, Howard & Ruder 2018): fine-tune from the top down.

At first only the top layer group trains (the task's new head, `layer_id` = n_layers + 1);
every `every` optimizer steps the next group down joins, until the embeddings (group 0) train
too. A freshly initialised head then cannot wreck the pre-trained layers with its first,
large gradients. Groups are the model's `layer_id` depths, so the rule works on any backbone.

Only parameters the transfer method left trainable take part: a frozen pooler or a `freeze`d
bottom stays frozen. The optimizer is built over all of them before the first step (a frozen
parameter gets no gradient, so AdamW leaves it, its moments and its weight decay alone), and
which groups train is a function of the step alone, so `--resume` continues exactly.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from pretrainer.errors import PretrainerError


class GradualUnfreezing:
    """Call with the number of optimizer steps taken before each step; `restore()` at the end."""

    def __init__(self, model: nn.Module, every: int, log: Callable[[str], None] = print):
        if every < 1:
            raise ValueError("unfreeze every >= 1 steps")
        if not hasattr(model, "layer_id"):
            raise PretrainerError(f"config key 'finetune.gradual_unfreezing': {type(model).__name__} has no "
                                  f"layer_id() to group its parameters by depth")
        self.every = every
        self.log = log
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.depth = {name: model.layer_id(name) for name, _ in self.params}
        self.groups = sorted(set(self.depth.values()), reverse=True)  # top first
        if len(self.groups) < 2:
            raise PretrainerError(f"config key 'finetune.gradual_unfreezing': the trainable parameters form "
                                  f"{len(self.groups)} layer group, so there is nothing to unfreeze gradually "
                                  f"(a backbone without layers, or a method that trains only the head)")
        self.lowest: int | None = None  # the lowest depth trainable now

    def lowest_trainable(self, step: int) -> int:
        """The lowest layer_id depth that trains at `step` (0-based optimizer steps taken)."""
        return self.groups[min(len(self.groups), 1 + step // self.every) - 1]

    def __call__(self, step: int) -> None:
        lowest = self.lowest_trainable(step)
        if lowest == self.lowest:
            return
        for name, p in self.params:
            p.requires_grad_(self.depth[name] >= lowest)
        self.lowest = lowest
        n = self.groups.index(lowest) + 1
        self.log(f"gradual unfreezing: step {step}, {n} of {len(self.groups)} layer groups train "
                 f"(layer_id >= {lowest})")

    def restore(self) -> None:
        """Every parameter the method left trainable trainable again."""
        for _, p in self.params:
            p.requires_grad_(True)
        self.lowest = None
