"""Inference latency of run directories through `pretrainer predict`'s path, for the compression table.

    python benchmarks/latency.py RUN_DIR [RUN_DIR ...]                 # SST-2 dev, batch 1 and 32, 2 threads
    python benchmarks/latency.py A B --input FILE --repeats 7 --seconds 3 --output results.jsonl

Each run directory is loaded once with `pretrainer.predict.load_predictor` (fp32, pruned, int8
and ONNX runs alike) and timed on `Predictor.predict(records)`: tokenization, padding, the
forward pass and the JSON-ready outputs, what a deployed `predict` does per batch. All runs
live in one process with the same thread count (torch intra-op threads and ONNX Runtime's
intra-op threads). Repeats are interleaved: every repeat times every (run, batch size) once,
the runs in a rotated order, so a slow minute of a shared machine lands on all of them; a
measurement is as many consecutive batches of the input as fit in `--seconds`, and its
latency is the mean time per batch. The table reports the median over repeats.

With labels in the input (a label_text file such as SST-2's, or jsonl/csv with a label
column), every run also predicts the whole file once at batch 32 and its accuracy is
reported: the same predictions `pretrainer predict` would write.

stdout: one JSON line per run, then a markdown table (speed-ups against the first run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SST2_DEV = REPO.parent / "shared" / "data" / "classification" / "sst2" / "dev.txt"


def read_input(path: Path, text_field: str, label_field: str, labeled: bool) -> tuple[list[dict], list[str] | None]:
    """(records, gold labels or None): a labeled file (txt as `label text` lines, or jsonl/csv with
    a label column), or with `labeled` false any file predict reads."""
    from pretrainer.config import LabeledDataConfig
    from pretrainer.data.readers import read_labeled, read_records

    if not labeled:
        return [record for _, record in read_records(path)], None
    examples = read_labeled(path, LabeledDataConfig(text_field=text_field, label_field=label_field))
    return [{"text": t} for t in examples.texts], examples.labels


def file_size(run: Path) -> int:
    spec = json.loads((run / "model.json").read_text())
    name = (spec.get("inference") or {}).get("file", "model.safetensors")
    return (run / name).stat().st_size


def parameters(run: Path) -> int:
    """Parameters of the run's architecture (for int8 and ONNX runs: of the model they hold)."""
    from pretrainer.runs import module_from_spec

    spec = json.loads((run / "model.json").read_text())
    return sum(p.numel() for p in module_from_spec(spec).parameters())


def time_batches(predictor, records: list[dict], batch_size: int, n_batches: int, start: int) -> float:
    """Seconds per batch over `n_batches` consecutive batches of `records` from `start` (cycling)."""
    n = len(records)
    batches = [[records[(start + b * batch_size + i) % n] for i in range(batch_size)] for b in range(n_batches)]
    began = time.perf_counter()
    for batch in batches:
        predictor.predict(batch)
    return (time.perf_counter() - began) / n_batches


def accuracy(predictor, records: list[dict], gold: list[str]) -> float:
    right = 0
    for first in range(0, len(records), 32):
        outputs = predictor.predict(records[first:first + 32])
        right += sum(o["label"] == g for o, g in zip(outputs, gold[first:first + 32]))
    return right / len(records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories; the first is the baseline of the speed-ups")
    parser.add_argument("--input", default=str(SST2_DEV), help="texts to predict (default: SST-2 dev)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per measurement")
    parser.add_argument("--unlabeled", action="store_true", help="the input has no labels (a txt file is then "
                                                                     "one text per line, not `label text`)")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy pass")
    parser.add_argument("--output", help="also write the JSON lines here")
    args = parser.parse_args(argv)

    import torch

    from pretrainer.predict import load_predictor

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    records, gold = read_input(Path(args.input), args.text_field, args.label_field, not args.unlabeled)
    runs = [Path(r) for r in args.runs]
    predictors = {run: load_predictor(run, threads=args.threads) for run in runs}
    n_batches = {}
    for run, predictor in predictors.items():  # warm up, and size each measurement to --seconds
        for bs in sizes:
            time_batches(predictor, records, bs, 1, 0)
            per_batch = time_batches(predictor, records, bs, 2, bs)
            n_batches[run, bs] = max(1, math.ceil(args.seconds / per_batch))
    times: dict[tuple[Path, int], list[float]] = {key: [] for key in n_batches}
    for repeat in range(args.repeats):
        order = runs[repeat % len(runs):] + runs[:repeat % len(runs)]
        for bs in sizes:
            for run in order:
                start = (repeat * 997) % len(records)
                times[run, bs].append(time_batches(predictors[run], records, bs, n_batches[run, bs], start))
        print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    rows = []
    for run in runs:
        p = predictors[run]
        row = {"run": str(run), "backend": p.backend, "kind": p.kind, "params": parameters(run),
               "file_mb": round(file_size(run) / 1e6, 2), "threads": args.threads, "repeats": args.repeats}
        for bs in sizes:
            row[f"latency_ms_b{bs}"] = round(1000 * statistics.median(times[run, bs]), 2)
            row[f"all_ms_b{bs}"] = [round(1000 * t, 2) for t in times[run, bs]]
        if gold is not None and p.kind == "classifier" and not args.no_accuracy:
            row["accuracy"] = round(accuracy(p, records, gold), 4)
            row["n_examples"] = len(records)
        rows.append(row)
    lines = [json.dumps(row) for row in rows]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
    base = rows[0]
    header = ["run", "backend", "params", "file MB"] + [f"b{bs} ms (x)" for bs in sizes] + ["accuracy"]
    print("\n| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for row in rows:
        cells = [os.path.basename(row["run"].rstrip("/")) or row["run"], row["backend"], f"{row['params']:,}",
                 f"{row['file_mb']:.1f}"]
        for bs in sizes:
            ms = row[f"latency_ms_b{bs}"]
            cells.append(f"{ms:.1f} ({base[f'latency_ms_b{bs}'] / ms:.2f}x)")
        cells.append(f"{row['accuracy']:.4f}" if "accuracy" in row else "-")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
