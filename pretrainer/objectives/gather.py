"""All-gather across processes with gradients, for losses whose negatives come from every rank.

Each rank holds its own rows x (n, C); the loss on rank r reads every rank's rows, so the
gradient of the global loss with respect to rank r's rows is the sum, over ranks s, of what
rank s's loss sends back to them. `gather_rows` returns the rows of all ranks (W * n, C),
in rank order, and its backward all-reduces (sums) the incoming gradient and keeps this
rank's slice: with DDP's mean over ranks on top, the parameters get exactly the gradient of
the mean of the ranks' losses, i.e. of one process holding the whole global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W * n, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # SUM: every rank's loss reads these rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's x stacked in rank order (W * n, C), offset of this rank's rows). Every rank
    must hold the same number of rows (the samplers give each rank an equal batch)."""
    rank, size = world()
    if size == 1:
        return x, 0
    return _GatherRows.apply(x), rank * x.shape[0]
