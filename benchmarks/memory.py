"""Training memory against corpus size: the same BERT-mini MLM run on IMDB unsup and on a
corpus 10x larger (the 50,000 reviews written ten times, each copy numbered so that no
two documents are equal). Prints one JSON line per (corpus, phase) with the peak RSS of
the process that ran it, measured by /usr/bin/time.

    python benchmarks/memory.py [--steps 50] [--out DIR]

Shards are memory-mapped, so training should need the same memory whatever the corpus
size; preparation tokenizes into memory before writing, so it grows with the corpus.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMDB_UNSUP = ROOT.parent / "shared" / "data" / "classification" / "imdb" / "unsup.jsonl.gz"


def write_corpus(path: Path, copies: int) -> int:
    """IMDB unsup as plain text, `copies` times; returns the number of documents."""
    with gzip.open(IMDB_UNSUP, "rt", encoding="utf-8") as f:
        reviews = [json.loads(line)["text"].replace("\n", " ") for line in f if line.strip()]
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(copies):
            for review in reviews:
                out.write(f"copy {copy}. {review}\n")
    return copies * len(reviews)


def peak_rss_mb(args: list[str]) -> float:
    """Run `python -m pretrainer ARGS` under /usr/bin/time; its maximum resident set in MB."""
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB %M", sys.executable, "-m", "pretrainer", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    kb = [line for line in done.stderr.splitlines() if line.startswith("MAXRSS_KB")][-1].split()[1]
    return int(kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="")
    parser.add_argument("--tokenizer", default=str(ROOT / "runs" / "bert-mini-imdb" / "tokenizer.json"),
                        help="a tokenizer.json to load (training one is not what this measures)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="pretrainer-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    for copies in (1, 10):
        corpus = out / f"imdb-x{copies}.txt"
        docs = write_corpus(corpus, copies)
        common = [str(ROOT / "configs" / "bert-mini-imdb.toml"), f"--run.dir={out / f'run-x{copies}'}",
                  f"--data.train=[\"{corpus}\"]", "--data.format=txt", f"--data.cache_dir={out / 'cache'}",
                  f"--tokenizer.path={args.tokenizer}", "--impl.progress=false"]
        prepare_mb = peak_rss_mb(["prepare", *common])
        train_mb = peak_rss_mb(["pretrain", *common, "--train.budget=", f"--train.max_steps={args.steps}",
                                "--train.eval_every=0", "--train.save_every=0"])
        shard_mb = sum(p.stat().st_size for p in (out / "cache").rglob("train.npy")) / 2**20
        for phase, mb in (("prepare", prepare_mb), ("train", train_mb)):
            print(json.dumps({"corpus": f"imdb-unsup x{copies}", "documents": docs, "phase": phase,
                              "steps": args.steps if phase == "train" else None,
                              "peak_rss_mb": round(mb, 1), "all_shards_mb": round(shard_mb, 1)}), flush=True)


if __name__ == "__main__":
    main()
