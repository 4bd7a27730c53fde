"""The config of the text data module: which files hold the unlabeled corpus and how to read them."""

from __future__ import annotations

from dataclasses import dataclass

from pretrainer.config import DataConfig, _field, between, non_negative


@dataclass
class TextDataConfig(DataConfig):
    """Unlabeled text for pre-training (`[data] name = "text"`, the default)."""

    train: list[str] = _field([], "corpus files (txt, jsonl, csv, tsv; optionally .gz)")
    eval: list[str] = _field([], "held-out files; empty -> split `holdout` of the documents off train")
    format: str = _field("auto", "file format", ("auto", "txt", "jsonl", "csv", "tsv"))
    text_field: str = _field("text", "jsonl/csv column holding the text")
    txt_documents: str = _field("line", "txt: one document per line, or blank-line separated", ("line", "blank"))
    on_bad_utf8: str = _field("error", "a line that is not valid UTF-8: stop with an error or skip and count it",
                              ("error", "skip"))
    on_control_chars: str = _field("strip", "control characters (NUL, other C0/C1 controls, DEL; not tab or "
                                   "newline) in a text: remove them (a run between two letters becomes a "
                                   "space) and report the count, so both tokenizers see the same text; or "
                                   "stop with an error naming the line",
                                   ("strip", "error"))
    holdout: float = _field(0.01, "fraction of documents held out for evaluation when `eval` is empty",
                             check=between(0, 1, high_open=True))
    max_documents: int = _field(0, "read at most this many documents per file (0 = all)",
                                check=non_negative)
