"""`pretrainer curve` on tiny data: every start x fraction x seed, summary files, reuse of finished runs."""

import csv
import json
import random

from pretrainer.api import pretrain
from pretrainer.config import load_config
from pretrainer.transfer.curve import curve

WORDS = "good bad fine poor great awful nice dull".split()


def test_curve_runs_grid_and_reuses_finished_runs(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(WORDS, k=20)) for _ in range(40)))
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=5)), "label": str(i % 2)}) + "\n"
                               for i in range(40)))
    cfg = load_config(None, [
        f'--run.dir="{tmp_path / "run"}"', f'--data.train="{corpus}"', f'--data.cache_dir="{tmp_path / "cache"}"',
        "--tokenizer.vocab_size=40", "--tokenizer.min_frequency=1", "--model.n_layers=1", "--model.d_model=16",
        "--model.n_heads=2", "--model.max_len=32", "--train.batch_size=4", "--train.seq_len=16",
        "--train.max_steps=2", "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false",
        f'--finetune.init="{tmp_path / "run"}"', f'--finetune.data.train="{labeled}"',
        f'--finetune.data.dev="{labeled}"', "--finetune.train.epochs=1.0", "--finetune.train.batch_size=8",
        "--curve.fractions=[0.25, 1.0]", "--curve.seeds=[0, 1]"])
    pretrain(cfg, log=lambda *_: None)

    summary = curve(cfg, log=lambda *_: None)
    assert [(r["init"], r["fraction"], r["labels"], r["n"]) for r in summary] == [
        ("pre-trained", 0.25, 10, 2), ("pre-trained", 1.0, 40, 2), ("scratch", 0.25, 10, 2), ("scratch", 1.0, 40, 2)]
    out = tmp_path / "run" / "curve"
    with open(out / "runs.csv") as f:
        assert len(list(csv.DictReader(f))) == 8
    assert (out / "label_efficiency.png").stat().st_size > 0
    assert "± " in (out / "summary.md").read_text()

    # A second call finds every run finished and trains nothing.
    marker = out / "runs" / "scratch-1-seed1" / "results.json"
    before = marker.stat().st_mtime_ns
    assert curve(cfg, log=lambda *_: None) == summary
    assert marker.stat().st_mtime_ns == before


def test_curve_runs_each_method_and_label_counts(tmp_path):
    """Methods multiply the pre-trained start (scratch stays full fine-tuning); a fraction above 1
    is a number of labels; the summary names trainable parameters."""
    import dataclasses

    import pytest

    from pretrainer.errors import PretrainerError
    from pretrainer.transfer.curve import curve_starts, label_amount

    rng = random.Random(1)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(WORDS, k=20)) for _ in range(40)))
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=5)), "label": str(i % 2)}) + "\n"
                               for i in range(40)))
    cfg = load_config(None, [
        f'--run.dir="{tmp_path / "run"}"', f'--data.train="{corpus}"', f'--data.cache_dir="{tmp_path / "cache"}"',
        "--tokenizer.vocab_size=40", "--tokenizer.min_frequency=1", "--model.n_layers=2", "--model.d_model=16",
        "--model.n_heads=2", "--model.max_len=32", "--train.batch_size=4", "--train.seq_len=16",
        "--train.max_steps=2", "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false",
        f'--finetune.init="{tmp_path / "run"}"', f'--finetune.data.train="{labeled}"',
        f'--finetune.data.dev="{labeled}"', "--finetune.train.epochs=1.0", "--finetune.train.batch_size=8",
        '--curve.methods=["full", "probe"]', "--curve.fractions=[8, 1.0]", "--curve.seeds=[0]"])
    pretrain(cfg, log=lambda *_: None)
    assert {name: s["method"] for name, s in curve_starts(cfg).items()} == {
        "pre-trained full": "full", "pre-trained probe": "probe", "scratch": "full"}

    summary = curve(cfg, log=lambda *_: None)
    assert [(r["init"], r["labels"]) for r in summary] == [
        ("pre-trained full", 8), ("pre-trained full", 40), ("pre-trained probe", 8), ("pre-trained probe", 40),
        ("scratch", 8), ("scratch", 40)]
    table = (tmp_path / "run" / "curve" / "summary.md").read_text()
    assert "trainable params" in table and "| pre-trained probe | 8 " in table

    with pytest.raises(PretrainerError, match="curve.fractions"):
        label_amount(2.5)
    assert dataclasses.replace(cfg.finetune, **label_amount(8)).n_labels == 8
