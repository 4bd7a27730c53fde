"""What each rank of the 2-process gather tests (_simcse_worker.py, _simclr_worker.py) runs:
one objective step on this rank's rows of a fixed global batch, saved by rank 0 as the full
gradients and the mean of the ranks' losses; and the same with a gather whose backward keeps only
this rank's own part (no sum over ranks), which the tests show would fail."""

import gc
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from pretrainer.config import ImplConfig
from pretrainer.io import unwrap
from pretrainer.objectives import gather
from pretrainer.training.distributed import call_objective, full_tensor, parallelize


def rank_rows(batch: dict, rank: int, world_size: int) -> dict:
    """Rank r's rows r, r + W, ... (the sampler's rule)."""
    return {k: v[rank::world_size] for k, v in batch.items()}


def save_one_step(objective, module, batch: dict, parallel: str, info, out: Path) -> None:
    model = parallelize(module, ImplConfig(device="cpu", parallel=parallel, progress=False), info.device)
    result = call_objective(model, objective, rank_rows(batch, info.rank, info.world_size))
    result["loss"].backward()
    loss = result["loss"].detach().clone()
    dist.all_reduce(loss)
    grads = {name: full_tensor(p.grad).detach().cpu().contiguous()
             for name, p in unwrap(model).named_parameters() if p.grad is not None}
    if info.is_main:
        save_file({**grads, "__loss__": (loss / info.world_size).reshape(1)}, str(out))
    del model, result
    gc.collect()


def without_sum_over_ranks() -> None:
    """Make the gather's backward send back only this rank's part of the gradient."""
    def own_part_only(ctx, grad):
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]

    gather._GatherRows.backward = staticmethod(own_part_only)
