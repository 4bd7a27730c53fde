"""Device, mixed precision, threads and determinism: the `[impl]` side of a run."""

from __future__ import annotations

import contextlib
import os
import random
import warnings

import numpy as np
import torch

from pretrainer.errors import PretrainerError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_warned_slow_bf16 = False


def resolve_device(impl) -> torch.device:
    """`impl.device` -> a torch.device; "auto" picks CUDA when there is one."""
    name = impl.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PretrainerError(f"impl.device: unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PretrainerError(f"impl.device: {name!r} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PretrainerError(f"impl.device: {name!r} requested but only "
                                  f"{torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise PretrainerError(f"impl.device: unsupported device {name!r} (use cpu, cuda, cuda:N or auto)")
    return device


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast(impl, device: torch.device):
    """A context manager running the forward pass at `impl.precision`.

    The returned object can be entered again for every micro-batch. fp32 is a no-op.
    """
    global _warned_slow_bf16
    if impl.precision == "fp32":
        return contextlib.nullcontext()
    dtype = _DTYPES[impl.precision]
    if device.type == "cpu" and dtype is torch.bfloat16 and not _warned_slow_bf16 and not cpu_has_native_bf16():
        _warned_slow_bf16 = True
        warnings.warn("impl.precision=bf16 on a CPU without native bf16 support is emulated and "
                      "slow; use fp32 on this machine", stacklevel=2)
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(impl, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling keeps small fp16 gradients from underflowing; bf16 and fp32 need none."""
    if impl.precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def set_threads(impl) -> None:
    if impl.threads > 0:
        torch.set_num_threads(impl.threads)


def set_determinism(impl, seed: int) -> None:
    """Seed every RNG; with `impl.deterministic` also forbid nondeterministic kernels.

    Call before the model is built so its initialisation is reproducible too.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA as well
    if impl.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it reads this at first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
