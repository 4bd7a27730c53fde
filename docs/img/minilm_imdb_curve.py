"""Redraw docs/img/minilm-imdb-curve.png and print its table from the README's IMDB runs.

The MiniLM IMDB curve was run in two `pretrainer curve` directories with different seed
counts (the 100% points cost 1.1-1.8 h each on 2 cores, so they have fewer seeds), which one
`curve` command cannot summarise together; this reads every finished run of both:
    .venv/bin/python docs/img/minilm_imdb_curve.py
"""

import json
from pathlib import Path

from pretrainer.evaluation.report import format_mean_std, plot_label_efficiency, results_table, summarize

CURVE_DIRS = ["runs/minilm-imdb-curve/curve", "runs/minilm-imdb-curve/curve-seeds"]


def finished_runs() -> list[dict]:
    """One row per (start, fraction, seed); a run found in both directories counts once."""
    runs = {}
    for curve_dir in CURVE_DIRS:
        for path in sorted(Path(curve_dir).glob("runs/*/results.json")):
            r = json.loads(path.read_text())
            init = "scratch" if r["init"].startswith("scratch") else "pre-trained"
            runs[init, r["label_fraction"], r["seed"]] = {
                "init": init, "fraction": r["label_fraction"], "labels": r["n_labels"], "seed": r["seed"],
                "accuracy": r["test"]["accuracy"], "seconds": r["train_seconds"]}
    return list(runs.values())


def main() -> None:
    runs = finished_runs()
    summary = summarize(runs, ["init", "labels", "fraction"], "accuracy")
    seeds = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        seeds.setdefault((r["init"], r["fraction"]), []).append(f"{100 * r['accuracy']:.1f}")
    print(results_table([{"init": r["init"], "labels": f"{r['fraction']:.0%} ({r['labels']:,})",
                          "test accuracy": format_mean_std(r["mean"], r["std"], r["n"]),
                          "per seed": ", ".join(seeds[r["init"], r["fraction"]]), "seeds": r["n"]}
                         for r in summary]))
    plot_label_efficiency(summary, Path(__file__).with_name("minilm-imdb-curve.png"), metric="accuracy",
                          title="IMDB, MiniLM: test accuracy (mean ± std over seeds)")


if __name__ == "__main__":
    main()
