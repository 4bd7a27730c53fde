"""The run-directory contract: what a run folder holds and how it is read back.

  config.toml        the resolved config (defaults filled in)
  model.json         {"name", "config", ...}: the architecture, enough to rebuild the module
  tokenizer.json     the tokenizer the model's ids refer to (an image run: image_processor.json,
                     the image size and channels it reads)
  model.safetensors  final weights (checkpoints/ holds the resumable states)
  results.json / imported_from.json   what a fine-tuning run or an import recorded

Commands that read a run go through `load_run`, so every one accepts the same folders and
fails with the same one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pretrainer.config import Config, read_config_file, resume_changes, save_config
from pretrainer.data.image_processor import load_processor
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text, load_model_state, read_json, read_model_state
from pretrainer.models import model_config_dict, model_from_config_dict
from pretrainer.objectives.heads import HEADS, PretrainingModel, nest_backbone_keys, pretraining_model


def write_run_header(run_dir: str | Path, cfg: Config | None, model: nn.Module, data) -> None:
    """config.toml (when given), model.json and what `data` (a data module, or a tokenizer)
    saves to read new inputs the same way: what a run needs before any weights."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        save_config(cfg, run_dir / "config.toml")
    atomic_write_text(run_dir / "model.json", json.dumps(module_spec(model), indent=2))
    data.save(run_dir)


def check_resume(run_dir: str | Path, cfg: Config, keys: tuple[str, ...], world_size: int | None = None) -> None:
    """Refuse `--resume` when `cfg` would change the run saved in `run_dir` among `keys` (what the
    command's run is made of), naming each changed key; called before anything is written, so a
    refused resume leaves the run as it was. What may change is declared on the config fields
    (`resume=` in config.py: impl.*, train.log_every, a longer train.max_steps, ...).

    With `world_size` (pre-training), what must stay is the global batch, not the per-process
    one: a run of 2 processes x 4 sequences resumes as 1 process x 8 (training.distributed)."""
    saved = Path(run_dir) / "config.toml"
    if not saved.is_file():
        return
    saved_config = read_config_file(saved)
    changes = []
    saved_global = _saved_global_batch(Path(run_dir)) if world_size else None
    if saved_global is not None:
        new_global = cfg.train.batch_size * world_size
        if new_global != saved_global:
            changes.append(f"global batch (train.batch_size x processes): {saved_global} -> {new_global}")
        saved_config.setdefault("train", {})["batch_size"] = cfg.train.batch_size  # compared as the global batch
    changes += resume_changes(saved_config, cfg, keys)
    if changes:
        raise PretrainerError(f"{run_dir}: --resume would change the run: {'; '.join(changes)}; resume with "
                              f"the settings in {saved} or start a new run directory")


def _saved_global_batch(run_dir: Path) -> int | None:
    """The global batch the run's latest checkpoint was trained with (its loader state), if recorded."""
    latest = run_dir / "checkpoints" / "latest"
    try:
        state = json.loads((run_dir / "checkpoints" / latest.read_text().strip() / "state.json").read_text())
        return int(state["extra"]["loader"]["global_batch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no checkpoint yet, or one written before the global batch was recorded


def module_spec(module: nn.Module) -> dict:
    """What model.json holds: the architecture, a classifier's or tagger's head, and the
    pre-training heads around the backbone (`"heads": ["mlm_head"]`; a head sized by its
    objective carries its config: `{"name": "generator", "config": {...}}`)."""
    if isinstance(module, PretrainingModel):
        return {**model_config_dict(module.backbone), "heads": module.head_specs()}
    return model_config_dict(module)


def module_from_spec(spec: dict) -> nn.Module:
    """Inverse of `module_spec`: a freshly initialised module of that shape."""
    model = model_from_config_dict(spec)
    return pretraining_model(model, spec["heads"]) if "heads" in spec else model


def upgrade_saved_run(spec: dict, state: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """Runs written before the pre-training heads moved out of the backbone kept them inside
    it: a pre-training run's keys were flat (`embeddings.*`, `mlm_head.*`), a fine-tuned
    classifier's backbone carried `backbone.mlm_head.*`. Both load as today's modules."""
    pretrained_heads = tuple(f"backbone.{name}." for name in HEADS)
    if "classifier" in spec or "tagger" in spec:
        return spec, {k: v for k, v in state.items() if not k.startswith(pretrained_heads)}
    if "heads" in spec or any(k.startswith("backbone.") for k in state):
        return spec, state
    heads = [name for name in HEADS if any(k.startswith(name + ".") for k in state)]
    return {**spec, "heads": heads}, nest_backbone_keys(state, heads)


def load_run(run_dir: str | Path):
    """(module, tokenizer) from a run directory: the shape from model.json, weights from
    model.safetensors. A pre-training run gives its `PretrainingModel` (backbone + heads). An
    image run gives its ImageProcessor where a text run gives its tokenizer."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "model.json"
    if not spec_path.is_file():
        raise PretrainerError(f"{run_dir}: not a run directory (no model.json)")
    inference = read_json(spec_path).get("inference")
    if inference:  # written by `pretrainer quantize`: loaded by pretrainer.predict, not as a module
        raise PretrainerError(f"{run_dir}: holds a {inference.get('format', 'quantized')} model for inference only "
                              f"(`pretrainer predict`); train, prune or export its source, "
                              f"{inference.get('source', 'the run it was made from')}")
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise PretrainerError(f"{run_dir}: no model.safetensors yet (is the run finished? "
                              f"resume it with --resume)")
    spec, state = upgrade_saved_run(read_json(spec_path), read_model_state(weights))
    model = module_from_spec(spec)
    load_model_state(model, state, weights, strict=True)
    return model, load_processor(run_dir)


def run_label_names(run_dir: str | Path) -> list[str] | None:
    """The label names of a run's head, in output order: from results.json (fine-tuned here)
    or imported_from.json (imported from Hugging Face); None when neither has them."""
    for record in ("results.json", "imported_from.json"):
        path = Path(run_dir) / record
        if path.is_file():
            labels = read_json(path).get("labels")
            if labels:
                return [str(label) for label in labels]
    return None
