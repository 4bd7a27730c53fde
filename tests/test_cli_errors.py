"""Bad input through the CLI: exit status 2, one line on stderr naming the file/line/key, no traceback."""

import gzip
import json

import pytest

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
max_len = 32
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


# ---------------------------------------------------------------- config values, before anything runs


def files_under(path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("override, key", [
    ("--train.lr=-0.001", "'train.lr'"),
    ("--model.n_heads=3", "'model.n_heads'"),
    ("--objective.mask_rate=1.5", "'objective.mask_rate'"),
    ("--objective.weights=[1.0]", "'objective.weights'"),
    ('--objective.name="clm"', "'objective.name' = 'clm' cannot train model.name = 'bert'"),
    ("--train.seq_len=64", "'train.seq_len' = 64 is longer than model.max_len = 32"),
    ("--train.epochs=2.0", "'train.epochs'"),
    ('--train.budget="soon"', "'train.budget'"),
])
def test_a_bad_pretraining_config_stops_before_reading_or_writing(tmp_path, capsys, override, key):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a few words of text\n" * 20)
    code, err = run_cli(capsys, "pretrain", str(pretrain_config(tmp_path, corpus)), override)
    assert code == 2
    assert_one_line(err, key)
    # refused from the config alone: no tokenizer trained, no shard cached, no run directory
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_finetune_max_len_beyond_the_position_table_names_the_key(tmp_path, capsys):
    cfg = finetune_config(tmp_path, [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}])
    code, err = run_cli(capsys, "finetune", str(cfg), "--finetune.max_len=64")
    assert code == 2
    assert_one_line(err, "'finetune.max_len' = 64", "max_len = 32")
    assert not (tmp_path / "ft").exists()


def test_a_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 0.1\n   batch_size: 4\n")
    code, err = run_cli(capsys, "config", str(cfg))
    assert code == 2
    assert_one_line(err, f"{cfg}:3:", "cannot parse config")


# ---------------------------------------------------------------- generate, import


@pytest.mark.parametrize("args, flag", [
    (["--top-p", "0"], "--top-p"), (["--top-p", "1.5"], "--top-p"), (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--temperature", "0"], "--temperature"), (["--temperature", "-1"], "--temperature"),
    (["--top-k", "-1"], "--top-k"), (["--num-samples", "0"], "--num-samples"),
])
def test_meaningless_sampling_settings_are_one_line(tmp_path, capsys, args, flag):
    code, err = run_cli(capsys, "generate", str(tmp_path), *args)  # checked before the run is read
    assert code == 2
    assert_one_line(err, flag)


def tiny_run(run_dir, name):
    from pretrainer.config import TokenizerConfig
    from pretrainer.data.tokenizer import train_tokenizer
    from pretrainer.io import save_weights
    from pretrainer.models import build_model
    from pretrainer.registry import MODELS
    from pretrainer.runs import write_run_header

    kind = "wordpiece" if name == "bert" else "bytebpe"
    tokenizer = train_tokenizer(["a run keeps its tokenizer beside its weights"] * 4,
                                TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1))
    cfg = MODELS.get(name).config_class(n_layers=1, d_model=16, n_heads=2, max_len=16)
    model = build_model(cfg, tokenizer.vocab_size)
    write_run_header(run_dir, None, model, tokenizer)
    save_weights(model, run_dir / "model.safetensors")
    return run_dir


def test_generate_from_an_encoder_run_is_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, "generate", str(tiny_run(tmp_path / "bert", "bert")), "--max-new-tokens", "3")
    assert code == 2
    assert_one_line(err, "cannot generate text", "'bert'")


def test_generate_from_a_decoder_run_works(tmp_path, capsys):
    code = main(["generate", str(tiny_run(tmp_path / "gpt", "gpt")), "--max-new-tokens", "3", "--top-p", "0.9"])
    assert code == 0


def test_import_given_a_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "config.json"
    file.write_text("{}")
    code, err = run_cli(capsys, "import", str(file), str(tmp_path / "run"))
    assert code == 2
    assert_one_line(err, str(file), "not a folder")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_the_program_shuts_down_prints_no_traceback(tmp_path):
    """After a command ends (say a first Ctrl-C stopped training), the interpreter runs the exit
    handlers torch and multiprocessing register; a Ctrl-C then used to print a traceback from
    inside them. A stand-in exit handler that takes a while gives the Ctrl-C a moment to land in."""
    import os
    import signal
    import subprocess
    import sys
    import time

    program = ("import atexit, sys, time\n"
               "def slow_exit():\n"
               "    print('exiting', flush=True)\n"
               "    time.sleep(3)\n"
               "    print('exited', flush=True)\n"
               "atexit.register(slow_exit)\n"
               "from pretrainer.cli.main import main\n"
               "sys.argv = ['pretrainer', 'config']\n"
               "raise SystemExit(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    for line in proc.stdout:
        if line.strip() == "exiting":
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "exited" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
