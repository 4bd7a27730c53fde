"""Data-parallel training over several processes: one process per device, launched by torchrun.

    torchrun --nproc_per_node=N -m pretrainer pretrain CONFIG

`init_distributed` joins the process group torchrun describes (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT in the environment): NCCL on CUDA, gloo on CPU; without
torchrun it does nothing. `parallelize` then wraps the single-device model from outside,
in one fixed order: move to the device -> DDP (default) or FSDP2 (`impl.parallel = "fsdp"`:
`fully_shard` on each Transformer block, then on the root) -> torch.compile (in `fit`).

The objective runs inside the wrapper's forward. Objectives call their heads
(`model.lm_projection`, `model.pooled`, `model.nsp_head`) after `model(...)`; under DDP or FSDP those calls
would happen outside the wrapper's forward, where DDP cannot tell used from unused
parameters (a head only reached after forward would be counted unused and reduced twice)
and FSDP has not gathered the root's parameters. So the model is wrapped as
`ObjectiveStep(model)`, whose `forward(objective, batch)` is `objective(model, batch)`,
and `call_objective` routes the loop's call through it. DDP runs with
`find_unused_parameters=False`: an objective's module holds only the heads it trains, and
it freezes what its loss never reaches (masked LM: the [CLS] pooler), so every trainable
parameter gets a gradient every step.

Semantics of N processes: each rank takes `train.batch_size` sequences per micro-batch,
so the global batch is batch_size * N * accum; gradients are the mean of the ranks'
gradients (for a loss that is a mean over the same number of tokens on each rank, e.g.
CLM, exactly the gradient of one process with batch_size * N). The logged loss is the
mean over ranks. Every rank must build the model from the same seed (FSDP does not
broadcast initial weights; DDP does).

Checkpoints are world-size free: the full (unsharded) model and optimizer state are
gathered to rank 0 and written in the one-process format, and the data position counts
global samples (see `data.loader.EpochSampler`). So a run saved by N processes resumes in
M; with the same global batch (batch_size * N == batch_size' * M) it continues exactly as
if it had never stopped. Every rank reads the checkpoint itself: on several nodes the run
directory must be on a shared file system.

When a process dies, the job fails fast rather than hang: torchrun stops the other
processes at once and names the one that failed; a process left waiting in a collective
(its peer's connection gone, or nothing heard for `impl.dist_timeout`) stops with a
one-line error naming the last checkpoint, from which `--resume` continues.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrainer.errors import PretrainerError
from pretrainer.io import unwrap
from pretrainer.training.checkpoint import Checkpoint, restore, set_rng_state
from pretrainer.training.precision import resolve_device
from pretrainer.config import parse_duration

PARALLEL_KINDS = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def _device_for(impl, local_rank: int, world_size: int) -> torch.device:
    """`impl.device` for one of several processes: each takes cuda:LOCAL_RANK on a GPU node."""
    device = resolve_device(impl)
    if device.type != "cuda" or world_size == 1:
        return device
    if device.index is not None:
        raise PretrainerError(f"impl.device = {impl.device!r} names one GPU, but torchrun started "
                              f"{world_size} processes; use cuda or auto (process i takes cuda:LOCAL_RANK)")
    if local_rank >= torch.cuda.device_count():
        raise PretrainerError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s); "
                              f"start at most that many processes per node")
    return torch.device("cuda", local_rank)


_group_broken = False  # set once a collective failed or one rank stopped alone: no more waiting for the others


def init_distributed(impl) -> DistInfo:
    """Join the process group torchrun set up (once); a no-op outside torchrun.

    Called again, or after the caller initialised the group itself, it only reports.
    """
    if getattr(impl, "parallel", "ddp") not in PARALLEL_KINDS:
        raise PretrainerError(f"impl.parallel must be one of {', '.join(PARALLEL_KINDS)}, got {impl.parallel!r}")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return DistInfo(rank, world, local_rank, _device_for(impl, local_rank, world))
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(0, 1, 0, resolve_device(impl))
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    device = _device_for(impl, local_rank, world)
    # torch's own default (30 minutes for gloo) would keep a job whose peer hangs waiting that long.
    text = getattr(impl, "dist_timeout", "10m")
    timeout = datetime.timedelta(seconds=parse_duration(text, "impl.dist_timeout")) if text else None
    global _group_broken
    _group_broken = False
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return DistInfo(rank, world, local_rank, device)


def is_collective_failure(e: BaseException) -> bool:
    """Whether `e` says a collective failed (a peer process died, or timed out), not a bug here.

    NCCL raises torch's DistError types; gloo a plain RuntimeError naming gloo.
    """
    if not is_distributed():
        return False
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo" in str(e).lower())


def collective_failure_reason(e: BaseException) -> str:
    """The gist of a collective's error: gloo's source location and advice dropped.

    '[.../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:60605: Connection reset by
    peer. This is typically caused by ...' -> 'Read error [127.0.0.1]:60605: Connection reset by peer'
    """
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")[:200]


def mark_group_broken() -> None:
    """No more collectives: teardown must not wait at a barrier for processes that are gone."""
    global _group_broken
    _group_broken = True


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # FSDP modules sit in reference cycles (hooks); left to the collector they can be torn
        # down during interpreter exit, after the group is gone, which aborts the process
        # ("terminate called without an active exception"). Collect them while it still exists,
        # and let every rank reach teardown before any destroys the group.
        gc.collect()
        if not _group_broken:
            dist.barrier()
        dist.destroy_process_group()


class ObjectiveStep(nn.Module):
    """`forward(fn, batch) = fn(model, batch)`: the whole objective inside one forward call.

    Only ever seen inside a DDP / FSDP wrapper; `checkpoint.unwrap` sees through it, and its
    `module.` prefix is dropped from state-dict keys like DDP's.
    """

    is_module_wrapper = True

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = model

    def forward(self, fn: Callable, batch):
        return fn(self.module, batch)


def _transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The members of every `blocks` ModuleList (backbones, and a classifier's backbone)."""
    return [block for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, nn.ModuleList)
            for block in module]


def is_parallel(model: nn.Module) -> bool:
    model = getattr(model, "_orig_mod", model)
    return isinstance(model, (DistributedDataParallel, ObjectiveStep))


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def parallelize(model: nn.Module, impl, device: torch.device) -> nn.Module:
    """Move `model` to `device` and, with several processes, wrap it for data parallelism.

    Returns the module to train (the model itself in one process). Apply compression and
    adaptation transforms before this and torch.compile after it.
    """
    if is_parallel(model):
        return model
    model.to(device)
    if not is_distributed():
        return model
    step = ObjectiveStep(model)
    if getattr(impl, "parallel", "ddp") == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Blocks first, root last: each block is gathered just before it runs and freed
        # after; the root group holds the embeddings and heads.
        for block in _transformer_blocks(model):
            fully_shard(block)
        fully_shard(step)
        return step
    return DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=False)


def call_objective(model: nn.Module, objective: Callable, batch):
    """`objective(model, batch)`, through the parallel wrapper's forward when there is one."""
    if is_parallel(model):
        return model(objective, batch)
    return objective(model, batch)


# ---------------------------------------------------------------- agreeing across ranks


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def give_ranks_own_rng_streams() -> None:
    """Rank r > 0 reseeds torch's RNG from (rank 0's current state, r); rank 0 keeps its own.

    Every rank starts from the same seed, so the model initialises identically everywhere,
    but after that identical streams would give every rank the same MLM mask positions and
    dropout masks. Deriving each stream from rank 0's state, which the checkpoint saves,
    keeps resume exact: `fit` calls this at the start (after any restore) and after every
    checkpoint, at the same steps in an uninterrupted and in a resumed run.
    """
    if not is_distributed():
        return
    state = torch.get_rng_state().to(_comm_device())
    dist.broadcast(state, src=0)
    rank = dist.get_rank()
    if rank > 0:
        digest = hashlib.sha256(state.cpu().numpy().tobytes() + rank.to_bytes(4, "little")).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little") >> 1)  # seeds CUDA too


def mean_over_ranks(values: dict, same_on_every_rank: tuple[str, ...] = ()) -> dict[str, float]:
    """Scalar metrics (tensors or floats) as plain floats, averaged over ranks.

    One all-reduce and one host read for all of them, in float64; in one process only the
    read. Keys in `same_on_every_rank` (e.g. a norm of all-reduced gradients) keep this
    rank's value. Every rank must call it with the same keys.
    """
    if not values:
        return {}
    keys = sorted(values)  # the same order on every rank
    if is_distributed():
        device = _comm_device()
    else:
        device = next((v.device for v in values.values() if torch.is_tensor(v)), torch.device("cpu"))
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=device).reshape(())
                           for k in keys])
    if is_distributed():
        own = stacked.clone()
        dist.all_reduce(stacked)  # SUM: gloo has no AVG
        stacked /= dist.get_world_size()
        keep = torch.tensor([k in same_on_every_rank for k in keys], device=device)
        stacked = torch.where(keep, own, stacked)
    return dict(zip(keys, stacked.tolist()))


def rank0_says(flag: bool) -> bool:
    """Rank 0's value of `flag` on every rank (stop decisions taken by the clock or a signal)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def share_lrs(optimizer: torch.optim.Optimizer) -> None:
    """Give every rank rank 0's learning rates (a time-budget schedule reads each rank's clock)."""
    if not is_distributed():
        return
    t = torch.tensor([float(g["lr"]) for g in optimizer.param_groups], dtype=torch.float64,
                     device=_comm_device())
    dist.broadcast(t, src=0)
    for group, lr in zip(optimizer.param_groups, t.tolist()):
        group["lr"] = lr


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP: e.g. a gradient norm over shards) as the whole tensor; others as they are."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


# ---------------------------------------------------------------- full (unsharded) state


def _param_names(inner: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in optimizer index order (the order `Optimizer.state_dict` numbers them)."""
    names = {id(p): name for name, p in inner.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def _state_by_index(named: dict, names: list[str]) -> dict:
    index = {name: i for i, name in enumerate(names)}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in named["param_groups"]]
    return {"state": {index[n]: s for n, s in named["state"].items()}, "param_groups": groups}


def _state_by_name(indexed: dict, names: list[str]) -> dict:
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in indexed["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in indexed["state"].items()}, "param_groups": groups}


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """The unwrapped model's whole state dict and the optimizer's (index-keyed, torch format).

    Under FSDP this gathers the shards: every rank must call it, and only rank 0 receives
    the tensors (on CPU); the other ranks get empty dicts. Otherwise it is `state_dict()`.
    """
    inner = unwrap(model)
    if not is_fsdp(model):
        return inner.state_dict(), None if optimizer is None else optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(inner, options=options)
    if optimizer is None:
        return model_state, None
    named = get_optimizer_state_dict(inner, optimizer, options=options)
    return model_state, _state_by_index(named, _param_names(inner, optimizer)) if named else {}


def restore_checkpoint(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """`checkpoint.restore` for any wrapping: full state in, shards out under FSDP."""
    if not is_fsdp(model):
        return restore(ckpt, model, optimizer)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    inner = unwrap(model)
    try:
        set_model_state_dict(inner, ckpt.model_state, options=StateDictOptions(full_state_dict=True))
        if optimizer is not None:
            named = _state_by_name(ckpt.optimizer_state, _param_names(inner, optimizer))
            set_optimizer_state_dict(inner, optimizer, named, options=StateDictOptions(full_state_dict=True))
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise PretrainerError(f"{ckpt.path}: checkpoint does not fit this model ({reason})") from None
    set_rng_state(ckpt.rng_tensors, ckpt.rng_states)
    return ckpt.extra
