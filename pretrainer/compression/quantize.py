"""Dynamic int8 quantization of Linear layers (PyTorch), saved without pickle.

`quantize_dynamic_int8` replaces the nn.Linear layers with torch's dynamically quantized
Linear: int8 weights (one scale per matrix, or per output row), activations quantized per
batch at run time (to 7 bits on x86: torch's `reduce_range`, against int16 overflow without
VNNI), int8 matrix products (fbgemm / x86 kernels on Intel and AMD CPUs, qnnpack on ARM).
Embeddings, LayerNorms and attention's own matmuls stay fp32.

On disk (`int8_state` / `load_int8`): model.safetensors holds each quantized Linear as its
int8 weight (`<name>.weight`, dtype int8), `<name>.weight_scale` and
`<name>.weight_zero_point` (one value, or one per output row with per-channel scales), and
its fp32 bias; every other tensor (and any Linear kept in fp32) as usual. Loading rebuilds
the fp32 architecture from model.json, quantizes it the same way and puts the stored int8
weights back, so the loaded model computes exactly what was saved. No pickle is read.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from pretrainer.errors import PretrainerError

INT8_FORMAT = "dynamic_int8"


def _dynamic_linear_class() -> type:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return DynamicLinear


def int8_linear_names(model: nn.Module, keep_fp32: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The nn.Linear layers to quantize: all but those whose name ends with one of `keep_fp32`."""
    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise PretrainerError(f"{type(model).__name__} has no Linear layers: dynamic int8 quantization "
                              f"quantizes Linear layers only, so there is nothing to quantize")
    chosen = [name for name in linears if not name.endswith(tuple(keep_fp32))]
    if not chosen:
        raise PretrainerError(f"config key 'quantize.keep_fp32' = {list(keep_fp32)} keeps every Linear layer "
                              f"in fp32: nothing left to quantize")
    return chosen


def quantize_dynamic_int8(model: nn.Module, keep_fp32: list[str] | tuple[str, ...] = (),
                          per_channel: bool = False, names: list[str] | None = None) -> nn.Module:
    """A copy of `model` (eval mode, CPU) with its nn.Linear layers (all but `keep_fp32`
    suffixes, or exactly `names`) dynamically quantized to int8: one weight scale per matrix,
    or per output row with `per_channel`."""
    names = names if names is not None else int8_linear_names(model, keep_fp32)
    model = copy.deepcopy(model).to("cpu").eval()
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, whose CPU int8 path needs its
        # own kernels; the eager dynamic path is what runs everywhere torch does.
        warnings.simplefilter("ignore")
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

        qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
        return quantize_dynamic(model, {name: qconfig for name in names}, dtype=torch.qint8)


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    cls = _dynamic_linear_class()
    return {name: m for name, m in model.named_modules() if isinstance(m, cls)}


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain tensors for safetensors: int8 weights + scale + zero point per quantized Linear."""
    linears = quantized_linears(model)
    if not linears:
        raise PretrainerError("the model has no int8 Linear layers (quantize it first)")
    skip = tuple(f"{name}." for name in linears)
    state = {k: v for k, v in model.state_dict().items() if torch.is_tensor(v) and not k.startswith(skip)}
    for name, m in linears.items():
        w = m.weight()
        state[f"{name}.weight"] = w.int_repr().contiguous()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            if w.q_per_channel_axis() != 0:
                raise PretrainerError(f"{name}: per-channel int8 weights are saved along axis 0 only")
            state[f"{name}.weight_scale"] = w.q_per_channel_scales().to(torch.float64).contiguous()
            state[f"{name}.weight_zero_point"] = w.q_per_channel_zero_points().to(torch.int64).contiguous()
        else:
            state[f"{name}.weight_scale"] = torch.tensor([w.q_scale()], dtype=torch.float64)
            state[f"{name}.weight_zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int64)
        bias = m.bias()
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().contiguous()
    return state


def load_int8(fp32_model: nn.Module, state: dict[str, torch.Tensor], where: str) -> nn.Module:
    """`fp32_model` (a freshly built module of the saved architecture) quantized, with `state`
    (from `int8_state`) loaded: the int8 weights exactly as saved."""
    names = [k[: -len(".weight_scale")] for k in state if k.endswith(".weight_scale")]
    if not names:
        raise PretrainerError(f"{where}: no int8 weights (no `.weight_scale` tensors)")
    dense = {k: v for k, v in state.items() if not k.endswith((".weight_scale", ".weight_zero_point"))}
    per_channel = any(state[f"{name}.weight_scale"].numel() > 1 for name in names)
    for name in names:  # fp32 values first, so the architecture is checked key by key
        q, scale, zero = state[f"{name}.weight"], state[f"{name}.weight_scale"], state[f"{name}.weight_zero_point"]
        dense[f"{name}.weight"] = (q.float() - zero.float()[:, None]) * scale.float()[:, None]
    try:
        fp32_model.load_state_dict(dense, strict=True)
    except RuntimeError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise PretrainerError(f"{where}: weights do not fit this model: {detail[:300]}") from None
    model = quantize_dynamic_int8(fp32_model, per_channel=per_channel, names=names)
    linears = quantized_linears(model)
    for name in names:
        q, scale, zero = state[f"{name}.weight"], state[f"{name}.weight_scale"], state[f"{name}.weight_zero_point"]
        if per_channel:
            qweight = torch._make_per_channel_quantized_tensor(q.to(torch.int8), scale, zero, 0)
        else:
            qweight = torch._make_per_tensor_quantized_tensor(q.to(torch.int8), float(scale), int(zero))
        linears[name].set_weight_bias(qweight, state.get(f"{name}.bias"))
    return model
