import contextlib
import random

import numpy as np
import pytest
import torch

from pretrainer.errors import PretrainerError
from pretrainer.training import precision
from training_toys import ToyModel, impl_config


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert precision.resolve_device(impl_config(device="auto")).type == expected
    assert precision.resolve_device(impl_config(device="cpu")) == torch.device("cpu")
    with pytest.raises(PretrainerError, match="impl.device"):
        precision.resolve_device(impl_config(device="tpu9"))
    if not torch.cuda.is_available():
        with pytest.raises(PretrainerError, match="no CUDA device"):
            precision.resolve_device(impl_config(device="cuda"))


def test_autocast_and_scaler_on_cpu():
    cpu = torch.device("cpu")
    assert isinstance(precision.autocast(impl_config(precision="fp32"), cpu), contextlib.nullcontext)
    ctx = precision.autocast(impl_config(precision="bf16"), cpu)
    model = ToyModel()
    for _ in range(2):  # re-enterable, one micro-batch after another
        with ctx:
            out = model(torch.zeros(1, 2, dtype=torch.long))
        assert out.dtype == torch.bfloat16
    assert precision.grad_scaler(impl_config(precision="fp16"), cpu) is None


def test_set_determinism_seeds_everything(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag: calls.append(flag))
    draws = []
    for _ in range(2):
        precision.set_determinism(impl_config(deterministic=True), seed=3)
        draws.append((torch.rand(1).item(), np.random.rand(), random.random()))
    assert draws[0] == draws[1] and calls == [True, True]
