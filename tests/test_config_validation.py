"""Every config value is checked when the config loads, by the rule its field declares
(config.py `_field(..., check=RULE)`, or a dataclass's `check()` for rules across fields), and
the one-line error names the full key."""

import dataclasses
import typing

import pytest

from pretrainer.config import Config, load_config, read_config_file, resume_changes, to_dict, validate
from pretrainer.errors import PretrainerError
from pretrainer.registry import DATA, MODELS


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- every field has its rule

# Numeric fields that need no rule of their own, each with the reason.
NO_RULE_NEEDED: dict[str, str] = {
    # none today: every int/float field declares its rule
}


def config_classes() -> list[type]:
    """Every dataclass a config file can fill: the Config tree and each registered model's and
    data module's own config class."""
    seen: list[type] = []

    def walk(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                walk(tp)

    walk(Config)
    for registry in (MODELS, DATA):
        for name in registry.names():
            walk(registry.get(name).config_class)
    return seen


def numeric_fields():
    for cls in config_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
            if item in (int, float):
                yield cls, f


def test_every_numeric_config_field_declares_its_rule():
    fields = list(numeric_fields())
    assert len(fields) > 60  # the walk reached the model and data configs too
    missing = [f"{cls.__name__}.{f.name}" for cls, f in fields
               if "check" not in f.metadata and "choices" not in f.metadata
               and f"{cls.__name__}.{f.name}" not in NO_RULE_NEEDED]
    assert not missing, f"give these fields a check= rule (config.py): {missing}"


def test_the_allow_list_holds_no_field_that_has_a_rule():
    named = {f"{cls.__name__}.{f.name}": f for cls, f in numeric_fields()}
    stale = [name for name in NO_RULE_NEEDED if name not in named or "check" in named[name].metadata]
    assert not stale, f"remove from NO_RULE_NEEDED: {stale}"


def test_every_field_default_passes_its_own_rule():
    validate(Config())
    for registry in (MODELS, DATA):
        for name in registry.names():
            validate(registry.get(name).config_class(), prefix="section.")


# ---------------------------------------------------------------- bad values, named


@pytest.mark.parametrize("text, key, problem", [
    ("[train]\nlr = -0.001\n", "train.lr", "must be >= 0, got -0.001"),
    ("[train]\nlr = inf\n", "train.lr", "must be >= 0"),
    ("[train]\nlr = nan\n", "train.lr", "must be >= 0"),
    ("[finetune.train]\nlr = -1e-4\n", "finetune.train.lr", "must be >= 0"),
    ("[train]\neps = 0.0\n", "train.eps", "must be > 0"),
    ("[train]\nbatch_size = 0\n", "train.batch_size", "> 0"),
    ("[train]\nmin_lr_ratio = 1.5\n", "train.min_lr_ratio", "in [0, 1]"),
    ("[train]\nwarmup = -1.0\n", "train.warmup", ">= 0"),
    ("[train]\nwarmup = 2.5\n", "train.warmup", "whole number"),
    ("[train]\nwarmup = 500\nmax_steps = 100\n", "train.warmup", "longer than max_steps"),
    ("[train]\nbudget = \"soon\"\n", "train.budget", "duration"),
    ("[train]\nbeta2 = 1.0\n", "train.beta2", "in [0, 1)"),
    ("[model]\nname = \"bert\"\nd_model = 256\nn_heads = 3\n", "model.n_heads", "must divide d_model = 256"),
    ("[model]\nname = \"gpt\"\nd_model = 30\nn_heads = 4\n", "model.n_heads", "must divide d_model"),
    ("[model]\nname = \"bert\"\nn_heads = 0\n", "model.n_heads", "> 0"),
    ("[model]\nname = \"bert\"\ndropout = 1.0\n", "model.dropout", "in [0, 1)"),
    ("[objective]\nmask_rate = 1.5\n", "objective.mask_rate", "in (0, 1]"),
    ("[objective]\nmask_rate = 0.0\n", "objective.mask_rate", "in (0, 1]"),
    ("[objective]\nmask_token_rate = 0.9\nrandom_token_rate = 0.2\n", "objective.random_token_rate", "more than 1"),
    ("[objective]\nname = \"nope\"\n", "objective.name", "must be one of"),
    ("[objective]\nmixture = [\"mlm\", \"nope\"]\n", "objective.mixture[1]", "is not an objective"),
    ("[objective]\nmixture = [\"mlm\", \"mixture\"]\n", "objective.mixture[1]", "cannot hold a mixture"),
    ("[objective]\nmixture = [\"mlm_sop\", \"mlm_sop\"]\n", "objective.mixture[1]", "listed twice"),
    ("[objective]\nname = \"mixture\"\nmixture = []\n", "objective.mixture", "is empty"),
    ("[objective]\nweights = [1.0]\n", "objective.weights", "has 1 entries but objective.mixture has 2"),
    ("[objective]\nweights = [1.0, -0.5]\n", "objective.weights[1]", ">= 0"),
    ("[objective]\nweights = [nan, 1.0]\n", "objective.weights[0]", ">= 0"),
    ("[objective]\nweights = [0.0, 0.0]\n", "objective.weights", "sum to a positive number"),
    ("[objective]\nrtd_weight = -1.0\n", "objective.rtd_weight", ">= 0"),
    ("[objective]\ngenerator_layers = -2\n", "objective.generator_layers", ">= 0"),
    ("[objective]\ngenerator_width_ratio = 1.5\n", "objective.generator_width_ratio", "in (0, 1]"),
    ("[tokenizer]\nvocab_size = 0\n", "tokenizer.vocab_size", "> 0"),
    ("[run]\nseed = -1\n", "run.seed", "in [0, 4294967295]"),
    ("[run]\ndir = \"\"\n", "run.dir", "non-empty"),
    ("[impl]\ndevice = \"gpu\"\n", "impl.device", "cpu, cuda, cuda:N or auto"),
    ("[impl]\nthreads = -2\n", "impl.threads", ">= 0"),
    ("[finetune]\nlabel_fraction = 0.0\n", "finetune.label_fraction", "in (0, 1]"),
    ("[finetune]\nlabel_fraction = 1.5\n", "finetune.label_fraction", "in (0, 1]"),
    ("[finetune]\nn_labels = -1\n", "finetune.n_labels", ">= 0"),
    ("[finetune]\ndropout = -0.5\n", "finetune.dropout", "-1 or in [0, 1)"),
    ("[finetune]\nmax_len = 0\n", "finetune.max_len", ">= 3"),
    ("[finetune]\nlayer_decay = 0.0\n", "finetune.layer_decay", "in (0, 1]"),
    ("[finetune]\ncrf_lr = 0.0\n", "finetune.crf_lr", "> 0"),
    ("[finetune.lora]\nrank = 0\n", "finetune.lora.rank", "> 0"),
    ("[finetune.lora]\ntargets = []\n", "finetune.lora.targets", "is empty"),
    ("[finetune.prompt]\nsoft_tokens = 0\n", "finetune.prompt.soft_tokens", "> 0"),
    ("[finetune.data]\nlabels = [\"a\", \"b\", \"a\"]\n", "finetune.data.labels[2]", "listed twice"),
    ("[finetune.data]\nmax_eval_examples = -1\n", "finetune.data.max_eval_examples", ">= 0"),
    ("[curve]\nfractions = [0.1, 2.5]\n", "curve.fractions[1]", "not a whole number"),
    ("[curve]\nfractions = [0.0]\n", "curve.fractions[0]", "> 0"),
    ("[curve]\nseeds = []\n", "curve.seeds", "is empty"),
    ("[curve]\nmethods = [\"full\", \"nope\"]\n", "curve.methods[1]", "must be one of"),
    ("[compare]\nbudget = \"30m\"\nmax_steps = 100\n", "compare.max_steps", "both set"),
])
def test_a_bad_value_is_one_line_naming_the_full_key(tmp_path, text, key, problem):
    with pytest.raises(PretrainerError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'c.toml'}: config key '{key}' "), message
    assert problem in message and "\n" not in message, message


def test_the_error_reads_as_the_issue_asks(tmp_path):
    with pytest.raises(PretrainerError) as error:
        load_config(write(tmp_path, "[train]\nlr = -0.001\n"))
    assert str(error.value) == f"{tmp_path / 'c.toml'}: config key 'train.lr' must be >= 0, got -0.001"


def test_an_override_is_checked_like_the_file(tmp_path):
    with pytest.raises(PretrainerError, match=r"config key 'model\.n_heads' = 3 must divide"):
        load_config(None, ["--model.n_heads=3"])


@pytest.mark.parametrize("override", [
    "--finetune.dropout=-1.0", "--finetune.dropout=0.0", "--objective.mask_rate=1.0", "--train.warmup=0.0",
    "--train.warmup=100", "--train.budget=1h30m", "--impl.device=cuda:1", "--finetune.n_labels=0",
    "--curve.fractions=[0.5, 8]", "--objective.weights=[0.0, 1.0]", "--model.d_ff=0",
])
def test_edge_values_that_mean_something_load(override):
    load_config(None, [override])


def test_a_config_built_in_code_is_checked_too():
    cfg = load_config(None)
    validate(cfg)
    bad = dataclasses.replace(cfg, finetune=dataclasses.replace(
        cfg.finetune, train=dataclasses.replace(cfg.finetune.train, min_lr_ratio=2.0)))
    with pytest.raises(PretrainerError, match="config key 'finetune.train.min_lr_ratio' must be in"):
        validate(bad)


def test_pretraining_refuses_epochs():
    cfg = load_config(None, ["--train.epochs=2.0"])  # fine for fine-tuning's [finetune.train]
    with pytest.raises(PretrainerError, match="config key 'train.epochs' applies to fine-tuning only"):
        cfg.check_pretraining()


def test_a_yaml_syntax_error_names_line_and_column(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n  batch_size: [1, 2\nmodel:\n  name: bert\n", "c.yaml")
    with pytest.raises(PretrainerError) as error:
        read_config_file(path)
    message = str(error.value)
    assert message.startswith(f"{path}:4:") and "cannot parse config" in message and "\n" not in message


def test_shipped_configs_and_the_demo_preset_load():
    from pathlib import Path

    from pretrainer.cli.presets import DEMO

    paths = sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml"))
    assert paths
    for path in paths:
        load_config(path).check_pretraining()
    load_config(None, base=DEMO).check_pretraining()


# ---------------------------------------------------------------- what --resume may change

PRETRAINING = ("run", "data", "tokenizer", "model", "objective", "train", "impl")


def saved_and(overrides: list[str], keys=PRETRAINING) -> list[str]:
    saved = to_dict(load_config(None, ["--train.max_steps=100", "--train.budget="]))
    return resume_changes(saved, load_config(None, ["--train.max_steps=100", *overrides]), keys)


def test_resume_allows_how_a_run_is_run_and_reported():
    assert saved_and(["--impl.progress=false", "--impl.threads=3", "--train.log_every=1", "--train.save_every=7",
                      "--train.eval_every=9", "--run.dir=elsewhere", "--data.cache_dir=/tmp/c",
                      "--train.max_steps=500"]) == []


@pytest.mark.parametrize("override, key", [
    ("--model.n_layers=7", "model.n_layers"), ("--objective.mask_rate=0.3", "objective.mask_rate"),
    ("--train.lr=0.1", "train.lr"), ("--train.batch_size=3", "train.batch_size"), ("--run.seed=5", "run.seed"),
    ("--tokenizer.vocab_size=99", "tokenizer.vocab_size"), ("--data.train=other.txt", "data.train"),
    ("--train.max_steps=50", "train.max_steps"), ("--train.budget=10m", "train.budget"),
    ("--model.name=\"gpt\"", "model.name"),
])
def test_resume_refuses_what_changes_the_run(override, key):
    changes = saved_and([override])
    assert changes and changes[0].startswith(f"{key}: "), changes


def test_resume_compares_only_the_commands_keys():
    # a pre-training resume does not care about [finetune]; a fine-tuning one about [train]
    assert saved_and(["--finetune.label_fraction=0.5"]) == []
    assert saved_and(["--train.lr=0.1"], keys=("run.seed", "finetune")) == []
    assert saved_and(["--finetune.label_fraction=0.5"], keys=("run.seed", "finetune")) == [
        "finetune.label_fraction: 1.0 -> 0.5"]
