import json

import pytest

from pretrainer.errors import PretrainerError
from pretrainer.evaluation.report import (
    format_mean_std,
    plot_label_efficiency,
    plot_training_curves,
    results_table,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    # Written to a temporary file and renamed: nothing else is left beside it.
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_results_table_markdown():
    rows = [{"init": "scratch", "acc": 0.81234, "n": 5}, {"init": "a|b", "acc": 0.9}]
    assert results_table(rows, ["init", "acc", "n"]) == (
        "| init    |    acc |   n |\n"
        "|---------|-------:|----:|\n"
        "| scratch | 0.8123 |   5 |\n"
        "| a\\|b    |    0.9 |     |\n"
    )


def test_results_table_default_columns_and_float_format():
    table = results_table([{"a": 1.0}, {"b": "x"}], float_format="{:.2f}")
    assert table.splitlines()[:2] == ["|    a | b   |", "|-----:|-----|"]
    assert "| 1.00 |     |" in table


RUNS = [
    {"init": "scratch", "labels": 100, "seed": 0, "acc": 0.60},
    {"init": "scratch", "labels": 100, "seed": 1, "acc": 0.64},
    {"init": "pre-trained", "labels": 1000, "seed": 0, "acc": 0.85},
    {"init": "pre-trained", "labels": 100, "seed": 0, "acc": 0.70},
    {"init": "pre-trained", "labels": 100, "seed": 1, "acc": 0.74},
    {"init": "scratch", "labels": 1000, "seed": 0, "acc": 0.75},
    {"init": "scratch", "labels": 1000, "seed": 1, "acc": 0.77},
    {"init": "MiniLM", "labels": 10, "seed": 0, "acc": 0.55},
]


def test_summarize_groups_over_seeds():
    summary = summarize(RUNS, ["init", "labels"], "acc")
    keys = [(row["init"], row["labels"]) for row in summary]
    assert keys == [("MiniLM", 10), ("pre-trained", 100), ("pre-trained", 1000),
                    ("scratch", 100), ("scratch", 1000)]
    row = summary[1]
    assert row["metric"] == "acc" and row["n"] == 2
    assert row["mean"] == pytest.approx(0.72)
    assert row["std"] == pytest.approx(0.02 * 2**0.5)
    assert summary[2]["std"] == 0.0 and summary[2]["n"] == 1


def test_summarize_sorts_numbers_numerically_and_names_missing_keys():
    runs = [{"labels": n, "acc": 0.5} for n in (1000, 20, 100)]
    assert [r["labels"] for r in summarize(runs, ["labels"], "acc")] == [20, 100, 1000]
    with pytest.raises(PretrainerError, match="run 1 has no 'acc'"):
        summarize([{"labels": 1, "acc": 0.1}, {"labels": 2}], ["labels"], "acc")


def test_format_mean_std():
    assert format_mean_std(0.8532, 0.0121, 5) == "85.3 ± 1.2"
    assert format_mean_std(3.14159, 0.25, percent=False, digits=2) == "3.14 ± 0.25"
    assert format_mean_std(0.9, 0.0, 1) == "90.0 (n=1)"


def test_plot_label_efficiency_writes_png(tmp_path):
    summary = summarize(RUNS, ["init", "labels"], "acc")
    out = plot_label_efficiency(summary, tmp_path / "fig" / "eff.png", "acc", title="RT")
    assert out == tmp_path / "fig" / "eff.png"
    assert_png(out)
    with pytest.raises(PretrainerError, match="macro_f1"):
        plot_label_efficiency(summary, tmp_path / "x.png", "macro_f1")


def write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_plot_training_curves_writes_png(tmp_path):
    records = [{"step": s, "split": "train", "loss": 5.0 / s, "lr": 1e-3} for s in range(1, 50)]
    records += [{"step": s, "split": "eval", "mlm_acc": s / 100, "mlm_loss": 4.0 / s}
                for s in (10, 20, 40)]
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    # A run killed mid-write leaves a partial last line, which is skipped.
    write_jsonl(metrics, records, tail='{"step": 50, "spl')
    out = plot_training_curves(metrics, tmp_path / "plots" / "curves.png")
    assert_png(out)


def test_plot_training_curves_errors_name_the_file(tmp_path):
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1, "split": "train", "loss": 1.0}\nnot json\n{"step": 2}\n')
    with pytest.raises(PretrainerError, match=r"metrics.jsonl:2: not a JSON line"):
        plot_training_curves(bad, tmp_path / "c.png")
    write_jsonl(bad, [{"step": 1, "split": "train", "lr": 0.1}])
    with pytest.raises(PretrainerError, match="no train or eval loss"):
        plot_training_curves(bad, tmp_path / "c.png")
    with pytest.raises(PretrainerError, match="cannot read metrics"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "c.png")
