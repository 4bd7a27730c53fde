"""Training memory against corpus size: the same BERT-mini MLM run on IMDB unsup and on a
corpus 10x larger (the 50,000 reviews written ten times, each copy numbered so that no
two documents are equal). Prints one JSON line per (corpus, phase) with the peak RSS of
the process that ran it, read from /proc/self/status in that process.

    python benchmarks/memory.py [--steps 50] [--out DIR] [--copies 1,10] [--phases prepare,train]   # Linux

Shards are memory-mapped, so training should need the same memory whatever the corpus
size; preparation appends each batch of encoded documents to disk, so it should too
(only a one-byte hold-out flag per document stays in memory).
Two numbers per phase: the peak resident set (VmHWM), which also counts the corpus pages
the memory map has touched (file-backed, clean, reclaimable page cache), and the peak
anonymous memory (RssAnon, sampled every 20 ms): what the process itself allocated.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
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


def measured_run(args: list[str]) -> dict:
    """`pretrainer ARGS` in a child process; its peak RSS and peak anonymous memory in MB."""
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(args: list[str]) -> None:
    """Run the CLI in this process while a thread samples RssAnon; print the peaks as JSON."""
    import contextlib
    import io
    import threading
    import time

    from pretrainer.cli.main import main as cli_main

    peak_anon = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        code = cli_main(args)
    done.set()
    sampler.join()
    peak_anon[0] = max(peak_anon[0], _status_kb("RssAnon"))
    print(json.dumps({"rc": code, "shards_were_cached": "using cached shards" in captured.getvalue(),
                      "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
                      "peak_anon_mb": round(peak_anon[0] / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", default="")
    parser.add_argument("--tokenizer", default=str(ROOT / "runs" / "bert-mini-imdb" / "tokenizer.json"),
                        help="a tokenizer.json to load (training one is not what this measures)")
    parser.add_argument("--copies", default="1,10", help="corpus sizes to measure, in copies of IMDB unsup")
    parser.add_argument("--phases", default="prepare,train", help="prepare and/or train")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    if not Path(args.tokenizer).is_file():
        raise SystemExit(f"{args.tokenizer}: no such tokenizer file; pass --tokenizer PATH (any WordPiece "
                         "tokenizer.json, e.g. a run directory's)")
    phases = args.phases.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="pretrainer-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    for copies in map(int, args.copies.split(",")):
        corpus = out / f"imdb-x{copies}.txt"
        docs = write_corpus(corpus, copies) if not corpus.is_file() else copies * 50_000
        common = [str(ROOT / "configs" / "bert-mini-imdb.toml"), f"--run.dir={out / f'run-x{copies}'}",
                  f"--data.train=[\"{corpus}\"]", "--data.format=txt", f"--data.cache_dir={out / 'cache'}",
                  f"--tokenizer.path={args.tokenizer}", "--impl.progress=false"]
        shutil.rmtree(out / f"run-x{copies}", ignore_errors=True)
        measured = {}
        if "prepare" in phases:
            measured["prepare"] = measured_run(["prepare", *common])
        if "train" in phases:
            measured["train"] = measured_run(["pretrain", *common, "--train.budget=",
                                              f"--train.max_steps={args.steps}", "--train.eval_every=0",
                                              "--train.save_every=0"])
        for phase, m in measured.items():
            print(json.dumps({"corpus": f"imdb-unsup x{copies}", "documents": docs, "phase": phase,
                              "steps": args.steps if phase == "train" else None, **m}),
                  flush=True)


if __name__ == "__main__":
    main()
