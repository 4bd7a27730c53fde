"""`pretrainer compare CONFIG`: what each pre-training recipe buys downstream, at equal budget.

Each variant (a config file: data, model, objective, train) is pre-trained for the same budget
(`compare.budget` or `compare.max_steps`) into `<dir>/pretrain/<variant>`, then every variant and
one shared from-scratch baseline (the first variant's architecture) are fine-tuned through
`curve` with this config's [finetune] and [curve]. Finished pre-training and fine-tuning runs
are reused, so an interrupted comparison continues where it stopped. Writes `compare.md` and
`compare.csv` (one row per variant and label amount) beside the curve's own files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pretrainer.api import pretrain
from pretrainer.config import Config, load_config
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.report import format_mean_std, results_table
from pretrainer.io import atomic_write_csv, atomic_write_text
from pretrainer.transfer.curve import curve

SCRATCH = "scratch"


def pretraining_record(run_dir: Path) -> dict:
    """Steps, tokens seen (steps x the run's global batch in tokens, one process) and the last
    held-out evaluation of a finished pre-training run."""
    steps, held_out = 0, {}
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        steps = max(steps, int(record["step"]))
        if record["split"] == "eval":
            held_out = record["metrics"]
    train = load_config(run_dir / "config.toml").train
    return {"steps": steps, "tokens": steps * train.batch_size * train.accum * train.seq_len, "held_out": held_out}


def compare(cfg: Config, log=print) -> list[dict]:
    variants = cfg.compare.variants
    if not variants:
        raise PretrainerError("config key 'compare.variants' is empty: list the pre-training configs to compare")
    names = [Path(v).stem for v in variants]
    if len(set(names)) < len(names) or SCRATCH in names:
        raise PretrainerError(f"config key 'compare.variants': file names must differ and not be {SCRATCH!r} "
                              f"(they name the rows): {names}")
    out = Path(cfg.compare.dir or Path(cfg.run.dir) / "compare")
    budget = ([f"--train.budget={cfg.compare.budget}"] if cfg.compare.budget else []) + \
        (["--train.budget=", f"--train.max_steps={cfg.compare.max_steps}"] if cfg.compare.max_steps else [])
    # Every variant's config is read and checked before the first one pre-trains: a typo in the
    # last file must not surface hours in.
    configs = {name: load_config(path, [f"--run.dir={out / 'pretrain' / name}", *budget])
               for name, path in zip(names, variants)}
    for path, variant in zip(variants, configs.values()):
        variant.check_pretraining(source=path)
    records, starts = {}, {}
    for name, path in zip(names, variants):
        run_dir = out / "pretrain" / name
        if not (run_dir / "model.safetensors").is_file():
            variant = configs[name]
            log(f"[compare] pre-training {name} ({path}) -> {run_dir}")
            pretrain(variant, resume=(run_dir / "checkpoints" / "latest").is_file(), log=log)
        records[name] = pretraining_record(run_dir)
        starts[name] = {"init": str(run_dir), "from_scratch": False, "method": "full"}
    starts[SCRATCH] = {"init": starts[names[0]]["init"], "from_scratch": True, "method": "full"}
    curve_cfg = cfg if cfg.curve.dir else dataclasses.replace(
        cfg, curve=dataclasses.replace(cfg.curve, dir=str(out / "curve")))
    summary = curve(curve_cfg, log=log, starts=starts)

    rows = []
    for r in summary:
        record = records.get(r["init"], {})
        held = record.get("held_out", {})
        rows.append({"variant": r["init"], "steps": record.get("steps", ""), "tokens": record.get("tokens", ""),
                     "held-out": ", ".join(f"{k} {v:.4g}" for k, v in held.items() if isinstance(v, float)),
                     "labels": r["labels"], "fraction": r["fraction"],
                     "accuracy": format_mean_std(r["mean"], r["std"], r["n"]), "seeds": r["n"]})
    atomic_write_csv(out / "compare.csv", rows)
    atomic_write_text(out / "compare.md", results_table(rows) + "\n")
    log(f"comparison written to {out / 'compare.md'}")
    return rows
