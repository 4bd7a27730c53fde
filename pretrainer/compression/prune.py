"""Structured pruning of a BERT-family encoder: whole attention heads, MLP neurons and blocks
removed, leaving smaller weight matrices (no masks at inference).

Which units go is measured on calibration batches (`measure_importance`):
- heads and neurons: a gate multiplies each head's output (before `attn.proj`) and each MLP
  neuron's activation (before `mlp.proj`); all gates are 1, so the model computes what it
  always does, and |dLoss/dgate| per batch, summed over the batches, is the first-order
  estimate of what removing that unit costs (Michel et al. 2019 for heads, Molchanov et al.
  2017 for neurons: gradient x activation);
- blocks: the loss with the block skipped (its input passed through) minus the loss with
  it, on the same batches: a measured ablation, as one gate's first-order estimate is poor
  for a change as large as a whole block.

`plan_pruning` turns importances and fractions into the units to remove, `apply_plan`
slices the weights and records the new shape in the encoder's config (`pruned_heads`,
`ffn_sizes`, `d_ff`, `n_layers`), which is what model.json saves and loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from pretrainer.errors import PretrainerError
from pretrainer.models.encoder import BertModel


def encoder_of(model: nn.Module) -> BertModel:
    """The BERT-family encoder inside `model` (a classifier's or tagger's backbone, or the model)."""
    encoder = getattr(model, "backbone", model)
    encoder = getattr(encoder, "backbone", encoder)
    if not isinstance(encoder, BertModel):
        raise PretrainerError(f"structured pruning works on a BERT-family encoder; this model is a "
                              f"{type(encoder).__name__} ({getattr(encoder.config, 'name', '?')!r})")
    return encoder


def count_encoder_parameters(model: nn.Module) -> int:
    """Parameters of the encoder's blocks (what pruning shrinks; embeddings and heads excluded)."""
    return sum(p.numel() for p in encoder_of(model).blocks.parameters())


# ---------------------------------------------------------------- importance


@dataclass
class Importance:
    heads: list[torch.Tensor]  # per layer: (heads kept so far,) estimated loss increase if removed
    neurons: list[torch.Tensor]  # per layer: (MLP width,)
    layers: torch.Tensor  # (n_layers,): loss increase when the block is skipped
    batches: int


def _gate_hooks(encoder: BertModel, gates_h: list[torch.Tensor], gates_f: list[torch.Tensor]) -> list:
    """Forward pre-hooks multiplying the inputs of attn.proj (per head) and mlp.proj (per neuron)."""
    handles = []
    for block, gh, gf in zip(encoder.blocks, gates_h, gates_f):
        dh = block.attn.head_dim

        def gate_heads(module, args, gh=gh, dh=dh):
            x = args[0]  # (B, T, H * D)
            return ((x.unflatten(-1, (-1, dh)) * gh[:, None]).flatten(-2),) + args[1:]

        def gate_neurons(module, args, gf=gf):
            return (args[0] * gf,) + args[1:]

        handles.append(block.attn.proj.register_forward_pre_hook(gate_heads))
        handles.append(block.mlp.proj.register_forward_pre_hook(gate_neurons))
    return handles


def _skip_hook(block: nn.Module):
    """A forward hook that makes `block` return its input: the block removed."""
    return block.register_forward_hook(lambda module, args, output: args[0])


def measure_importance(model: nn.Module, batches: Iterable[dict], loss_fn: Callable[[nn.Module, dict], torch.Tensor],
                       n_batches: int) -> Importance:
    """Importance of every head, MLP neuron and block of `model`'s encoder on `n_batches` of
    `batches` (in eval mode: no dropout). The weights are not changed and get no gradient."""
    encoder = encoder_of(model)
    if n_batches < 1:
        raise PretrainerError(f"config key 'prune.calibration_batches' must be >= 1, got {n_batches}")
    device = next(model.parameters()).device
    gates_h = [torch.ones(b.attn.n_heads, device=device, requires_grad=True) for b in encoder.blocks]
    gates_f = [torch.ones(b.mlp.fc.out_features, device=device, requires_grad=True) for b in encoder.blocks]
    score_h = [torch.zeros_like(g) for g in gates_h]
    score_f = [torch.zeros_like(g) for g in gates_f]
    score_l = torch.zeros(len(encoder.blocks), dtype=torch.float64)
    was_training = model.training
    grad_state = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_state:
        p.requires_grad_(False)  # only the gates need gradients
    handles = _gate_hooks(encoder, gates_h, gates_f)
    done = 0
    try:
        for batch in batches:
            if done == n_batches:
                break
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates_h + gates_f)
            for score, grad in zip(score_h + score_f, grads):
                score += grad.abs()  # |dL/dg| per batch: a unit that helps and hurts still matters
            with torch.no_grad():
                for i, block in enumerate(encoder.blocks):
                    skip = _skip_hook(block)
                    try:
                        score_l[i] += float(loss_fn(model, batch)) - float(loss)
                    finally:
                        skip.remove()
            done += 1
    finally:
        for h in handles:
            h.remove()
        for p, requires_grad in grad_state:
            p.requires_grad_(requires_grad)
        model.train(was_training)
    if done == 0:
        raise PretrainerError("no calibration batches: the training file is empty")
    return Importance(heads=[s.detach().cpu() / done for s in score_h],
                      neurons=[s.detach().cpu() / done for s in score_f],
                      layers=(score_l / done).float(), batches=done)


# ---------------------------------------------------------------- what to remove


@dataclass
class PrunePlan:
    """Units to remove, as positions in the current model: whole blocks, and per remaining
    block (keyed by its current index) head and neuron positions."""

    layers: list[int]
    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]


def _removal_count(fraction: float, total: int, key: str) -> int:
    if fraction < 0:
        raise PretrainerError(f"config key '{key}' must be in [0, 1), got {fraction}")
    return math.floor(fraction * total + 1e-9)


def _lowest(scores: list[torch.Tensor], layers: list[int], count: int, scope: str, what: str,
            key: str, fraction: float) -> dict[int, list[int]]:
    """The `count` lowest-scoring units among `layers` (at least one kept per layer); `scope`
    "layer" takes the same share from every layer, "global" ranks all of them together (scores
    divided by their layer's L2 norm, as Michel et al. do, so layers are comparable)."""
    out: dict[int, list[int]] = {i: [] for i in layers}
    sizes = {i: len(scores[i]) for i in layers}
    removable = sum(n - 1 for n in sizes.values())
    if count > removable:
        raise PretrainerError(f"config key '{key}' = {fraction} asks to remove {count} {what} of "
                              f"{sum(sizes.values())}, but at most {removable} can go (one stays in each of "
                              f"the {len(layers)} layers kept)")
    if count == 0:
        return out
    if scope == "layer":
        share = fraction
        for i in layers:
            k = min(math.floor(share * sizes[i] + 1e-9), sizes[i] - 1)
            out[i] = sorted(torch.argsort(scores[i], stable=True)[:k].tolist())
        return out
    ranked = []
    for i in layers:
        s = scores[i] / scores[i].norm().clamp(min=1e-12)
        ranked += [(float(v), i, j) for j, v in enumerate(s)]
    ranked.sort()
    left = dict(sizes)
    for _, i, j in ranked:
        if count == 0:
            break
        if left[i] > 1:
            out[i].append(j)
            left[i] -= 1
            count -= 1
    return {i: sorted(v) for i, v in out.items()}


def plan_pruning(importance: Importance, heads_fraction: float = 0.0, ffn_fraction: float = 0.0,
                 layers: int = 0, scope: str = "layer") -> PrunePlan:
    """Which blocks, heads and neurons to remove: the `layers` least important blocks, then
    `heads_fraction` of the heads and `ffn_fraction` of the neurons of the blocks kept."""
    n_layers = len(importance.layers)
    if scope not in ("layer", "global"):
        raise PretrainerError(f"config key 'prune.scope' must be layer or global, got {scope!r}")
    if not 0 <= layers < n_layers:
        raise PretrainerError(f"config key 'prune.layers' = {layers}: the encoder has {n_layers} layers; remove "
                              f"between 0 and {n_layers - 1}")
    dropped = sorted(torch.argsort(importance.layers, stable=True)[:layers].tolist())
    kept = [i for i in range(n_layers) if i not in dropped]
    n_heads = sum(len(importance.heads[i]) for i in kept)
    n_neurons = sum(len(importance.neurons[i]) for i in kept)
    heads = _lowest(importance.heads, kept, _removal_count(heads_fraction, n_heads, "prune.heads_fraction"),
                    scope, "attention heads", "prune.heads_fraction", heads_fraction)
    neurons = _lowest(importance.neurons, kept, _removal_count(ffn_fraction, n_neurons, "prune.ffn_fraction"),
                      scope, "MLP neurons", "prune.ffn_fraction", ffn_fraction)
    return PrunePlan(layers=dropped, heads={i: v for i, v in heads.items() if v},
                     neurons={i: v for i, v in neurons.items() if v})


# ---------------------------------------------------------------- slicing the weights


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding the kept output `rows` and input `cols` of `linear`."""
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w[rows]
        b = b[rows] if b is not None else None
    if cols is not None:
        w = w[:, cols]
    out = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if b is not None:
            out.bias.copy_(b)
    out.weight.requires_grad_(linear.weight.requires_grad)
    if b is not None:
        out.bias.requires_grad_(linear.bias.requires_grad)
    return out


def _check_positions(positions: list[int], size: int, what: str, layer: int) -> list[int]:
    positions = sorted(set(int(p) for p in positions))
    if positions and (positions[0] < 0 or positions[-1] >= size):
        raise PretrainerError(f"layer {layer} has {size} {what}; cannot remove {what} {positions}")
    if len(positions) >= size:
        raise PretrainerError(f"layer {layer}: removing {len(positions)} of its {size} {what} leaves none "
                              f"(at least one stays; remove the layer instead)")
    return positions


def prune_heads(model: nn.Module, heads: dict[int, list[int]]) -> None:
    """Remove attention heads: {layer: [head positions in that layer now]}. The q/k/v rows and
    the output projection's columns of those heads go; the config records their original indices."""
    encoder = encoder_of(model)
    cfg = encoder.config
    pruned = [list(p) for p in (cfg.pruned_heads or [[] for _ in range(cfg.n_layers)])]
    for layer, positions in heads.items():
        attn = encoder.blocks[layer].attn
        positions = _check_positions(positions, attn.n_heads, "attention heads", layer)
        if not positions:
            continue
        H, D = attn.n_heads, attn.head_dim
        keep = [h for h in range(H) if h not in positions]
        per_head = torch.arange(H * D, device=attn.qkv.weight.device).view(H, D)
        cols = per_head[keep].flatten()  # (kept * D,)
        rows = torch.cat([cols + part * H * D for part in range(3)])  # q, k, v blocks
        attn.qkv = _sliced(attn.qkv, rows=rows)
        attn.proj = _sliced(attn.proj, cols=cols)
        attn.n_heads = len(keep)
        original = [h for h in range(cfg.n_heads) if h not in pruned[layer]]  # position -> original index
        pruned[layer] = sorted(pruned[layer] + [original[p] for p in positions])
    _set_config(encoder, pruned_heads=pruned if any(pruned) else [])


def prune_neurons(model: nn.Module, neurons: dict[int, list[int]]) -> None:
    """Remove MLP neurons: {layer: [positions]}: rows of mlp.fc and columns of mlp.proj."""
    encoder = encoder_of(model)
    for layer, positions in neurons.items():
        mlp = encoder.blocks[layer].mlp
        positions = _check_positions(positions, mlp.fc.out_features, "MLP neurons", layer)
        if not positions:
            continue
        keep = torch.tensor([j for j in range(mlp.fc.out_features) if j not in set(positions)],
                            device=mlp.fc.weight.device)
        mlp.fc = _sliced(mlp.fc, rows=keep)
        mlp.proj = _sliced(mlp.proj, cols=keep)
    _record_widths(encoder)


def drop_layers(model: nn.Module, layers: list[int]) -> None:
    """Remove whole blocks (their input passes straight to the next block)."""
    encoder = encoder_of(model)
    n = len(encoder.blocks)
    layers = sorted(set(layers))
    if layers and (layers[0] < 0 or layers[-1] >= n or len(layers) >= n):
        raise PretrainerError(f"cannot remove layers {layers} of an encoder with {n} (at least one stays)")
    if not layers:
        return
    cfg = encoder.config
    keep = [i for i in range(n) if i not in layers]
    encoder.blocks = nn.ModuleList(encoder.blocks[i] for i in keep)
    encoder.n_layers = len(keep)
    pruned = [cfg.pruned_heads[i] for i in keep] if cfg.pruned_heads else []
    _set_config(encoder, n_layers=len(keep), pruned_heads=pruned if any(pruned) else [])
    _record_widths(encoder)


def _record_widths(encoder: BertModel) -> None:
    widths = [b.mlp.fc.out_features for b in encoder.blocks]
    if len(set(widths)) == 1:
        _set_config(encoder, d_ff=widths[0], ffn_sizes=[])
    else:
        _set_config(encoder, ffn_sizes=widths)


def _set_config(encoder: BertModel, **changes) -> None:
    encoder.config = dataclasses.replace(encoder.config, **changes)


def apply_plan(model: nn.Module, plan: PrunePlan) -> None:
    """Heads and neurons first (their positions are those of the model as planned), then blocks."""
    prune_heads(model, plan.heads)
    prune_neurons(model, plan.neurons)
    drop_layers(model, plan.layers)
    encoder_of(model).config.layer_shapes()  # the recorded shape is one the model can be rebuilt from


def describe_plan(plan: PrunePlan) -> dict:
    """The plan as JSON-ready lists (for results.json)."""
    return {"layers_removed": plan.layers,
            "heads_removed": {str(i): v for i, v in sorted(plan.heads.items())},
            "neurons_removed_per_layer": {str(i): len(v) for i, v in sorted(plan.neurons.items())}}
