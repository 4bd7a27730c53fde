"""The run-directory contract: what a run folder holds and how it is read back.

  config.toml        the resolved config (defaults filled in)
  model.json         {"name", "config", ...}: the architecture, enough to rebuild the module
  tokenizer.json     the tokenizer the model's ids refer to
  model.safetensors  final weights (checkpoints/ holds the resumable states)
  results.json / imported_from.json   what a fine-tuning run or an import recorded

Commands that read a run go through `load_run`, so every one accepts the same folders and
fails with the same one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pretrainer.config import Config, save_config
from pretrainer.data.tokenizer import load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text, load_weights, read_json
from pretrainer.models import model_config_dict, model_from_config_dict


def write_run_header(run_dir: str | Path, cfg: Config | None, model: nn.Module, tokenizer) -> None:
    """config.toml (when given), model.json and tokenizer.json: what a run needs before any weights."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        save_config(cfg, run_dir / "config.toml")
    atomic_write_text(run_dir / "model.json", json.dumps(model_config_dict(model), indent=2))
    tokenizer.save(run_dir)


def load_run(run_dir: str | Path):
    """(model, tokenizer) from a run directory: architecture from model.json, weights from model.safetensors."""
    run_dir = Path(run_dir)
    spec_path = run_dir / "model.json"
    if not spec_path.is_file():
        raise PretrainerError(f"{run_dir}: not a run directory (no model.json)")
    model = model_from_config_dict(json.loads(spec_path.read_text()))
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise PretrainerError(f"{run_dir}: no model.safetensors yet (is the run finished? "
                              f"resume it with --resume)")
    load_weights(model, weights)
    return model, load_tokenizer(run_dir)


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
