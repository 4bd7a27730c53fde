"""Label-efficiency curve: fine-tune each start over label fractions and seeds, then summarise.

The same stratified subset (chosen by the seed) is used for every start, so the only
difference between, say, "pre-trained" and "scratch" at a given fraction and seed is the
initial weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pretrainer.config import Config, validate
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_csv, atomic_write_text
from pretrainer.registry import TASKS
from pretrainer.transfer.finetune import finetune


def curve_starts(cfg: Config) -> dict[str, dict]:
    """Name -> finetune-section changes for each (start, method) to compare.

    Every listed method runs on the pre-trained start and on each of `curve.inits`; the
    scratch baseline is full fine-tuning only (a frozen random backbone says nothing).
    """
    methods = cfg.curve.methods or ["full"]
    starts: dict[str, dict] = {}

    def add(start: str, init: str):
        for method in methods:
            name = start if len(methods) == 1 else f"{start} {method}"
            starts[name] = {"init": init, "from_scratch": False, "method": method}

    if cfg.finetune.init:
        add("pre-trained", cfg.finetune.init)
        if cfg.curve.scratch:
            starts["scratch"] = {"init": cfg.finetune.init, "from_scratch": True, "method": "full"}
    for init in cfg.curve.inits:
        add(init, init)
    if not starts:
        raise PretrainerError("nothing to compare: set finetune.init and/or curve.inits")
    return starts


def label_amount(fraction: float) -> dict:
    """A curve point as finetune changes: a fraction (<= 1) or a number of labels (> 1; the
    config's rules have made it a whole number)."""
    if fraction > 1:
        return {"label_fraction": 1.0, "n_labels": int(fraction)}
    return {"label_fraction": fraction, "n_labels": 0}


def curve(cfg: Config, log=print, starts: dict[str, dict] | None = None) -> list[dict]:
    """Runs every (start, fraction, seed); returns the summary rows (mean ± std over seeds).

    `starts` (name -> finetune changes, as `curve_starts` gives) replaces the starts the config
    names, for callers comparing starts of their own (`pretrainer compare`)."""
    validate(cfg)  # [curve] as a loaded config would be: whole label counts above 1, seeds in range
    if not TASKS.get(cfg.finetune.task).labeled:
        raise PretrainerError(f"config key 'finetune.task' = {cfg.finetune.task!r}: curve tabulates accuracy over "
                              f"label fractions; compare starts with `pretrainer finetune` (and "
                              f"--finetune.from_scratch=true), which scores ROUGE")
    # report.py imports matplotlib: only a curve needs it.
    from pretrainer.evaluation.report import format_mean_std, plot_label_efficiency, results_table, summarize

    out = Path(cfg.curve.dir or Path(cfg.run.dir) / "curve")
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, changes in (starts or curve_starts(cfg)).items():
        scratch = changes["from_scratch"] and cfg.curve.scratch_fractions
        for fraction in cfg.curve.scratch_fractions if scratch else cfg.curve.fractions:
            for seed in cfg.curve.seeds:
                run_dir = out / "runs" / f"{_slug(name)}-{fraction:g}-seed{seed}"
                results = _finished(run_dir)
                if results is None:  # finished runs are reused, so an interrupted curve continues
                    run_cfg = dataclasses.replace(
                        cfg, run=dataclasses.replace(cfg.run, seed=seed),
                        finetune=dataclasses.replace(cfg.finetune, **changes, **label_amount(fraction),
                                                     dir=str(run_dir)))
                    results = finetune(run_cfg, log=lambda *_: None)
                split = "dev" if "dev" in results else "test"
                runs.append({"init": name, "fraction": fraction, "labels": results["n_labels"], "seed": seed,
                             "accuracy": results[split]["accuracy"], "macro_f1": results[split]["macro_f1"],
                             "trainable_params": results.get("trainable_params", ""),
                             "seconds": results["train_seconds"]})
                log(f"{name:>14}  {_labels_cell(fraction, results['n_labels']):>14} labels  seed {seed}  "
                    f"{split} accuracy {results[split]['accuracy']:.4f}  ({results['train_seconds']:.0f}s)")

    atomic_write_csv(out / "runs.csv", runs)
    summary = summarize(runs, ["init", "labels", "fraction"], "accuracy")  # ordered by number of labels
    f1 = {(r["init"], r["fraction"]): r for r in summarize(runs, ["init", "fraction"], "macro_f1")}
    trainable = {r["init"]: r["trainable_params"] for r in runs}
    seconds = {(r["init"], r["fraction"]): r["mean"] for r in summarize(runs, ["init", "fraction"], "seconds")}
    table = results_table([
        {"init": r["init"], "labels": _labels_cell(r["fraction"], r["labels"]),
         "accuracy": format_mean_std(r["mean"], r["std"], r["n"]),
         "macro-F1": format_mean_std(f1[r["init"], r["fraction"]]["mean"], f1[r["init"], r["fraction"]]["std"],
                                     r["n"]),
         "trainable params": f"{trainable[r['init']]:,}" if trainable[r["init"]] != "" else "",
         "seconds": f"{seconds[r['init'], r['fraction']]:.0f}",
         "seeds": r["n"]} for r in summary])
    atomic_write_text(out / "summary.md", table + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if len({r["fraction"] for r in runs}) > 1:
        plot_label_efficiency(summary, out / "label_efficiency.png", metric="accuracy",
                              title="accuracy vs number of labels (mean ± std over seeds)")
    log(table)
    log(f"curve written to {out} (runs.csv, summary.md, summary.json"
        f"{', label_efficiency.png' if len({r['fraction'] for r in runs}) > 1 else ''})")
    return summary


def _labels_cell(fraction: float, labels: int) -> str:
    """"1% (69)" for a fraction, "32" for a count, "0" for zero-shot (which uses no labels)."""
    return f"{labels:,}" if fraction > 1 or labels == 0 else f"{fraction:.0%} ({labels:,})"


def _finished(run_dir: Path) -> dict | None:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_")
