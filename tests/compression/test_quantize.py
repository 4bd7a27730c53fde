"""Dynamic int8 (PyTorch) and ONNX (fp32 and int8 through ONNX Runtime): outputs within a stated
tolerance of fp32, int8 weights saved without pickle and loaded exactly, one-line refusals.

Tolerances, on a tiny random classifier with perturbed biases (logits of order 0.1-1):
- ONNX fp32: max |logit difference| <= 1e-5 (the same float arithmetic, another runtime);
- int8 (either path): max |logit difference| <= 5% of the largest fp32 |logit|, and the
  predicted label agrees on >= 90% of the inputs (ties of near-equal logits may flip).
"""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from pretrainer.compression.inference import InferenceGraph
from pretrainer.compression.quantize import int8_state, load_int8, quantize_dynamic_int8
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.models import SequenceClassifier, build_model
from pretrainer.runs import load_run, module_from_spec, module_spec

INT8_RELATIVE = 0.05
INT8_AGREEMENT = 0.9
ONNX_FP32_ATOL = 1e-5


def classifier(tiny_config, vocab=61):
    torch.manual_seed(0)
    model = SequenceClassifier(build_model(tiny_config("bert", n_heads=4), vocab), 3, pooling="cls", dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape) * 0.1)
    return model.eval()


def inputs(n=64, T=12, vocab=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.long)
    mask[::3, T // 2:] = 0
    return ids, mask, torch.zeros_like(ids)


def assert_int8_close(got, ref):
    assert (got - ref).abs().max() <= INT8_RELATIVE * ref.abs().max()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= INT8_AGREEMENT


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_is_close_and_reloads_exactly_from_plain_tensors(per_channel, tiny_config, tmp_path):
    from pretrainer.io import read_model_state, save_weights

    model = classifier(tiny_config)
    q = quantize_dynamic_int8(model, per_channel=per_channel)
    x = inputs()
    with torch.no_grad():
        ref, got = InferenceGraph(model)(*x), InferenceGraph(q)(*x)
    assert_int8_close(got, ref)
    assert all(type(m) is not nn.Linear for m in q.modules())
    save_weights(int8_state(q), tmp_path / "model.safetensors")
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:  # plain tensors, no pickle
        assert f.get_tensor("backbone.blocks.0.attn.qkv.weight").dtype == torch.int8
        assert f.get_tensor("head.weight").dtype == torch.int8
        assert f.get_tensor("backbone.embeddings.word_embeddings.weight").dtype == torch.float32
    again = load_int8(module_from_spec(module_spec(model)), read_model_state(tmp_path / "model.safetensors"), "x")
    with torch.no_grad():
        torch.testing.assert_close(InferenceGraph(again)(*x), got, atol=0, rtol=0)


def test_layers_kept_in_fp32(tiny_config, tmp_path):
    from pretrainer.io import read_model_state, save_weights

    model = classifier(tiny_config)
    q = quantize_dynamic_int8(model, keep_fp32=["mlp.proj", "head"])
    kept = [name for name, m in q.named_modules() if type(m) is nn.Linear]
    assert kept == ["backbone.blocks.0.mlp.proj", "backbone.blocks.1.mlp.proj", "head"]
    save_weights(int8_state(q), tmp_path / "model.safetensors")
    again = load_int8(module_from_spec(module_spec(model)), read_model_state(tmp_path / "model.safetensors"), "x")
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(InferenceGraph(again)(*x), InferenceGraph(q)(*x), atol=0, rtol=0)
    assert [name for name, m in again.named_modules() if type(m) is nn.Linear] == kept
    with pytest.raises(PretrainerError, match="keeps every Linear layer in fp32"):
        quantize_dynamic_int8(model, keep_fp32=[""])


def test_a_model_without_linear_layers_is_refused():
    with pytest.raises(PretrainerError, match="has no Linear layers") as e:
        quantize_dynamic_int8(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)))
    assert "\n" not in str(e.value)


onnxruntime = pytest.importorskip("onnxruntime")


def test_onnx_fp32_and_int8_match_the_model(tiny_config, tmp_path):
    from pretrainer.compression.onnx import OnnxModel, export_onnx, quantize_onnx_int8

    model = classifier(tiny_config)
    export_onnx(model, tmp_path / "fp32.onnx", vocab_size=61)
    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    for seed, T in ((0, 12), (1, 20)):  # dynamic batch and sequence sizes
        x = inputs(n=16 + seed, T=T, seed=seed)
        with torch.no_grad():
            ref = InferenceGraph(model)(*x)
        torch.testing.assert_close(OnnxModel(tmp_path / "fp32.onnx")(*x), ref, atol=ONNX_FP32_ATOL, rtol=0)
        assert_int8_close(OnnxModel(tmp_path / "int8.onnx")(*x), ref)
    assert (tmp_path / "int8.onnx").stat().st_size < (tmp_path / "fp32.onnx").stat().st_size
    import onnx

    quantize_onnx_int8(tmp_path / "fp32.onnx", tmp_path / "kept.onnx", per_channel=True, keep_fp32=["mlp.proj"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "kept.onnx")).graph.node]
    assert ops.count("MatMul") == 2 * 2 + 2  # attention's two per block, and the two kept mlp.proj
    assert_int8_close(OnnxModel(tmp_path / "kept.onnx")(*x), ref)


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
def test_quantize_command_writes_a_run_predict_loads(fmt, tmp_path, tiny_transfer_task, good_task_rows):
    from pretrainer.compress import quantize
    from pretrainer.predict import load_predictor
    from pretrainer.transfer.finetune import finetune

    cfg = tiny_transfer_task(tmp_path, good_task_rows(), "--finetune.train.epochs=1.0")
    finetune(cfg, log=lambda *_: None)
    source = tmp_path / "run" / "finetune"
    qcfg = load_config(None, [f'--run.dir="{tmp_path}"', f'--quantize.init="{source}"', f"--quantize.format={fmt}"])
    results = quantize(qcfg, log=lambda *_: None)
    out = tmp_path / ("int8" if fmt == "torch" else "onnx")
    assert results["check"]["argmax_agreement"] >= INT8_AGREEMENT
    assert results["check"]["max_abs_diff"] <= INT8_RELATIVE * results["check"]["max_abs_fp32"]
    assert "accuracy" in results["dev"] and results["labels"] == ["0", "1"]
    spec = json.loads((out / "model.json").read_text())
    assert spec["inference"]["format"] == ("dynamic_int8" if fmt == "torch" else "onnx")
    assert load_predictor(out).backend == ("dynamic_int8" if fmt == "torch" else "onnx-int8")
    with pytest.raises(PretrainerError, match="for inference only"):
        load_run(out)
    with pytest.raises(PretrainerError, match="already exists"):
        quantize(qcfg, log=lambda *_: None)
