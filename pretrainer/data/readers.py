"""Read text corpora and labeled examples from txt, jsonl, csv and tsv files (optionally gzipped).

Files are read in binary mode and decoded one line at a time, so a single line that is not
valid UTF-8 can be reported (`file:line`) or skipped and counted, and a large corpus streams
through without being held in memory. Every problem a user can fix raises `PretrainerError`
with one line naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pretrainer.config import LabeledDataConfig
from pretrainer.data.text_config import TextDataConfig
from pretrainer.errors import PretrainerError

_FORMAT_BY_EXTENSION = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                        ".csv": "csv", ".tsv": "tsv"}


@dataclass
class ReadStats:
    """What a reader passed over; filled in while the reader is consumed."""

    bad_utf8_lines: int = 0


@dataclass
class LabeledExamples:
    """Examples of a labeled task; `line_numbers[i]` is where example i starts in `source`."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    source: str
    line_numbers: list[int] = field(default_factory=list)
    bad_utf8_lines: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, i: int) -> str:
        """`file:line` of example i, for error messages."""
        return f"{self.source}:{self.line_numbers[i]}"

    def select(self, indices: list[int]) -> "LabeledExamples":
        """The examples at `indices`, in that order, still naming their own lines."""
        return LabeledExamples(texts=[self.texts[i] for i in indices],
                               pairs=None if self.pairs is None else [self.pairs[i] for i in indices],
                               labels=[self.labels[i] for i in indices], source=self.source,
                               line_numbers=[self.line_numbers[i] for i in indices],
                               bad_utf8_lines=self.bad_utf8_lines)


def detect_format(path: str | os.PathLike, fmt: str, key: str = "data.format",
                  txt_means: str = "txt") -> str:
    """The file format: `fmt` unless it is "auto", else read from the extension (after `.gz`)."""
    if fmt != "auto":
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = Path(name).suffix
    if ext not in _FORMAT_BY_EXTENSION:
        known = ", ".join(sorted(_FORMAT_BY_EXTENSION))
        raise PretrainerError(f"{path}: cannot tell the format from the extension {ext or '(none)'!r} "
                              f"(known: {known}, optionally .gz); set {key}")
    found = _FORMAT_BY_EXTENSION[ext]
    return txt_means if found == "txt" else found


class _Lines:
    """Decoded lines of a (possibly gzipped) file; `.number` is the 1-based number of the last one read."""

    def __init__(self, path: str | os.PathLike, on_bad_utf8: str, stats: ReadStats, hint_key: str):
        self.path = str(path)
        self.on_bad_utf8 = on_bad_utf8
        self.stats = stats
        self.hint_key = hint_key
        self.number = 0
        if not Path(path).is_file():
            raise PretrainerError(f"{path}: file not found")

    def __iter__(self) -> Iterator[str]:
        opener = gzip.open if self.path.lower().endswith(".gz") else open
        try:
            with opener(self.path, "rb") as f:
                for self.number, raw in enumerate(f, start=1):
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        if self.on_bad_utf8 == "skip":
                            self.stats.bad_utf8_lines += 1
                            continue
                        hint = f'set {self.hint_key} = "skip" to skip such lines'
                        raise PretrainerError(f"{self.path}:{self.number}: not valid UTF-8 ({hint})") from None
                    if self.number == 1:
                        line = line.removeprefix("\ufeff")  # a byte-order mark is not text
                    yield line
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            if isinstance(e, FileNotFoundError):
                raise PretrainerError(f"{self.path}: file not found") from None
            raise PretrainerError(f"{self.path}:{self.number + 1}: cannot read: {e}") from None


def _json_records(lines: _Lines) -> Iterator[tuple[int, dict]]:
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PretrainerError(f"{lines.path}:{lines.number}: not valid JSON "
                                  f"({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict):
            raise PretrainerError(f"{lines.path}:{lines.number}: expected a JSON object, "
                                  f"got {type(record).__name__}")
        yield lines.number, record


def _table_records(lines: _Lines, delimiter: str) -> Iterator[tuple[int, dict]]:
    """Rows of a csv/tsv file with a header row, as {column: value}."""
    # Reviews and articles can exceed csv's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    # TSV files (GLUE and friends) use bare quotes inside text, so quoting is off for them.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(iter(lines), delimiter=delimiter, quoting=quoting)
    header = None
    while True:
        start = lines.number + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise PretrainerError(f"{lines.path}:{start}: malformed row ({e})") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [name.strip() for name in row]
            continue
        if len(row) != len(header):
            raise PretrainerError(f"{lines.path}:{start}: row has {len(row)} columns, "
                                  f"the header has {len(header)}")
        yield start, dict(zip(header, row))


def _records(path, fmt: str, lines: _Lines) -> Iterator[tuple[int, dict]]:
    if fmt == "jsonl":
        return _json_records(lines)
    if fmt in ("csv", "tsv"):
        return _table_records(lines, "," if fmt == "csv" else "\t")
    raise PretrainerError(f"{path}: format {fmt!r} is not supported here")


def _field_text(path, line: int, record: dict, name: str) -> str:
    if name not in record:
        raise PretrainerError(f"{path}:{line}: no field {name!r} (fields: {', '.join(map(str, record))})")
    value = record[name]
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise PretrainerError(f"{path}:{line}: field {name!r} must be a string, got {json.dumps(value)[:40]}")


def read_documents(path: str | os.PathLike, cfg: TextDataConfig, stats: ReadStats | None = None) -> Iterator[str]:
    """Stream the non-empty documents of one corpus file.

    Lines that are not valid UTF-8 raise, or with `cfg.on_bad_utf8 = "skip"` are skipped and
    counted in `stats`. `cfg.max_documents` is not applied here (the caller decides per file).
    """
    stats = stats if stats is not None else ReadStats()
    fmt = detect_format(path, cfg.format)
    lines = _Lines(path, cfg.on_bad_utf8, stats, "data.on_bad_utf8")
    if fmt == "txt":
        yield from (_blank_separated(lines) if cfg.txt_documents == "blank" else _one_per_line(lines))
        return
    for line, record in _records(path, fmt, lines):
        text = _field_text(path, line, record, cfg.text_field).strip()
        if text:
            yield text


def _one_per_line(lines: _Lines) -> Iterator[str]:
    for line in lines:
        text = line.strip()
        if text:
            yield text


def _blank_separated(lines: _Lines) -> Iterator[str]:
    # Line breaks inside a paragraph are kept: they matter to byte-level tokenizers (verse, code).
    paragraph: list[str] = []
    for line in lines:
        text = line.rstrip("\r\n")
        if text.strip():
            paragraph.append(text)
        elif paragraph:
            yield "\n".join(paragraph).strip()
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph).strip()


def read_labeled(path: str | os.PathLike, cfg: LabeledDataConfig) -> LabeledExamples:
    """All examples of one labeled file; labels are kept as strings (JSON numbers via str)."""
    fmt = detect_format(path, cfg.format, key="finetune.data.format", txt_means="label_text")
    stats = ReadStats()
    lines = _Lines(path, cfg.on_bad_utf8, stats, "finetune.data.on_bad_utf8")
    texts, labels, numbers = [], [], []
    pairs: list[str] | None = [] if cfg.text_pair_field else None
    if fmt == "label_text":
        if cfg.text_pair_field:
            raise PretrainerError(f"{path}: text pairs (finetune.data.text_pair_field) need a jsonl, "
                                  f"csv or tsv file, not the label_text format")
        for line in lines:
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2:
                raise PretrainerError(f"{path}:{lines.number}: expected 'label text', "
                                      f"got {line.strip()[:40]!r}")
            labels.append(parts[0])
            texts.append(parts[1])
            numbers.append(lines.number)
    else:
        for line, record in _records(path, fmt, lines):
            labels.append(_field_text(path, line, record, cfg.label_field).strip())
            texts.append(_field_text(path, line, record, cfg.text_field))
            if pairs is not None:
                pairs.append(_field_text(path, line, record, cfg.text_pair_field))
            numbers.append(line)
    return LabeledExamples(texts=texts, pairs=pairs, labels=labels, source=str(path),
                           line_numbers=numbers, bad_utf8_lines=stats.bad_utf8_lines)


def read_records(path: str | os.PathLike, fmt: str = "auto", key: str = "--format") -> Iterator[tuple[int, dict]]:
    """Stream `(line, record)` from a txt file (each non-blank line is `{"text": line}`), jsonl,
    csv or tsv (a header row names the columns); `key` is what to set when the extension does
    not tell the format."""
    fmt = detect_format(path, fmt, key=key)
    lines = _Lines(path, "error", ReadStats(), key)
    if fmt == "txt":
        for line in lines:
            if line.strip():
                yield lines.number, {"text": line.strip()}
        return
    yield from _records(path, fmt, lines)


def record_text(path: str | os.PathLike, line: int, record: dict, name: str) -> str:
    """Field `name` of a record as text; a missing or non-text field names the file and line."""
    return _field_text(path, line, record, name)
