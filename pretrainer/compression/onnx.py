"""ONNX export (torch.onnx, the TorchScript-tracing exporter) and int8 quantization through
ONNX Runtime: the path a model is usually deployed on CPU.

The graph is the run's `InferenceGraph` traced on a padded example batch, with the batch
and sequence dimensions dynamic. `onnx` and `onnxruntime` are optional dependencies
(`pip install onnx onnxruntime`, or the `onnx` extra); commands that need them say so.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pretrainer.compression.inference import InferenceGraph
from pretrainer.errors import PretrainerError

OPSET = 17


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise PretrainerError("ONNX needs the onnxruntime package: pip install onnx onnxruntime") from None
    return onnxruntime


def check_exportable(model: nn.Module) -> None:
    """One-line refusals for what the exported graph cannot hold."""
    if getattr(model, "crf", None) is not None:
        raise PretrainerError("a tagger with a CRF (finetune.crf = true) decodes by Viterbi in Python; its ONNX "
                              "graph would hold only the per-token scores: quantize it with format = \"torch\"")


def example_inputs(graph: InferenceGraph, vocab_size: int, seq_len: int = 8) -> tuple[torch.Tensor, ...]:
    """Two rows, the second padded: tracing takes the masked attention path, which every input needs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, max(vocab_size, 6), (2, seq_len), generator=g)
    mask = torch.ones(2, seq_len, dtype=torch.long)
    if graph.kind != "generator":  # a generator runs one unpadded prompt per row
        mask[1, seq_len // 2:] = 0
    inputs = [ids, mask, torch.zeros_like(ids)]
    if graph.case_features:
        inputs.append(torch.zeros_like(ids))
    return tuple(inputs)


def export_onnx(model: nn.Module, path: str | os.PathLike, vocab_size: int, opset: int = OPSET) -> InferenceGraph:
    """Write `model`'s inference graph (fp32) to `path`."""
    check_exportable(model)
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it to write the file)
    except ImportError:
        raise PretrainerError("ONNX export needs the onnx package: pip install onnx onnxruntime") from None
    graph = InferenceGraph(model.to("cpu").eval())
    dims = {name: {0: "batch", 1: "sequence"} for name in graph.input_names}
    for name in graph.output_names:
        dims[name] = {0: "batch"} if name in ("cls",) or graph.kind in ("classifier", "generator") \
            else {0: "batch", 1: "sequence"}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python branches on shapes (max_len checks, the padding test);
        # the example batch takes the branches every input needs.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, example_inputs(graph, vocab_size), str(path), input_names=graph.input_names,
                          output_names=graph.output_names, dynamic_axes=dims, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    return graph


def _excluded_nodes(path: Path, keep_fp32) -> list[str]:
    """Names of the MatMul / Gemm nodes of the Linear layers named by `keep_fp32` suffixes: the
    exporter names a node after its module path (`/model/backbone/blocks.0/mlp/proj/MatMul`)."""
    if not keep_fp32:
        return []
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type in ("MatMul", "Gemm")
            and any(n.name.replace("/", ".").rsplit(".", 1)[0].endswith("." + suffix) for suffix in keep_fp32)]


def quantize_onnx_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, per_channel: bool = False,
                       keep_fp32=()) -> None:
    """ONNX Runtime's dynamic int8 quantization: MatMul / Gemm weights (one scale per matrix, or
    per column with `per_channel`) and embedding tables to 8 bits, activations quantized per
    batch at run time; the Linear layers named by `keep_fp32` suffixes stay fp32."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ONNX Runtime's quantizer logs advice on the root logger
        try:
            prepared = Path(tmp) / "prepared.onnx"
            try:
                # ONNX shape inference and graph optimisation first (ORT's symbolic shape
                # inference does not follow the traced attention's shapes, so it is skipped).
                quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            except Exception:
                prepared = Path(fp32_path)
            quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=_excluded_nodes(prepared, keep_fp32))
        finally:
            root.setLevel(level)


class OnnxModel:
    """An ONNX Runtime session called like an `InferenceGraph`: torch tensors in, tensors out."""

    def __init__(self, path: str | os.PathLike, threads: int = 0):
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise PretrainerError(f"{path}: ONNX Runtime cannot load it "
                                  f"({(str(e).splitlines() or [type(e).__name__])[0][:200]})") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                 case_ids: torch.Tensor | None = None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
                 "case_ids": case_ids}
        # The exporter drops inputs the graph never reads (a GPT's token types): feed what it asks for.
        feed = {name: given[name].detach().cpu().numpy().astype(np.int64) for name in self.input_names}
        outputs = [torch.from_numpy(o) for o in self.session.run(self.output_names, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)
