"""The objective table from whatever runs of `pretrainer compare configs/compare-imdb.toml` have
finished (this session could not finish them all): one row per variant and label fraction,
mean ± std over the seeds that exist, with each pre-training's steps and last held-out metrics.
Writes runs.csv (one line per fine-tuning run) and table.md into OUT (default: beside this script).

    python docs/results/2026-12-03-compare-imdb/table.py [runs/compare-imdb [OUT]]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from pretrainer.compare import pretraining_record

HERE = Path(__file__).parent


def main(root: Path, out: Path = HERE) -> None:
    runs = []
    for path in sorted((root / "curve" / "runs").glob("*/results.json")):
        name, fraction, seed = path.parent.name.rsplit("-", 2)
        result = json.loads(path.read_text())
        runs.append({"variant": name, "fraction": float(fraction), "seed": int(seed.removeprefix("seed")),
                     "labels": result["n_labels"], "dev_accuracy": result["dev"]["accuracy"],
                     "train_seconds": round(result["train_seconds"])})
    with open(out / "runs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)

    lines = ["| variant | steps | tokens | held-out (last eval) | labels | SST-2 dev accuracy | seeds |",
             "|---|---:|---:|---|---|---|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        run_dir = root / "pretrain" / variant
        record = pretraining_record(run_dir) if (run_dir / "metrics.jsonl").is_file() else {}
        held = ", ".join(f"{k} {v:.3g}" for k, v in record.get("held_out", {}).items()
                         if isinstance(v, float) and not k.endswith("ppl"))
        for fraction in sorted({r["fraction"] for r in runs if r["variant"] == variant}):
            picked = [r for r in runs if r["variant"] == variant and r["fraction"] == fraction]
            accs = [100 * r["dev_accuracy"] for r in picked]
            cell = f"{statistics.mean(accs):.1f} ± {statistics.stdev(accs):.1f}" if len(accs) > 1 else f"{accs[0]:.1f}"
            lines.append(f"| {variant} | {record.get('steps', '')} | {record.get('tokens', '')} | {held} | "
                         f"{fraction:.0%} ({picked[0]['labels']:,}) | {cell} | {len(accs)} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/compare-imdb"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else HERE)
