import gzip
import json

import pytest

from pretrainer.config import LabeledDataConfig
from pretrainer.data.text_config import TextDataConfig
from pretrainer.data.readers import ReadStats, read_documents, read_labeled
from pretrainer.errors import PretrainerError


def docs(path, **cfg):
    return list(read_documents(path, TextDataConfig(**cfg)))


def one_line_error(call, *parts):
    with pytest.raises(PretrainerError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def test_txt_one_document_per_nonempty_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first doc\n\n  second doc  \r\nthird\n")
    assert docs(path) == ["first doc", "second doc", "third"]


def test_txt_blank_line_separated_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\nline one\nline two\n\n\nnext para\n  \nlast\n")
    assert docs(path, txt_documents="blank") == ["line one\nline two", "next para", "last"]


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz", "c.csv", "c.csv.gz", "c.tsv", "c.txt.gz"])
def test_formats_by_extension_with_and_without_gzip(tmp_path, name):
    fmt = name.split(".")[1]
    body = {"jsonl": '{"id": 1, "text": "hello world"}\n{"text": "  "}\n{"text": "bye"}\n',
            "csv": 'id,text\n1,"hello world"\n2,\n3,"bye"\n',
            "tsv": "id\ttext\n1\thello world\n3\tbye\n",
            "txt": "hello world\nbye\n"}[fmt].encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(body) if name.endswith(".gz") else body)
    assert docs(path) == ["hello world", "bye"]


def test_csv_quoted_field_spanning_lines(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"a, ""quoted""\nsecond line",1\nplain,0\n')
    assert docs(path) == ['a, "quoted"\nsecond line', "plain"]


def test_format_override_beats_extension(tmp_path):
    path = tmp_path / "data.dat"
    path.write_text('{"body": "x y"}\n')
    assert docs(path, format="jsonl", text_field="body") == ["x y"]


def test_missing_file(tmp_path):
    one_line_error(lambda: docs(tmp_path / "nope.txt"), "nope.txt: file not found")


def test_unknown_extension(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("x")
    one_line_error(lambda: docs(path), "data.parquet", "'.parquet'", "data.format")


def test_bad_utf8_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good\nalso good\nbad \xff\xfe here\n")
    one_line_error(lambda: docs(path), "bad.txt:3: not valid UTF-8", 'data.on_bad_utf8 = "skip"')


def test_bad_utf8_skip_counts_lines(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "\xff"}\n{"text": "b"}\n{"text": "\xc3"}\n'))
    stats = ReadStats()
    assert list(read_documents(path, TextDataConfig(on_bad_utf8="skip"), stats)) == ["a", "b"]
    assert stats.bad_utf8_lines == 2


def test_invalid_json_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": oops}\n')
    one_line_error(lambda: docs(path), "c.jsonl:2: not valid JSON")


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('["a"]\n')
    one_line_error(lambda: docs(path), "c.jsonl:1: expected a JSON object")


def test_missing_text_field_jsonl(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n\n{"body": "b", "id": 3}\n')
    one_line_error(lambda: docs(path), "c.jsonl:3: no field 'text' (fields: body, id)")


def test_missing_text_field_csv(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("a,b\n1,2\n")
    one_line_error(lambda: docs(path), "c.csv:2: no field 'text' (fields: a, b)")


def test_csv_row_with_wrong_column_count(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,label\nfine,1\nbroken\n")
    one_line_error(lambda: docs(path), "c.csv:3:", "1 columns")


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"hello\n" * 100)[:30])
    one_line_error(lambda: docs(path), "c.txt.gz:")


def test_reading_streams_lazily(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"fine\n" + b"\xff\n")
    it = read_documents(path, TextDataConfig())
    assert next(it) == "fine"  # the bad line further down is not touched yet
    with pytest.raises(PretrainerError):
        next(it)


# ---------------------------------------------------------------- labeled


def test_label_text_on_real_sst2(shared_data):
    examples = read_labeled(shared_data / "classification/sst2/dev.txt", LabeledDataConfig())
    assert len(examples) == 872
    assert set(examples.labels) == {"0", "1"}
    assert examples.pairs is None
    assert examples.line_numbers[:3] == [1, 2, 3]
    with open(shared_data / "classification/sst2/dev.txt") as f:
        label, text = f.readline().rstrip("\n").split(" ", 1)
    assert (examples.labels[0], examples.texts[0]) == (label, text)


def test_labeled_jsonl_gz_int_labels_and_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    rows = [{"premise": "a b", "hypothesis": "c", "label": 1},
            {"premise": "d", "hypothesis": "e f", "label": 0}]
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    cfg = LabeledDataConfig(text_field="premise", text_pair_field="hypothesis")
    examples = read_labeled(path, cfg)
    assert examples.texts == ["a b", "d"]
    assert examples.pairs == ["c", "e f"]
    assert examples.labels == ["1", "0"]


def test_labeled_tsv_and_csv(tmp_path):
    (tmp_path / "t.tsv").write_text('sentence\tlabel\nit\'s "fine\t1\nbad\t0\n')
    (tmp_path / "t.csv").write_text('text,label\n"a, b",pos\nc,neg\n')
    tsv = read_labeled(tmp_path / "t.tsv", LabeledDataConfig(text_field="sentence"))
    assert (tsv.texts, tsv.labels) == (['it\'s "fine', "bad"], ["1", "0"])
    csv_ = read_labeled(tmp_path / "t.csv", LabeledDataConfig())
    assert (csv_.texts, csv_.labels) == (["a, b", "c"], ["pos", "neg"])


@pytest.mark.parametrize("missing, expect", [("label", "no field 'label'"), ("text", "no field 'text'"),
                                             ("pair", "no field 'hypothesis'")])
def test_labeled_missing_fields_name_file_and_line(tmp_path, missing, expect):
    row = {"text": "x", "label": 1, "hypothesis": "y"}
    del row[{"label": "label", "text": "text", "pair": "hypothesis"}[missing]]
    path = tmp_path / "l.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": 0, "hypothesis": "z"}) + "\n" + json.dumps(row) + "\n")
    cfg = LabeledDataConfig(text_pair_field="hypothesis")
    one_line_error(lambda: read_labeled(path, cfg), f"l.jsonl:2: {expect}")


def test_label_text_line_without_text(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("1 fine\n0\n")
    one_line_error(lambda: read_labeled(path, LabeledDataConfig()), "l.txt:2: expected 'label text'")


def test_labeled_bad_utf8_hint_names_finetune_key(tmp_path):
    path = tmp_path / "l.txt"
    path.write_bytes(b"1 fine\n0 \xff\n")
    one_line_error(lambda: read_labeled(path, LabeledDataConfig()), "l.txt:2: not valid UTF-8",
                   "finetune.data.on_bad_utf8")
    skipped = read_labeled(path, LabeledDataConfig(on_bad_utf8="skip"))
    assert (skipped.labels, skipped.stats.bad_utf8_lines) == (["1"], 1)
