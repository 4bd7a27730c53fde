"""Labeled sets that cannot train or score a model are refused before training, naming the file;
what the input policies skipped or stripped is in the fine-tuning log and results.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pretrainer.api import evaluate
from pretrainer.data.conll import sentence_subset
from pretrainer.errors import PretrainerError
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned
from pretrainer.transfer.tasks.classification import Classification
from pretrainer.transfer.tasks.tokens import Tokens

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory, tiny_transfer_task, good_task_rows):
    """A tiny pre-trained BERT and a good labeled task (2 classes, 60 rows)."""
    root = tmp_path_factory.mktemp("labeled-checks")
    return tiny_transfer_task(root, good_task_rows(n=20), "--finetune.train.epochs=1.0"), root


def with_data(cfg, tmp_path, **files_and_keys):
    """`cfg` fine-tuning into tmp_path/ft, with finetune.data fields replaced (file contents are
    written under tmp_path when a value is bytes or str ending in a newline)."""
    data = {}
    for key, value in files_and_keys.items():
        if isinstance(value, bytes):
            path = tmp_path / f"{key}.{files_and_keys.get('suffix', 'jsonl')}"
            path.write_bytes(value)
            value = str(path)
        if key != "suffix":
            data[key] = value
    ft = dataclasses.replace(cfg.finetune, dir=str(tmp_path / "ft"),
                             data=dataclasses.replace(cfg.finetune.data, **data))
    return dataclasses.replace(cfg, finetune=ft)


def rows(*pairs) -> bytes:
    return "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in pairs).encode()


GOOD = rows(*[(f"good fine nice {i}", "1") for i in range(4)], *[(f"bad poor dull {i}", "0") for i in range(4)])


@pytest.mark.parametrize("train,dev,parts", [
    (b"", GOOD, ["train.jsonl", "no labeled examples"]),
    (rows(("good film", "1")), GOOD, ["train.jsonl", "the only label is '1'"]),
    (rows(("good film", "1"), ("great film", "1"), ("nice", "1")), GOOD, ["train.jsonl", "only label is '1'"]),
    (GOOD, b"", ["dev.jsonl", "no labeled examples"]),
    (GOOD, b"\n\n", ["dev.jsonl", "no labeled examples"]),
])
def test_degenerate_labeled_files_fail_before_training(base_cfg, tmp_path, train, dev, parts):
    cfg, _ = base_cfg
    cfg = with_data(cfg, tmp_path, train=train, dev=dev)
    with pytest.raises(PretrainerError) as info:
        finetune(cfg, **QUIET)
    message = str(info.value)
    assert "\n" not in message and all(p in message for p in parts), message
    assert not (tmp_path / "ft").exists()  # nothing trained, nothing written


def test_one_row_with_a_given_label_set_is_refused(base_cfg, tmp_path):
    cfg, _ = base_cfg
    cfg = with_data(cfg, tmp_path, train=rows(("good film", "1")), dev=GOOD, labels=["0", "1"])
    with pytest.raises(PretrainerError, match=r"train.jsonl: only 1 of the labeled examples"):
        finetune(cfg, **QUIET)


def test_a_label_set_of_one_is_refused_naming_the_key(base_cfg, tmp_path):
    cfg, _ = base_cfg
    cfg = with_data(cfg, tmp_path, train=GOOD, labels=["1"])
    with pytest.raises(PretrainerError, match="config key 'finetune.data.labels': the only label is '1'"):
        finetune(cfg, **QUIET)


def test_skips_and_strips_are_logged_and_recorded(base_cfg, tmp_path):
    cfg, _ = base_cfg
    train = GOOD + b'{"text": "\xff", "label": "0"}\n{"text": "go\\u0000od", "label": "1"}\n{"text": "", "label": "1"}\n'
    cfg = with_data(cfg, tmp_path, train=train, dev=GOOD, on_bad_utf8="skip", on_empty_text="skip")
    logged = []
    results = finetune(cfg, log=logged.append)
    expected = {"skipped_bad_utf8_lines": 1, "stripped_control_chars": 1, "skipped_empty_texts": 1}
    assert results["input"]["train"] == expected
    assert results["input"]["dev"] == {k: 0 for k in expected}
    assert json.loads((tmp_path / "ft" / "results.json").read_text())["input"]["train"] == expected
    assert any(line.startswith("train (") and "skipped 1 lines that were not valid UTF-8" in line
               and "stripped 1 control characters" in line for line in logged), logged
    # `evaluate --finetuned` reports what it skipped in the file it scores, too.
    (tmp_path / "dev2.jsonl").write_bytes(GOOD + b'{"text": "fine\\u0007", "label": "1"}\n')
    logged.clear()
    scored = evaluate_finetuned(with_data(cfg, tmp_path, dev=str(tmp_path / "dev2.jsonl")), log=logged.append)
    assert scored["dev"]["input"]["stripped_control_chars"] == 1 and scored["dev"]["n_examples"] == 9
    assert any("stripped 1 control characters" in line for line in logged), logged


def test_a_tagging_subset_without_entities_is_refused(base_cfg, tmp_path):
    cfg, _ = base_cfg
    sentences = ["Paris\tB-LOC\nis\tO\n"] + [f"word{i}\tO\nhere\tO\n" for i in range(9)]
    seed = next(s for s in range(100) if sentence_subset(10, 1.0, 1, s) != [0])
    cfg = with_data(cfg, tmp_path, train="\n".join(sentences).encode(), suffix="conll", format="conll")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed),
                              finetune=dataclasses.replace(cfg.finetune, task="tokens", n_labels=1))
    with pytest.raises(PretrainerError) as info:
        finetune(cfg, **QUIET)
    assert "finetune.n_labels = 1" in str(info.value) and "only the tags 'O'" in str(info.value)


def test_evaluate_without_held_out_data_refuses(base_cfg):
    cfg, _ = base_cfg
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, holdout=0.0))
    with pytest.raises(PretrainerError, match="no held-out data"):
        evaluate(cfg, **QUIET)


@pytest.mark.parametrize("task,name", [(Classification(), "dev.jsonl"), (Tokens(), "dev.conll")])
def test_an_empty_evaluation_file_names_itself(base_cfg, tmp_path, task, name):
    """What `evaluate --finetuned` reads (scoring.py) goes through the same check."""
    cfg, _ = base_cfg
    path = tmp_path / name
    path.write_text("\n")
    with pytest.raises(PretrainerError, match=f"{name}: no "):
        task.read_evaluation_file(str(path), cfg.finetune.data, lambda examples, names: examples, ["0", "1"])
