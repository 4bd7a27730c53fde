"""Tables and plots of results: Markdown tables, mean ± std over seeds, PNG figures.

Figures are drawn on a bare `matplotlib.figure.Figure` with the Agg canvas, so nothing
here touches pyplot's global state or needs a display. PNGs are written to a temporary
file beside the target and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pretrainer.errors import PretrainerError
from pretrainer.evaluation.metrics import mean_std


def _cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        text = float_format.format(value)
    else:
        text = str(value)
    # A pipe would end the cell early; a newline would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(
    rows: Sequence[dict], columns: Sequence[str] | None = None, float_format: str = "{:.4g}"
) -> str:
    """A Markdown table of `rows` (dicts) with one column per key in `columns`.

    `columns` defaults to every key, in first-seen order. Missing keys give empty cells;
    floats use `float_format`; columns holding only numbers (or nothing) are right-aligned.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(col), float_format) for col in columns] for row in rows]
    numeric = []
    for col in columns:
        present = [row[col] for row in rows if row.get(col) is not None]
        numeric.append(bool(present) and all(
            isinstance(v, numbers.Number) and not isinstance(v, bool) for v in present
        ))
    widths = [
        max([len(str(col)), 3] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if right else "-" * (w + 2)
                          for w, right in zip(widths, numeric)) + "|"
    header = line([_cell(col, float_format) for col in columns])
    return "\n".join([header, rule] + [line(values) for values in cells]) + "\n"


def _sort_key(values: tuple) -> tuple:
    # Numbers sort numerically (10 < 100), everything else by its text, numbers first.
    return tuple(
        (0, float(v), "") if isinstance(v, numbers.Real) else (1, 0.0, str(v)) for v in values
    )


def summarize(runs: Sequence[dict], group_by: Sequence[str], metric: str) -> list[dict]:
    """Mean and sample std of `metric` over the runs that share the `group_by` values.

    Each row is `{**group values, "metric": metric, "mean", "std", "n"}`; rows are sorted by
    the group values (numbers numerically). Typically the runs differ only by seed.
    """
    groups: dict[tuple, list[float]] = {}
    for i, run in enumerate(runs):
        missing = [key for key in [*group_by, metric] if key not in run]
        if missing:
            raise PretrainerError(f"run {i} has no {', '.join(map(repr, missing))}")
        groups.setdefault(tuple(run[key] for key in group_by), []).append(float(run[metric]))
    summary = []
    for key in sorted(groups, key=_sort_key):
        mean, std = mean_std(groups[key])
        row = dict(zip(group_by, key))
        row.update(metric=metric, mean=mean, std=std, n=len(groups[key]))
        summary.append(row)
    return summary


def format_mean_std(
    mean: float, std: float, n: int | None = None, percent: bool = True, digits: int = 1
) -> str:
    """`"85.3 ± 1.2"`; `percent=True` shows a fraction (0.853) as a percentage.

    With `n == 1` there is no spread to show, so the result is `"85.3 (n=1)"`.
    """
    scale = 100.0 if percent else 1.0
    text = f"{mean * scale:.{digits}f}"
    if n is not None and n < 2:
        return f"{text} (n={n})"
    return f"{text} ± {std * scale:.{digits}f}"


def _save_atomically(fig: Figure, out_png: str | os.PathLike) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def plot_label_efficiency(
    summary: Sequence[dict],
    out_png: str | os.PathLike,
    metric: str,
    x_key: str = "labels",
    group_key: str = "init",
    title: str | None = None,
    percent: bool = True,
) -> Path:
    """One line per `group_key` value (e.g. "pre-trained", "scratch") of mean `metric` with
    ±std error bars against `x_key` (number of labeled examples) on a log x-axis.

    `summary` is the output of `summarize(runs, [group_key, x_key], metric)`; rows for other
    metrics are ignored. Returns the PNG path.
    """
    rows = [row for row in summary if row.get("metric", metric) == metric]
    if not rows:
        raise PretrainerError(f"no summary rows for metric {metric!r} to plot")
    scale = 100.0 if percent else 1.0
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(row[group_key] for row in rows))
    for group in groups:
        points = sorted((row[x_key], row["mean"], row["std"]) for row in rows
                        if row[group_key] == group)
        xs, means, stds = zip(*points)
        ax.errorbar(xs, [m * scale for m in means], yerr=[s * scale for s in stds],
                    marker="o", capsize=3, label=str(group))
    ax.set_xscale("log")
    ax.set_xlabel(f"{x_key} (log scale)")
    ax.set_ylabel(f"{metric} (%)" if percent else metric)
    ax.set_title(title if title is not None else f"{metric} vs {x_key}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title=group_key)
    fig.tight_layout()
    return _save_atomically(fig, out_png)


def _read_metrics(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PretrainerError(f"{path}: cannot read metrics ({exc.strerror})") from None
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # A run still writing (or killed mid-write) leaves a partial last line.
            if lineno == len(lines):
                continue
            raise PretrainerError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from None
        # The trainer nests values under "metrics"; flat records are accepted too.
        records.append({**record, **record.get("metrics", {})})
    return records


def _eval_loss_key(record: dict) -> str | None:
    if "loss" in record:
        return "loss"
    return next((key for key in record if key.endswith("_loss")), None)


# The twin axis restarts matplotlib's colour cycle; these keep its lines apart from the loss.
_ACC_COLORS = ["tab:green", "tab:red", "tab:purple", "tab:brown"]


def plot_training_curves(metrics_jsonl_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Loss against step from a run's `metrics.jsonl`: a line for `split == "train"` records
    and markers for `split == "eval"` records (their `loss`, else their first `*_loss`).
    Eval accuracies (`*_acc`) go on a second y-axis. Returns the PNG path.
    """
    path = Path(metrics_jsonl_path)
    records = _read_metrics(path)

    def finite(value: Any) -> bool:
        return isinstance(value, numbers.Real) and math.isfinite(value)

    train = [(r["step"], r["loss"]) for r in records
             if r.get("split") == "train" and finite(r.get("loss")) and "step" in r]
    evals: dict[str, list[tuple[int, float]]] = {}
    accs: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.get("split") != "eval" or "step" not in r:
            continue
        key = _eval_loss_key(r)
        if key is not None and finite(r[key]):
            evals.setdefault(key, []).append((r["step"], r[key]))
        for acc_key in (k for k in r if k.endswith("_acc") and finite(r[k])):
            accs.setdefault(acc_key, []).append((r["step"], r[acc_key]))
    if not train and not evals:
        raise PretrainerError(f"{path}: no train or eval loss values to plot")

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    for key, points in evals.items():
        ax.plot(*zip(*points), marker="o", linestyle="--", label=f"eval {key}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if accs:
        ax_acc = ax.twinx()
        for (key, points), color in zip(accs.items(), _ACC_COLORS * len(accs)):
            ax_acc.plot(*zip(*points), marker="s", linestyle=":", color=color,
                        label=f"eval {key}")
        ax_acc.set_ylabel("accuracy")
        more_handles, more_labels = ax_acc.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="best")
    ax.set_title(path.parent.name or "training curves")
    fig.tight_layout()
    return _save_atomically(fig, out_png)
