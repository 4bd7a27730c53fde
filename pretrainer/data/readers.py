"""Read text corpora and labeled examples from txt, jsonl, csv and tsv files (optionally gzipped).

Files are read in binary mode and decoded one line at a time, so a single line that is not
valid UTF-8 can be reported (`file:line`) or skipped and counted, and a large corpus streams
through without being held in memory. Every problem a user can fix raises `PretrainerError`
with one line naming the file and line.

Input policies (each an error or a counted skip, chosen in the config and counted in
`ReadStats`, which the caller reports):
- a line that is not valid UTF-8: `on_bad_utf8 = "error"` (default) stops naming `file:line`;
  "skip" skips the line and counts it (`bad_utf8_lines`).
- control characters (Unicode category Cc: NUL, the other C0 and C1 controls, DEL; tab, newline
  and carriage return are text): `on_control_chars = "strip"` (default) removes them from every
  text, label and word and counts them (`control_chars`), so both tokenizers see the same text
  (WordPiece's normalizer dropped them unannounced, byte-level BPE made tokens of them); a run
  of them between two letters or digits becomes one space, so the words either side stay
  apart (IMDB's reviews hold Windows-1252 dashes read as C1 controls: "anthology\x97a nice");
  "error" stops naming `file:line` and the character.
- an empty text (nothing but whitespace, after stripping): a corpus document is skipped and
  counted (`empty_texts`); a labeled example is an error naming `file:line`, or with
  `finetune.data.on_empty_text = "skip"` skipped and counted.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pretrainer.config import LabeledDataConfig
from pretrainer.data.text_config import TextDataConfig
from pretrainer.errors import PretrainerError

_FORMAT_BY_EXTENSION = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                        ".csv": "csv", ".tsv": "tsv"}


# Runs of Unicode category Cc without tab, newline and carriage return.
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]+")


def strip_control_chars(text: str) -> tuple[str, int]:
    """(`text` without control characters, how many there were); a run of them between two
    letters or digits becomes one space."""
    kept, last, removed = [], 0, 0
    for found in CONTROL_CHARS.finditer(text):
        start, end = found.span()
        removed += end - start
        kept.append(text[last:start])
        if 0 < start and end < len(text) and text[start - 1].isalnum() and text[end].isalnum():
            kept.append(" ")
        last = end
    if not removed:
        return text, 0
    kept.append(text[last:])
    return "".join(kept), removed


@dataclass
class ReadStats:
    """What a reader passed over; filled in while the reader is consumed."""

    bad_utf8_lines: int = 0  # skipped: not valid UTF-8 (on_bad_utf8 = "skip")
    control_chars: int = 0  # removed from texts (on_control_chars = "strip")
    empty_texts: int = 0  # documents or examples skipped for having no text

    def add(self, other: "ReadStats") -> None:
        for name in ("bad_utf8_lines", "control_chars", "empty_texts"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {"skipped_bad_utf8_lines": self.bad_utf8_lines, "stripped_control_chars": self.control_chars,
                "skipped_empty_texts": self.empty_texts}

    def describe(self) -> str:
        """What was skipped or stripped, for a log line ("" when nothing was)."""
        parts = [f"skipped {self.bad_utf8_lines:,} lines that were not valid UTF-8" * bool(self.bad_utf8_lines),
                 f"stripped {self.control_chars:,} control characters" * bool(self.control_chars),
                 f"skipped {self.empty_texts:,} empty texts" * bool(self.empty_texts)]
        return "; ".join(p for p in parts if p)


@dataclass
class LabeledExamples:
    """Examples of a labeled task; `line_numbers[i]` is where example i starts in `source`."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[str]
    source: str
    line_numbers: list[int] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)

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
                               line_numbers=[self.line_numbers[i] for i in indices], stats=self.stats)


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
    """Decoded lines of a (possibly gzipped) file; `.number` is the 1-based number of the last one read.

    `hint_key` is the config section whose policies apply (`data` or `finetune.data`), for messages.
    """

    def __init__(self, path: str | os.PathLike, on_bad_utf8: str, stats: ReadStats, hint_key: str,
                 on_control_chars: str = "strip"):
        self.path = str(path)
        self.on_bad_utf8 = on_bad_utf8
        self.on_control_chars = on_control_chars
        self.stats = stats
        self.hint_key = hint_key
        self.number = 0
        if not Path(path).is_file():
            raise PretrainerError(f"{path}: file not found")

    def clean(self, text: str, line: int | None = None) -> str:
        """`text` without control characters (counted), or an error naming the line: the
        `on_control_chars` policy. Applied to texts, not raw lines, so a JSON `\\u0000` counts too."""
        found = CONTROL_CHARS.search(text)
        if found is None:
            return text
        if self.on_control_chars == "error":
            hint = f'set {self.hint_key}.on_control_chars = "strip" to remove and count them'
            raise PretrainerError(f"{self.path}:{line or self.number}: control character "
                                  f"U+{ord(found.group()[0]):04X} in the text ({hint})")
        cleaned, removed = strip_control_chars(text)
        self.stats.control_chars += removed
        return cleaned

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
                        hint = f'set {self.hint_key}.on_bad_utf8 = "skip" to skip such lines'
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
    """Stream the non-empty documents of one corpus file, under the input policies of the module
    doc (`cfg.on_bad_utf8`, `cfg.on_control_chars`; an empty document is skipped and counted),
    counting in `stats`. `cfg.max_documents` is not applied here (the caller decides per file).
    """
    stats = stats if stats is not None else ReadStats()
    fmt = detect_format(path, cfg.format)
    lines = _Lines(path, cfg.on_bad_utf8, stats, "data", cfg.on_control_chars)
    if fmt == "txt":
        yield from (_blank_separated(lines) if cfg.txt_documents == "blank" else _one_per_line(lines))
        return
    for line, record in _records(path, fmt, lines):
        text = lines.clean(_field_text(path, line, record, cfg.text_field), line).strip()
        if text:
            yield text
        else:
            stats.empty_texts += 1


def _one_per_line(lines: _Lines) -> Iterator[str]:
    for line in lines:
        if not line.strip():
            continue  # a blank line is no document
        text = lines.clean(line).strip()
        if text:
            yield text
        else:
            lines.stats.empty_texts += 1  # nothing but control characters


def _blank_separated(lines: _Lines) -> Iterator[str]:
    # Line breaks inside a paragraph are kept: they matter to byte-level tokenizers (verse, code).
    paragraph: list[str] = []
    for line in lines:
        text = lines.clean(line.rstrip("\r\n"))
        if text.strip():
            paragraph.append(text)
        elif paragraph:
            yield "\n".join(paragraph).strip()
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph).strip()


def read_labeled(path: str | os.PathLike, cfg: LabeledDataConfig, stats: ReadStats | None = None) -> LabeledExamples:
    """All examples of one labeled file; labels are kept as strings (JSON numbers via str).

    The input policies of the module doc apply (`cfg.on_bad_utf8`, `cfg.on_control_chars`,
    `cfg.on_empty_text`); what was skipped or stripped is counted in the result's `stats` (also
    `stats` when given). An empty label is always an error naming `file:line`.
    """
    fmt = detect_format(path, cfg.format, key="finetune.data.format", txt_means="label_text")
    stats = stats if stats is not None else ReadStats()
    lines = _Lines(path, cfg.on_bad_utf8, stats, "finetune.data", cfg.on_control_chars)
    texts, labels, numbers = [], [], []
    pairs: list[str] | None = [] if cfg.text_pair_field else None

    def empty_text(line: int, what: str) -> None:
        if cfg.on_empty_text == "error":
            raise PretrainerError(f"{path}:{line}: {what} (set finetune.data.on_empty_text = \"skip\" "
                                  f"to skip and count such examples)")
        stats.empty_texts += 1

    if fmt == "label_text":
        if cfg.text_pair_field:
            raise PretrainerError(f"{path}: text pairs (finetune.data.text_pair_field) need a jsonl, "
                                  f"csv or tsv file, not the label_text format")
        for line in lines:
            if not line.strip():
                continue
            parts = lines.clean(line).strip().split(maxsplit=1)
            if len(parts) < 2:
                empty_text(lines.number, f"expected 'label text', got {line.strip()[:40]!r}")
                continue
            labels.append(parts[0])
            texts.append(parts[1])
            numbers.append(lines.number)
    else:
        for line, record in _records(path, fmt, lines):
            label = lines.clean(_field_text(path, line, record, cfg.label_field), line).strip()
            if not label:
                raise PretrainerError(f"{path}:{line}: empty label in field {cfg.label_field!r}")
            text = lines.clean(_field_text(path, line, record, cfg.text_field), line)
            pair = (lines.clean(_field_text(path, line, record, cfg.text_pair_field), line)
                    if pairs is not None else "-")
            if not text.strip() or not pair.strip():
                field_name = cfg.text_field if not text.strip() else cfg.text_pair_field
                empty_text(line, f"empty text in field {field_name!r}")
                continue
            labels.append(label)
            texts.append(text)
            if pairs is not None:
                pairs.append(pair)
            numbers.append(line)
    return LabeledExamples(texts=texts, pairs=pairs, labels=labels, source=str(path),
                           line_numbers=numbers, stats=stats)


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


@dataclass
class TextPairs:
    """Source and target texts of a text-to-text task; `line_numbers[i]` is where pair i is."""

    sources: list[str]
    targets: list[str]
    source: str
    line_numbers: list[int] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)  # each record's "id" field, when it has one

    def __len__(self) -> int:
        return len(self.sources)

    def where(self, i: int) -> str:
        return f"{self.source}:{self.line_numbers[i]}"


def read_text_pairs(path: str | os.PathLike, cfg: LabeledDataConfig, stats: ReadStats | None = None) -> TextPairs:
    """The (text_field, target_field) pairs of a jsonl, csv or tsv file, under the input policies
    of `read_labeled`; an empty source is `on_empty_text`'s, an empty target always an error
    naming `file:line` (a pair with nothing to learn is a broken file, not noise)."""
    fmt = detect_format(path, cfg.format, key="finetune.data.format")
    if fmt not in ("jsonl", "csv", "tsv"):
        raise PretrainerError(f"{path}: finetune.task = \"generation\" reads jsonl, csv or tsv files with "
                              f"{cfg.text_field!r} and {cfg.target_field!r} fields, not {fmt}")
    stats = stats if stats is not None else ReadStats()
    lines = _Lines(path, cfg.on_bad_utf8, stats, "finetune.data", cfg.on_control_chars)
    pairs = TextPairs(sources=[], targets=[], source=str(path))
    for line, record in _records(path, fmt, lines):
        target = lines.clean(_field_text(path, line, record, cfg.target_field), line).strip()
        if not target:
            raise PretrainerError(f"{path}:{line}: empty target in field {cfg.target_field!r}")
        text = lines.clean(_field_text(path, line, record, cfg.text_field), line)
        if not text.strip():
            if cfg.on_empty_text == "error":
                raise PretrainerError(f"{path}:{line}: empty text in field {cfg.text_field!r} (set "
                                      f"finetune.data.on_empty_text = \"skip\" to skip and count such examples)")
            stats.empty_texts += 1
            continue
        pairs.sources.append(text)
        pairs.targets.append(target)
        pairs.line_numbers.append(line)
        pairs.ids.append(str(record["id"]) if "id" in record else None)
    return pairs
