"""Evaluation-time cost of `linear_cross_entropy` (under torch.no_grad) in two checkouts.

    python benchmarks/eval_ce.py --before /path/to/old/checkout [--repeats 5] [--threads 2]

Loads `pretrainer/objectives/linear_ce.py` from this checkout ("after") and from `--before`,
and times the loss of (N, C) hidden states against a (V, C) output matrix under no_grad at
the shapes of the CLM benchmark rows (N = 32 x 128 positions, C = 256; V = 8,192 and
50,257) and of BERT-mini MLM (N = 32 x 19 masked positions, V = 30,522). Repeats are
interleaved (before, after, before, ...); medians. One JSON line per (shape, checkout).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent.parent
SHAPES = {"clm-8k": (32 * 128, 256, 8192), "clm-50k": (32 * 128, 256, 50257), "mlm-mini": (32 * 19, 256, 30522)}


def load(repo: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, repo / "pretrainer" / "objectives" / "linear_ce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_call(fn, min_seconds: float) -> float:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    impls = {"before": load(args.before, "linear_ce_before"), "after": load(HERE, "linear_ce_after")}
    for shape, (n, c, v) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        # Parameters that require grad, as in a model being evaluated between training steps.
        hidden = torch.randn(n, c, generator=g)
        weight = (0.02 * torch.randn(v, c, generator=g)).requires_grad_()
        bias = torch.zeros(v, requires_grad=True)
        targets = torch.randint(0, v, (n,), generator=g)
        samples = {name: [] for name in impls}
        for _ in range(args.repeats):
            for name, module in impls.items():
                def run(module=module):
                    with torch.no_grad():
                        module.linear_cross_entropy(hidden, weight, targets, bias)
                samples[name].append(time_call(run, args.seconds))
        for name, values in samples.items():
            print(json.dumps({"kind": "eval_ce", "shape": shape, "n": n, "c": c, "v": v, "impl": name,
                              "threads": args.threads, "ms_median": 1000 * statistics.median(values),
                              "samples_ms": [round(1000 * x, 2) for x in values]}), flush=True)
        ratio = statistics.median(b / a for b, a in zip(samples["before"], samples["after"]))
        print(json.dumps({"kind": "eval_ce_ratio", "shape": shape, "before_over_after": ratio}), flush=True)


if __name__ == "__main__":
    main()
