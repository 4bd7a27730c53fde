"""The error contract, driven over every sub-command with a generated matrix of bad inputs.

Each case must give exit status 2, exactly one line on stderr, that line naming the file / line /
config key at fault, no "Traceback" — and leave every run directory of the world byte-identical
(a failed command never damages a run). The world is built once: a pre-trained BERT run, a GPT
run, a fine-tuned classifier, a corpus and a labeled file, and a config that works.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pretrainer.cli.main import main

WORDS = "good bad fine poor great awful nice dull the a film story".split()


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{world}" in an argument is replaced by the world's folder
    names: tuple[str, ...]  # what the one-line error must name


def _write_world(root: Path) -> None:
    import random

    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n".join(" ".join(rng.choices(WORDS, k=20)) for _ in range(60)) + "\n")
    rows = [{"text": " ".join(rng.choices(WORDS, k=6)), "label": str(i % 2)} for i in range(40)]
    (root / "labeled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "good.toml").write_text(_config(root, "run", "bert"))
    (root / "gpt.toml").write_text(_config(root, "gpt", "gpt", objective="clm"))
    (root / "lexicon-gap.txt").write_text("good film\n\nbad story\n")
    (root / "untitled.jsonl").write_text('{"id": "a", "title": "Good film", "text": "a good film"}\n'
                                         '{"id": "b", "title": " ", "text": "a dull story"}\n')
    (root / "nocorpus.toml").write_text("[train]\nlr = 0.001\n")
    (root / "t5.toml").write_text(_config(root, "t5", "t5", objective="span_corruption"))
    # A bidirectional LSTM (ELMo) config: the recurrent model's own keys instead of the Transformer's.
    (root / "elmo.toml").write_text(_config(root, "elmo", "elmo", objective="bilm").replace(
        "n_layers = 1\nd_model = 16\nn_heads = 2\nmax_len = 32\n", "n_layers = 1\nd_embed = 16\nhidden = 24\n"))
    _write_images(root)


def _write_images(root: Path) -> None:
    """An images config on a small npz, and image folders each wrong in one way."""
    import numpy as np
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8), dtype=np.uint8)
    np.savez(root / "images.npz", images=images, labels=np.arange(20) % 2)
    (root / "images.toml").write_text(f"""
[run]
dir = "{root / 'imagerun'}"
[data]
name = "images"
train = ["{root / 'images.npz'}"]
cache_dir = "{root / 'cache'}"
[model]
name = "resnet"
widths = [8]
blocks = [1]
groups = 4
[objective]
name = "autoencoder"
[train]
batch_size = 4
max_steps = 2
[impl]
progress = false
""")
    gray, rgb = Image.fromarray(images[0]), Image.fromarray(np.repeat(images[1][..., None], 3, axis=2))
    for folder, files in {"img-corrupt": {"a.png": gray, "broken.png": b"\x89PNG not an image"},
                          "img-mixed": {"a.png": gray, "b.png": rgb},
                          "img-sizes": {"a.png": gray, "b.png": gray.resize((10, 10))},
                          "img-emptyclass/zero": {"a.png": gray}, "img-emptyclass/one": {}}.items():
        (root / folder).mkdir(parents=True)
        for name, content in files.items():
            if isinstance(content, bytes):
                (root / folder / name).write_bytes(content)
            else:
                content.save(root / folder / name)
    # An IDX images file cut short (a damaged Fashion-MNIST download): header says 20 images of 8 x 8.
    (root / "cut-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 8, 0, 0, 0, 8])
                                                 + images[:5].tobytes())


def _config(root: Path, run: str, model: str, objective: str = "mlm") -> str:
    return f"""
[run]
dir = "{root / run}"
[data]
train = ["{root / 'corpus.txt'}"]
cache_dir = "{root / 'cache'}"
[tokenizer]
vocab_size = 60
min_frequency = 1
[model]
name = "{model}"
n_layers = 1
d_model = 16
n_heads = 2
max_len = 32
[objective]
name = "{objective}"
[train]
batch_size = 4
seq_len = 16
max_steps = 2
eval_every = 0
save_every = 0
[impl]
progress = false
[finetune]
init = "{root / run}"
dir = "{root / run / 'finetune'}"
max_len = 32
[finetune.data]
train = "{root / 'labeled.jsonl'}"
dev = "{root / 'labeled.jsonl'}"
[finetune.train]
max_steps = 2
epochs = 0.0
[curve]
fractions = [0.5]
seeds = [0]
[compare]
variants = ["{root / 'good.toml'}"]
max_steps = 1
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    _write_world(root)
    for config in ("good.toml", "gpt.toml", "t5.toml"):
        assert main(["pretrain", str(root / config)]) == 0
    assert main(["finetune", str(root / "good.toml")]) == 0
    assert main(["export", str(root / "run"), str(root / "hf")]) == 0
    return root


# ------------------------------------------------------------------ the matrix

CONFIG_COMMANDS = [("prepare",), ("pretrain",), ("pretrain", "--resume"), ("finetune",), ("curve",), ("compare",),
                   ("evaluate",), ("evaluate", "--finetuned"), ("distill",), ("prune",), ("quantize",), ("config",)]

# Bad config files and bad values, each (id, file name written under the world, file text or None for
# "use good.toml", overrides, what the error must name).
BAD_CONFIGS = [
    ("missing-file", "nope.toml", None, (), ("nope.toml",)),
    ("toml-syntax", "syntax.toml", "[train\nlr = 1\n", (), ("syntax.toml",)),
    ("yaml-syntax", "syntax.yaml", "train:\n  lr: [1, 2\n", (), ("syntax.yaml:3:1",)),
    ("json-syntax", "syntax.json", '{"train": {"lr": }}', (), ("syntax.json",)),
    ("not-a-table", "list.json", "[1, 2]", (), ("list.json",)),
    ("unknown-section", "good.toml", None, ("--trian.lr=1",), ("trian",)),
    ("unknown-key", "good.toml", None, ("--train.learning_rate=1",), ("train.learning_rate",)),
    ("wrong-type", "good.toml", None, ("--train.lr=fast",), ("train.lr",)),
    ("generation-zero-beams", "good.toml", None, ("--finetune.generation.num_beams=0",),
     ("finetune.generation.num_beams",)),
    ("generation-long-target-policy", "good.toml", None, ("--finetune.generation.on_long_target=drop",),
     ("finetune.generation.on_long_target",)),
    ("generation-empty-target-field", "good.toml", None, ('--finetune.data.target_field=""',),
     ("finetune.data.target_field",)),
    ("bad-choice", "good.toml", None, ("--train.schedule=zigzag",), ("train.schedule",)),
    ("unknown-model", "good.toml", None, ("--model.name=resnet9000",), ("model.name",)),
    ("negative-lr", "good.toml", None, ("--train.lr=-0.001",), ("train.lr",)),
    ("zero-batch", "good.toml", None, ("--train.batch_size=0",), ("train.batch_size",)),
    ("heads-divide-width", "good.toml", None, ("--model.n_heads=3",), ("model.n_heads",)),
    ("mask-rate", "good.toml", None, ("--objective.mask_rate=1.5",), ("objective.mask_rate",)),
    ("label-fraction", "good.toml", None, ("--finetune.label_fraction=0",), ("finetune.label_fraction",)),
    ("budget-format", "good.toml", None, ("--train.budget=soon",), ("train.budget",)),
    ("mixture-weights", "good.toml", None, ('--objective.weights=[1.0]',), ("objective.weights",)),
    ("head-tail-beyond-input", "good.toml", None, ("--finetune.truncation=head_tail", "--finetune.head_tokens=30"),
     ("finetune.head_tokens",)),
    ("chunk-overlap-beyond-chunk", "good.toml", None, ("--finetune.chunk_pooling=mean",
                                                        "--finetune.chunk_overlap=30"), ("finetune.chunk_overlap",)),
    ("simcse-temperature", "good.toml", None, ("--objective.name=simcse", "--objective.temperature=0"),
     ("objective.temperature",)),
    ("lexicon-unnamed", "good.toml", None, ("--objective.masking=lexicon",), ("objective.lexicon",)),
    ("engine-for-mlm", "good.toml", None, ("--objective.engine=gensim",), ("objective.engine",)),
    ("word2vec-window", "good.toml", None, ("--objective.name=word2vec", "--objective.window=0"),
     ("objective.window",)),
    ("mae-decoder-width", "good.toml", None, ("--objective.name=mae", "--objective.decoder_dim=0"),
     ("objective.decoder_dim",)),
    ("simclr-projection-width", "good.toml", None, ("--objective.name=simclr", "--objective.projection_dim=0"),
     ("objective.projection_dim",)),
    ("vit-patch-divides-image", "vit.toml", '[model]\nname = "vit"\nimage_size = 28\npatch_size = 5\n', (),
     ("vit.toml", "model.patch_size")),
    ("crop-scale-reversed", "images.toml", None, ("--data.crop_scale=[0.9, 0.5]",), ("data.crop_scale",)),
    ("mask-noise-everything", "images.toml", None, ("--objective.noise_type=mask", "--objective.noise=1.0"),
     ("objective.noise",)),
    ("bidirectional-lstm-widths", "elmo.toml", None, ("--model.projection=top", "--model.n_layers=2"),
     ("model.bidirectional",)),
]


# Cross-section rules of pre-training (model x objective, lengths against the position table) are
# checked by the commands that pre-train, not when any config loads: a fine-tuning config need not
# describe a pre-training that fits. A new run ("fresh") must not even be created.
PRETRAINING_COMMANDS = [("pretrain",), ("pretrain", "--resume"), ("distill",)]
BAD_PRETRAINING = [
    ("seq-beyond-positions", "good.toml", None, ("--train.seq_len=64", "--objective.teacher={world}/run"),
     ("train.seq_len",)),
    ("causal-lm-on-encoder", "good.toml", None, ("--objective.name=clm",), ("objective.name",)),
    ("bilm-on-encoder", "good.toml", None, ("--objective.name=bilm",), ("objective.name",)),
    ("causal-lm-on-bidirectional-lstm", "elmo.toml", None, ("--objective.name=clm",), ("objective.name",)),
    ("lexicon-absent", "good.toml", None, ("--objective.masking=lexicon", "--objective.lexicon={world}/absent.txt"),
     ("objective.lexicon", "absent.txt")),
    ("lexicon-empty-line", "good.toml", None, ("--objective.masking=lexicon",
                                               "--objective.lexicon={world}/lexicon-gap.txt"),
     ("lexicon-gap.txt:2",)),
    ("word2vec-on-encoder", "good.toml", None, ("--objective.name=word2vec",), ("objective.name", "boe")),
    ("mae-on-encoder", "good.toml", None, ("--objective.name=mae",), ("objective.name",)),
    ("simclr-on-encoder", "good.toml", None, ("--objective.name=simclr",), ("objective.name",)),
    ("init-embeddings-absent", "good.toml", None, ("--model.init_embeddings={world}/absent",),
     ("model.init_embeddings", "absent")),
    ("init-embeddings-not-word-vectors", "good.toml", None, ("--model.init_embeddings={world}/run",),
     ("model.init_embeddings", "word-vector")),
    ("image-model-on-text", "images.toml", None, ("--data.name=text",), ("data.name", "resnet")),
    ("autoencoder-on-encoder", "good.toml", None, ("--objective.name=autoencoder",), ("objective.name", "bert")),
]


def _config_cases() -> list[Case]:
    cases = []
    for commands, bad in ((CONFIG_COMMANDS, BAD_CONFIGS), (PRETRAINING_COMMANDS, BAD_PRETRAINING)):
        for command, (bad_id, name, _text, overrides, names) in itertools.product(commands, bad):
            if command == ("distill",) and bad_id in ("causal-lm-on-encoder", "lexicon-absent", "lexicon-empty-line",
                                                      "word2vec-on-encoder", "mae-on-encoder", "simclr-on-encoder",
                                                      "init-embeddings-absent",
                                                      "init-embeddings-not-word-vectors", "image-model-on-text",
                                                      "autoencoder-on-encoder", "bilm-on-encoder",
                                                      "causal-lm-on-bidirectional-lstm"):
                continue  # distill names its own objective (and asks for a teacher first)
            if command == ("pretrain", "--resume") and bad_id == "causal-lm-on-bidirectional-lstm":
                continue  # no elmo run exists to resume: that is what --resume reports first
            if command == ("pretrain", "--resume") and bad_id == "lexicon-empty-line":
                continue  # the file is read once the data is: --resume refuses the changed objective first
            fresh = ("--run.dir={world}/fresh",) if command in (("pretrain",), ("distill",)) else ()
            cases.append(Case(f"{'-'.join(c.lstrip('-') for c in command)}:{bad_id}",
                              (command[0], f"{{world}}/{name}", *command[1:], *overrides, *fresh), names))
    return cases


# Bad inputs to the commands that read a run directory or a folder.
RUN_CASES = [
    Case("generate:no-run", ("generate", "{world}/absent"), ("absent",)),
    Case("evaluate:finetuned-dir-without-config", ("evaluate", "{world}/hf", "--finetuned"), ("hf",)),
    Case("generate:run-is-file", ("generate", "{world}/corpus.txt"), ("corpus.txt",)),
    Case("generate:not-causal", ("generate", "{world}/run"), ("run",)),
    Case("generate:top-p-zero", ("generate", "{world}/gpt", "--top-p", "0"), ("top-p",)),
    Case("generate:negative-new-tokens", ("generate", "{world}/gpt", "--max-new-tokens", "-5"),
         ("max-new-tokens",)),
    Case("generate:zero-temperature", ("generate", "{world}/gpt", "--temperature", "0"), ("temperature",)),
    Case("generate:negative-top-k", ("generate", "{world}/gpt", "--top-k", "-1"), ("top-k",)),
    Case("generate:zero-samples", ("generate", "{world}/gpt", "--num-samples", "0"), ("num-samples",)),
    Case("generate:zero-beams", ("generate", "{world}/t5", "--num-beams", "0"), ("num-beams",)),
    Case("generate:beams-on-a-causal-lm", ("generate", "{world}/gpt", "--num-beams", "3"), ("num-beams", "t5")),
    Case("generate:target-longer-than-the-decoder", ("generate", "{world}/t5", "--max-new-tokens", "40"),
         ("max-new-tokens", "max_len = 32")),
    Case("generate:prompt-longer-than-the-encoder", ("generate", "{world}/t5", "--prompt", "good " * 40,
                                                     "--max-new-tokens", "5"),
         ("prompt", "max_len = 32")),
    Case("export:no-run", ("export", "{world}/absent", "{world}/out"), ("absent",)),
    Case("export:run-is-file", ("export", "{world}/corpus.txt", "{world}/out"), ("corpus.txt",)),
    Case("export:into-a-run", ("export", "{world}/gpt", "{world}/run"), ("run",)),
    Case("export:unknown-architecture", ("export", "{world}/run", "{world}/out", "--architecture", "Nope"),
         ("Nope",)),
    Case("import:no-folder", ("import", "{world}/absent", "{world}/imported"), ("absent",)),
    Case("import:a-file", ("import", "{world}/corpus.txt", "{world}/imported"), ("corpus.txt",)),
    Case("import:not-hf", ("import", "{world}/run", "{world}/imported"), ("config.json",)),
    Case("finetune:pooling-the-backbone-lacks", ("finetune", "{world}/good.toml", "--finetune.pooling=concat",
                                                 "--finetune.dir={world}/fresh"), ("finetune.pooling", "bert")),
    Case("finetune:gradual-unfreezing-with-probe", ("finetune", "{world}/good.toml", "--finetune.method=probe",
                                                    "--finetune.gradual_unfreezing=true",
                                                    "--finetune.dir={world}/fresh"), ("finetune.gradual_unfreezing",)),
    Case("finetune:generation-without-a-decoder", ("finetune", "{world}/good.toml", "--finetune.task=generation",
                                                   "--finetune.data.target_field=label", "--finetune.dir={world}/fresh"),
         ("finetune.task", "bert")),
    Case("finetune:generation-target-beyond-the-decoder", ("finetune", "{world}/t5.toml", "--finetune.task=generation",
                                                           "--finetune.data.target_field=label",
                                                           "--finetune.generation.max_target_len=40",
                                                           "--finetune.dir={world}/fresh"),
         ("finetune.generation.max_target_len", "max_len = 32")),
    Case("curve:generation", ("curve", "{world}/t5.toml", "--finetune.task=generation"), ("finetune.task",)),
    Case("data:untitled-article", ("data", "headlines", "{world}/fresh", "--articles", "{world}/untitled.jsonl",
                                   "--untitled", "error"), ("untitled.jsonl:2", "--untitled")),
    Case("data:no-title-field", ("data", "headlines", "{world}/fresh", "--articles", "{world}/labeled.jsonl"),
         ("labeled.jsonl:1", "'title'")),
    Case("data:no-articles-file", ("data", "headlines", "{world}/fresh", "--articles", "{world}/absent.jsonl"),
         ("absent.jsonl",)),
    Case("finetune:knn-k-above-the-labels", ("finetune", "{world}/good.toml", "--finetune.method=knn",
                                             "--finetune.knn_k=100000", "--finetune.dir={world}/fresh"),
         ("finetune.knn_k", "100000")),
    Case("finetune:knn-temperature-zero", ("finetune", "{world}/good.toml", "--finetune.method=knn",
                                           "--finetune.knn_temperature=0", "--finetune.dir={world}/fresh"),
         ("finetune.knn_temperature",)),
    Case("distill:no-teacher", ("distill", "{world}/good.toml", "--run.dir={world}/fresh"), ("objective.teacher",)),
    Case("distill:teacher-absent", ("distill", "{world}/good.toml", "--run.dir={world}/fresh",
                                    "--objective.teacher={world}/absent"), ("absent",)),
    Case("distill:finetune-teacher-absent", ("distill", "{world}/good.toml", "--finetune.dir={world}/fresh",
                                             "--finetune.teacher={world}/absent"), ("absent",)),
    Case("predict:no-run", ("predict", "{world}/absent", "{world}/corpus.txt"), ("absent",)),
    Case("predict:no-input", ("predict", "{world}/run/finetune", "{world}/absent.txt"), ("absent.txt",)),
    Case("predict:zero-batch", ("predict", "{world}/run/finetune", "{world}/corpus.txt", "--batch-size", "0"),
         ("batch-size",)),
    Case("predict:missing-field", ("predict", "{world}/run/finetune", "{world}/labeled.jsonl", "--text-field",
                                   "body"), ("labeled.jsonl:1", "body")),
    Case("prune:no-init", ("prune", "{world}/good.toml", "--prune.heads_fraction=0.5"), ("prune.init",)),
    Case("prune:not-fine-tuned", ("prune", "{world}/good.toml", "--prune.init={world}/gpt",
                                  "--prune.heads_fraction=0.5"), ("gpt",)),
    Case("prune:too-many-heads", ("prune", "{world}/good.toml", "--prune.init={world}/run/finetune",
                                  "--prune.heads_fraction=1.0"), ("prune.heads_fraction",)),
    Case("quantize:no-init", ("quantize", "{world}/good.toml"), ("quantize.init",)),
    Case("quantize:absent", ("quantize", "{world}/good.toml", "--quantize.init={world}/absent"), ("absent",)),
    Case("quantize:into-a-run", ("quantize", "{world}/good.toml", "--quantize.init={world}/run/finetune",
                                 "--quantize.dir={world}/gpt"), ("gpt",)),
    Case("import:over-a-run", ("import", "{world}/hf", "{world}/gpt"), ("gpt",)),
    Case("lexicon:no-source", ("lexicon", "{world}/absent.txt", "--out", "{world}/lexicon.txt"), ("absent.txt",)),
    Case("lexicon:config-without-corpus", ("lexicon", "{world}/nocorpus.toml", "--out", "{world}/lexicon.txt"),
         ("nocorpus.toml", "data.train")),
    Case("lexicon:max-n", ("lexicon", "{world}/corpus.txt", "--out", "{world}/lexicon.txt", "--max-n", "4"),
         ("--max-n",)),
    Case("lexicon:min-count", ("lexicon", "{world}/corpus.txt", "--out", "{world}/lexicon.txt", "--min-count", "0"),
         ("--min-count",)),
    Case("lexicon:nothing-found", ("lexicon", "{world}/corpus.txt", "--out", "{world}/lexicon.txt",
                                   "--min-pmi", "40"), ("corpus.txt", "--min-pmi")),
    Case("lexicon:untagged-entities", ("lexicon", "{world}/corpus.txt", "--entities", "--out",
                                       "{world}/lexicon.txt"), ("corpus.txt:1",)),
]

# Bad image inputs, read by `prepare` (pre-training data) and `finetune` (a labeled split).
IMAGE_CASES = [
    Case("prepare:corrupt-image", ("prepare", "{world}/images.toml", '--data.train=["{world}/img-corrupt"]'),
         ("broken.png",)),
    Case("prepare:grayscale-rgb-mix", ("prepare", "{world}/images.toml", '--data.train=["{world}/img-mixed"]'),
         ("b.png", "data.channels")),
    Case("prepare:image-sizes-differ", ("prepare", "{world}/images.toml", '--data.train=["{world}/img-sizes"]'),
         ("b.png", "data.image_size")),
    Case("prepare:empty-class-folder", ("prepare", "{world}/images.toml", '--data.train=["{world}/img-emptyclass"]'),
         ("one",)),
    Case("prepare:npz-key-missing", ("prepare", "{world}/images.toml", "--data.images_key=pixels"),
         ("images.npz", "pixels", "labels")),
    Case("finetune:npz-split-missing", ("finetune", "{world}/images.toml", "--finetune.task=image_classification",
                                        "--model.image_size=8", "--model.channels=1", "--finetune.dir={world}/fresh",
                                        "--finetune.data.train={world}/images.npz#test"),
         ("images.npz", "x_test", "labels")),
    Case("prepare:idx-truncated", ("prepare", "{world}/images.toml", '--data.train=["{world}/cut-images-idx3-ubyte"]'),
         ("cut-images-idx3-ubyte", "truncated")),
    Case("finetune:idx-labels-missing", ("finetune", "{world}/images.toml", "--finetune.task=image_classification",
                                         "--model.image_size=8", "--model.channels=1", "--finetune.dir={world}/fresh",
                                         "--finetune.data.train={world}/cut-images-idx3-ubyte"),
         ("cut-images-idx3-ubyte", "cut-labels-idx1-ubyte")),
]

CASES = _config_cases() + RUN_CASES + IMAGE_CASES


def _snapshot(root: Path) -> dict[str, str]:
    """Hash of every file of the world's run directories (the inputs are rewritten by cases)."""
    out = {"fresh exists": str((root / "fresh").exists())}  # a refused new run is never created
    for run in ("run", "gpt", "t5"):
        for path in sorted((root / run).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _write_bad_config(world: Path, case: Case) -> None:
    for bad_id, name, text, _overrides, _names in BAD_CONFIGS + BAD_PRETRAINING:
        if case.id.endswith(f":{bad_id}") and text is not None:
            (world / name).write_text(text)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_harmless(world, case, capsys):
    _write_bad_config(world, case)
    before = _snapshot(world)
    argv = [a.replace("{world}", str(world)) for a in case.argv]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, f"exit {code}; stderr: {err[-500:]}"
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for name in case.names:
        assert name in err, f"{name!r} not named in: {err}"
    assert _snapshot(world) == before, "a failed command changed a run directory"


def test_the_matrix_covers_every_sub_command():
    from pretrainer.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {c.argv[0] for c in CASES}
    # demo takes no input a user can get wrong beyond its folder, checked in tests/test_demo.py
    assert set(sub.choices) - {"demo"} <= covered, set(sub.choices) - covered
