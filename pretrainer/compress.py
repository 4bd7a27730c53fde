"""`pretrainer prune CONFIG` and `pretrainer quantize CONFIG`: a run directory in, a run directory out.

The model transforms live in compression/ (prune.py, quantize.py, onnx.py); this module reads
the run and its task, runs them, scores the result the way fine-tuning does and writes the
run: model.json (the new shape, or the inference format), the weights, the tokenizer,
config.toml (the source run's recipe, so `evaluate --finetuned` and `predict` read inputs the
same way) and results.json (labels, what was removed or quantized, dev/test metrics).

Data: the calibration and recovery batches and the dev/test files are `finetune.data` of the
config given when its `train` is set, else the source run's own `[finetune.data]`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pretrainer.compression.inference import InferenceGraph, model_kind
from pretrainer.compression.onnx import OPSET, export_onnx, quantize_onnx_int8
from pretrainer.compression.prune import (apply_plan, count_encoder_parameters, describe_plan, encoder_of,
                                          measure_importance, plan_pruning)
from pretrainer.compression.quantize import INT8_FORMAT, int8_linear_names, int8_state, quantize_dynamic_int8
from pretrainer.config import Config, FinetuneConfig, load_config, save_config
from pretrainer.data.long_documents import LONG_DOCUMENT_KEYS
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text, save_weights, write_folder_atomically
from pretrainer.predict import load_predictor
from pretrainer.registry import TASKS
from pretrainer.runs import load_run, module_spec, run_label_names
from pretrainer.training.precision import resolve_device, set_determinism, set_threads
from pretrainer.transfer.finetune import save_transferable
from pretrainer.transfer.select import train_and_select
from pretrainer.transfer.tasks import Task


def _source(key: str, value: str) -> Path:
    if not value:
        raise PretrainerError(f"config key '{key}' is empty: name the run directory to read")
    path = Path(value)
    if not (path / "model.json").is_file():
        raise PretrainerError(f"config key '{key}' = {value!r}: not a run directory (no model.json)")
    return path


def _check_output(out: Path, source: Path, key: str) -> None:
    if out.resolve() == source.resolve():
        raise PretrainerError(f"config key '{key}' = {str(out)!r} is the source run itself; write elsewhere")
    if out.is_dir() and any(out.iterdir()):
        raise PretrainerError(f"{out}: already exists and is not empty; choose another {key} or remove it")


def _task_of(model: nn.Module, run_dir: Path) -> Task:
    for name in TASKS:
        task = TASKS.get(name)()
        # Only labeled tasks have the loss pruning measures importance with (generation's
        # head_class is any module: its model is the encoder-decoder itself).
        if task.labeled and isinstance(model, task.head_class):
            return task
    raise PretrainerError(f"{run_dir}: the model has no classification or tagging head; pruning measures "
                          f"importance with a task's loss, so it needs a fine-tuned run")


def source_recipe(run_dir: Path) -> Config | None:
    """The config a run was made with (its config.toml), or None (an imported model)."""
    path = run_dir / "config.toml"
    return load_config(path) if path.is_file() else None


def task_settings(cfg: Config, source: Path, task: Task, labels: list[str]) -> FinetuneConfig:
    """`cfg.finetune` with the source run's task, data (unless cfg names its own) and input length,
    and the source run's label order (its outputs' order)."""
    recipe = source_recipe(source)
    data = cfg.finetune.data
    if not data.train:
        if recipe is None or not recipe.finetune.data.train:
            raise PretrainerError(f"config key 'finetune.data.train' is empty and {source} has no config.toml "
                                  f"naming its training file: set finetune.data (train, dev, format)")
        data = recipe.finetune.data
    # The input the source was trained on: its length, and how it read long documents.
    read_as = recipe.finetune if recipe is not None else cfg.finetune
    reading = {key: getattr(read_as, key) for key in LONG_DOCUMENT_KEYS}
    return dataclasses.replace(cfg.finetune, init=str(source), task=task.name, method="full", max_len=read_as.max_len,
                               **reading, data=dataclasses.replace(data, labels=list(labels)))


def _labels(source: Path) -> list[str]:
    labels = run_label_names(source)
    if labels is None:
        raise PretrainerError(f"{source}: no label names (results.json or imported_from.json): "
                              f"not a finished fine-tuning run")
    return labels


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- prune


def prune(cfg: Config, log=print) -> dict:
    """Prune the fine-tuned run `prune.init` into `prune.dir`; returns results.json's content."""
    pc = cfg.prune
    source = _source("prune.init", pc.init)
    out = Path(pc.dir or Path(cfg.run.dir) / "prune")
    _check_output(out, source, "prune.dir")
    if pc.recover_epochs < 0:
        raise PretrainerError(f"config key 'prune.recover_epochs' must be >= 0, got {pc.recover_epochs}")
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)
    model, tokenizer = load_run(source)
    task = _task_of(model, source)
    encoder_of(model)  # a BERT-family encoder, or a one-line refusal before any data is read
    labels = _labels(source)
    ft = task_settings(cfg, source, task, labels)
    if ft.train.batch_size < 1:
        raise PretrainerError(f"config key 'finetune.train.batch_size' must be >= 1, got {ft.train.batch_size}")
    model.to(resolve_device(cfg.impl))
    splits = task.read_splits(ft, task.encoder(tokenizer, ft.max_len, ft), cfg.run.seed)
    objective = task.objective(labels)
    params_before, encoder_before = _parameters(model), count_encoder_parameters(model)
    shape_before = [list(s) for s in encoder_of(model).config.layer_shapes()]

    began = time.perf_counter()
    calibration = task.batches(splits, ft.train.batch_size, cfg.run.seed)
    importance = measure_importance(model, calibration, lambda m, b: objective(m, b)["loss"], pc.calibration_batches)
    plan = plan_pruning(importance, pc.heads_fraction, pc.ffn_fraction, pc.layers, pc.scope)
    apply_plan(model, plan)
    encoder_after = count_encoder_parameters(model)
    log(f"pruned {source} on {importance.batches} calibration batches: {len(plan.layers)} layers, "
        f"{sum(map(len, plan.heads.values()))} heads, {sum(map(len, plan.neurons.values()))} MLP neurons removed; "
        f"encoder {encoder_before:,} -> {encoder_after:,} parameters ({encoder_after / encoder_before:.1%}), "
        f"model {params_before:,} -> {_parameters(model):,}")
    record = {"source": str(source), "method": "structured", "scope": pc.scope,
              "heads_fraction": pc.heads_fraction, "ffn_fraction": pc.ffn_fraction,
              "calibration_batches": importance.batches, **describe_plan(plan),
              "layer_shapes_before": shape_before,
              "layer_shapes_after": [list(s) for s in encoder_of(model).config.layer_shapes()],
              "params_before": params_before, "params_after": _parameters(model),
              "encoder_params_before": encoder_before, "encoder_params_after": encoder_after,
              "layer_importance": [round(float(v), 6) for v in importance.layers]}

    eval_set = splits.dev if splits.dev is not None else splits.test
    results = {**task.record, "init": str(source), "method": "full", "labels": labels, "pruned": record}
    if eval_set is not None:
        results["before_recovery"] = task.evaluate(model, eval_set, labels, ft.train.batch_size)
        log(f"before recovery ({'dev' if splits.dev is not None else 'test'}): "
            f"{task.describe(results['before_recovery'])}")
    # What the pruned run is, as a fine-tuned run: `evaluate --finetuned OUT/config.toml` scores it.
    recipe = dataclasses.replace(cfg, finetune=dataclasses.replace(
        ft, dir=str(out), train=dataclasses.replace(ft.train, epochs=pc.recover_epochs)))
    out.mkdir(parents=True, exist_ok=True)
    steps = 0
    if pc.recover_epochs > 0:
        log(f"recovery fine-tuning: {pc.recover_epochs} epochs on {len(splits.subset):,} {task.unit}")

        def evaluate(m: nn.Module) -> dict:
            return task.evaluate(m, eval_set, labels, ft.train.batch_size)

        steps = train_and_select(recipe, model, objective, task.batches(splits, ft.train.batch_size, cfg.run.seed),
                                 len(splits.subset), out, evaluate if eval_set is not None else None,
                                 has_dev=splits.dev is not None, metric=task.metric, resume=False, log=log)
    model.eval()
    save_config(recipe, out / "config.toml")
    tokenizer.save(out)
    save_transferable(model, module_spec(model), out)
    results.update(steps=steps, seconds=round(time.perf_counter() - began, 1),
                   trainable_params=_parameters(model), total_params=_parameters(model))
    for split, dataset in (("dev", splits.dev), ("test", splits.test)):
        if dataset is not None:
            results[split] = task.evaluate(model, dataset, labels, ft.train.batch_size, final=True)
            log(f"{split}: {task.describe(results[split])}")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    log(f"pruned run -> {out}")
    return results


# ---------------------------------------------------------------- quantize


def quantize(cfg: Config, log=print) -> dict:
    """Quantize (or export to ONNX) the run `quantize.init` into `quantize.dir`; returns results.json's content."""
    qc = cfg.quantize
    source = _source("quantize.init", qc.init)
    out = Path(qc.dir or Path(cfg.run.dir) / ("int8" if qc.format == "torch" else "onnx"))
    _check_output(out, source, "quantize.dir")
    if qc.format == "torch" and not qc.int8:
        raise PretrainerError("config key 'quantize.int8' = false applies to format = \"onnx\" (an fp32 PyTorch "
                              "run is the source run itself)")
    recipe = source_recipe(source)
    if qc.format == "onnx" and recipe is not None and recipe.finetune.chunk_pooling != "none":
        raise PretrainerError(f"config key 'quantize.format' = \"onnx\": {source} pools chunks of long documents "
                              f"(finetune.chunk_pooling = {recipe.finetune.chunk_pooling!r}), which the ONNX graph "
                              f"does not; use format = \"torch\"")
    set_threads(cfg.impl)
    model, tokenizer = load_run(source)
    model.eval()
    kind = model_kind(model)
    spec = module_spec(model)
    vocab_size = int(spec["config"].get("vocab_size", tokenizer.vocab_size))
    info = {"format": INT8_FORMAT if qc.format == "torch" else "onnx", "kind": kind, "source": str(source)}
    began = time.perf_counter()

    def write(folder: Path) -> None:
        if qc.int8:
            names = int8_linear_names(model, qc.keep_fp32)
            info.update(per_channel=qc.per_channel, int8_linear_layers=len(names), keep_fp32=qc.keep_fp32)
        if qc.format == "torch":
            quantized = quantize_dynamic_int8(model, per_channel=qc.per_channel, names=names)
            save_weights(int8_state(quantized), folder / "model.safetensors")
            info.update(engine=torch.backends.quantized.engine, int8=True)
        else:
            info.update(file="model.onnx", int8=qc.int8, opset=OPSET)
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = Path(tmp) / "fp32.onnx"
                export_onnx(model, fp32, vocab_size)
                if qc.int8:
                    quantize_onnx_int8(fp32, folder / "model.onnx", per_channel=qc.per_channel,
                                       keep_fp32=qc.keep_fp32)
                else:
                    shutil.copyfile(fp32, folder / "model.onnx")
        (folder / "model.json").write_text(json.dumps({**spec, "inference": info}, indent=2), encoding="utf-8")
        tokenizer.save(folder)
        save_config(dataclasses.replace(recipe or cfg, quantize=qc), folder / "config.toml")
        labels = run_label_names(source)
        if labels:  # the label names predict and evaluation read
            (folder / "results.json").write_text(json.dumps({"labels": labels}), encoding="utf-8")

    write_folder_atomically(out, write, overwrite=False)
    weights = out / ("model.safetensors" if qc.format == "torch" else "model.onnx")
    source_bytes = (source / "model.safetensors").stat().st_size
    results = {"source": str(source), **info, "params": _parameters(model),
               "file_bytes": weights.stat().st_size, "source_file_bytes": source_bytes,
               "seconds": round(time.perf_counter() - began, 1)}
    log(f"{info['format']}{' int8' if qc.format == 'onnx' and qc.int8 else ''}: {weights.name} "
        f"{weights.stat().st_size / 1e6:.1f} MB (fp32 model.safetensors {source_bytes / 1e6:.1f} MB)")
    predictor = load_predictor(out)
    results["check"] = compare_with_fp32(model, predictor, _check_inputs(cfg, source, predictor, qc.check_examples))
    log(f"against fp32 on {results['check']['examples']} examples: {json.dumps(results['check'])}")
    results.update(_score(cfg, source, model, predictor, log))
    if run_label_names(source):
        results["labels"] = run_label_names(source)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    log(f"quantized run -> {out}")
    return results


def _check_inputs(cfg: Config, source: Path, predictor, n: int) -> list[tuple[torch.Tensor, ...]]:
    """Batches (of 32) of `n` examples to compare outputs on: the dev file's first texts for a
    classifier or encoder run made here, else seeded random token ids (32, or the model's limit)."""
    if n < 1:
        raise PretrainerError(f"config key 'quantize.check_examples' must be >= 1, got {n}")
    texts = []
    recipe = source_recipe(source)
    data = cfg.finetune.data if cfg.finetune.data.train else (recipe.finetune.data if recipe else None)
    if predictor.kind in ("classifier", "encoder") and data is not None and (data.dev or data.train) \
            and (data.format in ("auto", "label_text", "jsonl", "csv", "tsv")):
        from pretrainer.data.readers import read_labeled

        try:
            examples = read_labeled(data.dev or data.train, data)
            texts = examples.texts[:n]
        except PretrainerError:
            texts = []
    if texts:
        return [predictor.batch_inputs(texts[i:i + 32]) for i in range(0, len(texts), 32)]
    g = torch.Generator().manual_seed(0)
    length = min(32, predictor.max_len)
    vocab = predictor.tokenizer.vocab_size
    batches = []
    for first in range(0, n, 32):
        size = min(32, n - first) if predictor.kind != "generator" else 1
        ids = torch.randint(5, vocab, (size, length), generator=g)
        if predictor.kind != "generator":
            ids[:, 0] = predictor.tokenizer.cls_id
        batch = [ids, torch.ones_like(ids), torch.zeros_like(ids)]
        if predictor.case_features:
            batch.append(torch.zeros_like(ids))
        batches.append(tuple(batch))
        if predictor.kind == "generator" and len(batches) >= 8:
            break
    return batches


@torch.inference_mode()
def compare_with_fp32(model: nn.Module, predictor, batches: list[tuple[torch.Tensor, ...]]) -> dict:
    """Largest absolute difference of the main output (logits, or the hidden states) between
    the fp32 model and the quantized one, and for classifiers and taggers the share of argmax
    predictions that agree (over real tokens for a tagger)."""
    graph = InferenceGraph(model)
    max_diff, agree, total, examples = 0.0, 0, 0, 0
    scale = 0.0
    for inputs in batches:
        ref, got = graph(*inputs), predictor.forward(*inputs)
        if isinstance(ref, tuple):
            ref, got = ref[0], got[0]
        mask = inputs[1].bool()
        if ref.dim() == 3:  # per token: compare real tokens only
            ref, got = ref[mask], got[mask]
        max_diff = max(max_diff, float((ref.float() - got.float()).abs().max()))
        scale = max(scale, float(ref.float().abs().max()))
        if predictor.kind in ("classifier", "tagger", "generator"):
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            total += ref.shape[0]
        examples += inputs[0].shape[0]
    out = {"examples": examples, "max_abs_diff": round(max_diff, 6), "max_abs_fp32": round(scale, 6)}
    if total:
        out["argmax_agreement"] = round(agree / total, 6)
    return out


def _score(cfg: Config, source: Path, model: nn.Module, predictor, log) -> dict:
    """Dev/test metrics of the quantized run, through the same forward `predict` runs."""
    if predictor.kind not in ("classifier", "tagger"):
        return {}
    try:
        task = _task_of(model, source)
        ft = task_settings(cfg, source, task, _labels(source))
    except PretrainerError as e:
        log(f"not scored: {e}")
        return {}
    encode = task.encoder(predictor.tokenizer, ft.max_len, ft)
    module = predictor.batch_module()
    results = {}
    for split, path in (("dev", ft.data.dev), ("test", ft.data.test)):
        if path:
            dataset = task.read_evaluation_file(path, ft.data, encode, predictor.labels)
            results[split] = task.evaluate(module, dataset, predictor.labels, ft.train.batch_size, final=True)
            log(f"{split}: {task.describe(results[split])}")
    return results
