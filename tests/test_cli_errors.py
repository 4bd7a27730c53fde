"""Bad input through the CLI: exit status 2, one line on stderr naming the file/line/key, no traceback."""

import gzip
import json


from pretrainer.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def pretrain_config(tmp_path, corpus, extra=""):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
[data]
train = ["{corpus}"]
cache_dir = "{tmp_path / 'cache'}"
[tokenizer]
vocab_size = 200
min_frequency = 1
[model]
name = "bert"
n_layers = 1
d_model = 32
n_heads = 2
max_len = 32
[train]
batch_size = 2
seq_len = 16
max_steps = 2
eval_every = 0
save_every = 0
[impl]
progress = false
{extra}
""")
    return cfg


def assert_one_line(err, *needles):
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_unknown_config_key(tmp_path, capsys):
    cfg = pretrain_config(tmp_path, tmp_path / "x.txt")
    code, err = run_cli(capsys, "pretrain", str(cfg), "--train.learning_rate=1")
    assert code == 2
    assert_one_line(err, "train.learning_rate")


def test_missing_corpus_file(tmp_path, capsys):
    cfg = pretrain_config(tmp_path, tmp_path / "missing.txt")
    code, err = run_cli(capsys, "pretrain", str(cfg))
    assert code == 2
    assert_one_line(err, "missing.txt")


def test_empty_corpus(tmp_path, capsys):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n")
    code, err = run_cli(capsys, "pretrain", str(pretrain_config(tmp_path, corpus)))
    assert code == 2
    assert_one_line(err, "empty")


def test_invalid_utf8_errors_then_skips(tmp_path, capsys):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"a fine line of text here\nthis one is \xff\xfe broken\n" + b"more good text to read\n" * 40)
    code, err = run_cli(capsys, "prepare", str(pretrain_config(tmp_path, corpus)))
    assert code == 2
    assert_one_line(err, "bad.txt:2", "UTF-8")
    code, _ = run_cli(capsys, "prepare", str(pretrain_config(tmp_path, corpus)), "--data.on_bad_utf8=skip")
    assert code == 0


def test_missing_text_field(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl.gz"
    with gzip.open(corpus, "wt") as f:
        f.write(json.dumps({"body": "hello"}) + "\n")
    code, err = run_cli(capsys, "prepare", str(pretrain_config(tmp_path, corpus)))
    assert code == 2
    assert_one_line(err, "c.jsonl.gz:1", "text")


def finetune_config(tmp_path, train_lines, extra=""):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(x) + "\n" for x in train_lines))
    cfg = tmp_path / "ft.toml"
    cfg.write_text(f"""
[tokenizer]
path = "{tmp_path / 'vocab.txt'}"
[model]
name = "bert"
n_layers = 1
d_model = 32
n_heads = 2
max_len = 32
[impl]
progress = false
[finetune]
dir = "{tmp_path / 'ft'}"
[finetune.data]
train = "{train}"
labels = ["neg", "pos"]
{extra}
[finetune.train]
max_steps = 1
epochs = 0.0
""")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]))
    return cfg


def test_label_not_in_label_set(tmp_path, capsys):
    cfg = finetune_config(tmp_path, [{"text": "good", "label": "pos"}, {"text": "bad", "label": "meh"}])
    code, err = run_cli(capsys, "finetune", str(cfg))
    assert code == 2
    assert_one_line(err, "train.jsonl:2", "meh")


def test_missing_label_field(tmp_path, capsys):
    cfg = finetune_config(tmp_path, [{"text": "good", "label": "pos"}, {"text": "bad"}])
    code, err = run_cli(capsys, "finetune", str(cfg))
    assert code == 2
    assert_one_line(err, "train.jsonl:2", "label")
