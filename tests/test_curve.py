"""`pretrainer curve` on tiny data: every start x fraction x seed, summary files, reuse of finished runs."""

import csv
import random

import pytest

from pretrainer.transfer.curve import _labels_cell, curve


def random_rows(words: list[str], seed: int, n: int = 40) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": " ".join(rng.choices(words, k=5)), "label": str(i % 2)} for i in range(n)]


def test_curve_runs_grid_and_reuses_finished_runs(tmp_path, tiny_transfer_task, task_words):
    cfg = tiny_transfer_task(tmp_path, random_rows(task_words, 0), "--curve.fractions=[0.25, 1.0]",
                             "--curve.seeds=[0, 1]")

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


def test_scratch_baseline_can_run_at_its_own_fractions(tmp_path, tiny_transfer_task, task_words):
    """The question "does 10% pre-trained beat 100% from scratch?" needs scratch only at 100%."""
    cfg = tiny_transfer_task(tmp_path, random_rows(task_words, 2), "--curve.fractions=[0.25]",
                             "--curve.scratch_fractions=[1.0]", "--curve.seeds=[0]")

    summary = curve(cfg, log=lambda *_: None)
    assert [(r["init"], r["fraction"], r["labels"]) for r in summary] == [("pre-trained", 0.25, 10),
                                                                           ("scratch", 1.0, 40)]
    assert sorted(p.name for p in (tmp_path / "run" / "curve" / "runs").iterdir()) == [
        "pre-trained-0.25-seed0", "scratch-1-seed0"]
    assert (tmp_path / "run" / "curve" / "label_efficiency.png").stat().st_size > 0


def test_curve_runs_each_method_and_label_counts(tmp_path, tiny_transfer_task, task_words):
    """Methods multiply the pre-trained start (scratch stays full fine-tuning); a fraction above 1
    is a number of labels; the summary names trainable parameters."""
    import dataclasses

    from pretrainer.errors import PretrainerError
    from pretrainer.transfer.curve import curve_starts, label_amount

    cfg = tiny_transfer_task(tmp_path, random_rows(task_words, 1), "--model.n_layers=2",
                             '--curve.methods=["full", "probe"]', "--curve.fractions=[8, 1.0]", "--curve.seeds=[0]",
                             seed=1)
    assert {name: s["method"] for name, s in curve_starts(cfg).items()} == {
        "pre-trained full": "full", "pre-trained probe": "probe", "scratch": "full"}

    summary = curve(cfg, log=lambda *_: None)
    assert [(r["init"], r["labels"]) for r in summary] == [
        ("pre-trained full", 8), ("pre-trained full", 40), ("pre-trained probe", 8), ("pre-trained probe", 40),
        ("scratch", 8), ("scratch", 40)]
    table = (tmp_path / "run" / "curve" / "summary.md").read_text()
    assert "trainable params" in table and "| pre-trained probe | 8 " in table

    with pytest.raises(PretrainerError, match=r"curve\.fractions\[0\]' = 2.5 is above 1 but not a whole number"):
        curve(dataclasses.replace(cfg, curve=dataclasses.replace(cfg.curve, fractions=[2.5])), log=lambda *_: None)
    assert dataclasses.replace(cfg.finetune, **label_amount(8)).n_labels == 8


@pytest.mark.parametrize("fraction, labels, cell", [(0.01, 69, "1% (69)"), (1.0, 6920, "100% (6,920)"), (32, 32, "32"),
                                                    (1.0, 0, "0")])
def test_labels_cell(fraction, labels, cell):
    assert _labels_cell(fraction, labels) == cell
