"""The Python API: one function per CLI sub-command (`prepare`, `pretrain`, `distill`, `evaluate`, `generate`).

`pretrainer.transfer.finetune.finetune` is the fine-tuning counterpart.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

import torch.distributed as dist

from pretrainer.config import Config, validate
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.interop.hf_import import init_folder, load_pretrained
from pretrainer.io import atomic_write_text
from pretrainer.interop.word_vectors import check_init_embeddings, init_embeddings
from pretrainer.models import build_model, model_modality
from pretrainer.objectives.heads import adopt_heads
from pretrainer.registry import DATA, ENGINES, MODELS, OBJECTIVES
from pretrainer.runs import check_resume, load_run, run_label_names, write_run_header  # noqa: F401  (load_run, run_label_names: Python API)
from pretrainer.training.distributed import barrier, init_distributed, shutdown_distributed
from pretrainer.training.precision import set_determinism, set_threads
from pretrainer.transfer.finetune import finetune


def prepare(cfg: Config, log=print):
    """Prepare `cfg.data` with its data module (for text: read the corpus, train or load the
    tokenizer, write or reuse the token shards); returns the prepared data module."""
    data = DATA.get(cfg.data.name)(cfg).prepare(log=log)
    log(data.summary())
    return data


def pretrain(cfg: Config, resume: bool = False, log=print):
    """Self-supervised pre-training with the objective in `cfg.objective`; returns the fit result.

    Under `torchrun --nproc_per_node=N` each process trains on its own share of every
    global batch (batch_size * N * accum sequences); see `training.distributed`.
    """
    validate(cfg)  # a config built in code gets the checks a loaded one had
    cfg.check_pretraining()
    started_here = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(cfg.impl)  # a no-op unless launched by torchrun
    try:
        return _pretrain(cfg, resume, log if info.is_main else (lambda *_: None), info)
    finally:
        if started_here:
            shutdown_distributed()


# What a pre-training run is made of: `--resume` refuses to change these (but the fields that
# declare RESUME_FREE / RESUME_GROW, such as impl.*, train.log_every or a longer train.max_steps).
PRETRAINING_KEYS = ("run", "data", "tokenizer", "model", "objective", "train", "impl")


def _pretrain(cfg: Config, resume: bool, log, info):
    """One path for every objective: data module -> description -> backbone -> the objective's
    module (backbone + heads) -> the batches the objective asks the data module for -> fit.
    Everything that can refuse the run does so before the run directory is written."""
    run_dir = Path(cfg.run.dir)
    if not resume and (run_dir / "checkpoints" / "latest").exists():
        raise PretrainerError(f"{run_dir} already holds a run; pass --resume to continue it "
                              f"or choose another --run.dir")
    set_threads(cfg.impl)
    set_determinism(cfg.impl, cfg.run.seed)
    init_model = None
    if cfg.run.init:
        # Continued pre-training: the architecture, weights and data reading (the tokenizer)
        # come from the checkpoint.
        init_model, _, source = load_pretrained(cfg.run.init)
        cfg = DATA.get(cfg.data.name).inherit(cfg, init_folder(cfg.run.init))
        check_objective_fits(cfg, getattr(init_model, "backbone", init_model), f"the init model ({source})")
        log(f"continuing pre-training from {source} ([model] is ignored: the architecture is the checkpoint's)")
    else:
        # Known from the config alone: refuse before the corpus is read and a tokenizer trained.
        check_modality(cfg, MODELS.get(cfg.model.name), f"model.name = {cfg.model.name!r}")
        planned = planned_backbone(cfg)
        check_objective_fits(cfg, planned)
        if cfg.model.init_embeddings and model_modality(MODELS.get(cfg.model.name)) != "text":
            raise PretrainerError(f"config key 'model.init_embeddings' starts a word-embedding table; model.name = "
                                  f"{cfg.model.name!r} reads images")
        if cfg.model.init_embeddings:  # a word-vector run of this width (and tokenizer, when given)
            check_init_embeddings(cfg.model.init_embeddings, planned, cfg.tokenizer.path)
    cfg = OBJECTIVES.get(cfg.objective.name).configure(cfg)  # distill: the teacher's tokenizer
    if resume:
        check_resume(run_dir, cfg, tuple(k for k in PRETRAINING_KEYS if not (k == "model" and cfg.run.init)),
                     world_size=info.world_size)
    if not info.is_main:
        barrier()  # rank 0 prepares the shared cache first; the others then read it
    data = prepare(cfg, log=log)
    if info.is_main:
        barrier()

    objective = OBJECTIVES.get(cfg.objective.name)(cfg.objective, data.info)
    objective.check_data(data)
    torch.manual_seed(cfg.run.seed)
    backbone = getattr(init_model, "backbone", init_model) if init_model is not None else None
    if backbone is None:
        backbone = objective.initial_backbone(data)  # distill: blocks taken from the teacher
        if backbone is not None:
            log(f"student built from the teacher's blocks {cfg.objective.student_layers_from_teacher} "
                f"([model] is ignored)")
            check_objective_fits(cfg, backbone, "the student taken from the teacher")
    if backbone is None:
        backbone = build_model(cfg.model, data.info)
        check_objective_fits(cfg, backbone)  # again, now sized from the data (an image model's input size)
        if cfg.model.init_embeddings and not resume:  # on resume the checkpoint has the weights
            log(init_embeddings(backbone, cfg.model.init_embeddings, data.tokenizer))
    model = objective.build(backbone)  # the backbone with the heads this objective trains
    caution = objective.caution(backbone)  # after build: an objective may change its dropout
    if caution:
        log(f"warning: {caution}")
    if init_model is not None:
        fresh = adopt_heads(model, init_model)
        if fresh:
            log(f"initialised {', '.join(fresh)} (not in {source})")
    elif not resume:
        objective.initialise(model, data)

    if info.is_main:
        write_run_header(run_dir, cfg, model, data)
        objective.save(run_dir)

    # Every rank builds the same loader; rank r takes items r, r + N, ... of each global batch.
    batches = objective.train_batches(data, cfg.train.batch_size, cfg.train.seq_len, seed=cfg.run.seed,
                                      rank=info.rank, world_size=info.world_size)

    def evaluate_heldout(m):
        return objective.evaluate(m, objective.eval_batches(data, cfg.train.batch_size, cfg.train.seq_len,
                                                            max_batches=cfg.train.eval_batches))

    if not data.has_heldout:  # said by prepare's summary; an evaluation over nothing would read as perfect
        log("no held-out data: pre-training without evaluation")

    n_params = sum(p.numel() for p in model.parameters())
    procs = f"; {info.world_size} processes ({cfg.impl.parallel})" if info.world_size > 1 else ""
    engine = f" ({objective.engine})" if objective.engine != "fit" else ""
    log(f"model {model.config.name}: {n_params / 1e6:.2f}M parameters; objective {cfg.objective.name}{engine}; "
        f"run dir {run_dir}{procs}")
    train = ENGINES.get(objective.engine)  # the library's loop, or gensim for word2vec
    return train(model, objective, batches, cfg, run_dir, eval_fn=evaluate_heldout if data.has_heldout else None,
                 resume=resume, log=log)


def planned_backbone(cfg: Config):
    """[model] built on the meta device (the architecture without its memory) from what the config
    alone says of the data: the vocabulary size for a text model; for an image model
    data.image_size / data.channels, or where the images will say, a stand-in of two patches a side
    (the real images size the model once prepared)."""
    if model_modality(MODELS.get(cfg.model.name)) == "image":
        side = 2 * getattr(cfg.model, "patch_size", 1)
        planned_data = DataInfo("image", image_size=cfg.model.image_size or getattr(cfg.data, "image_size", 0) or side,
                                channels=cfg.model.channels or getattr(cfg.data, "channels", 0) or 1)
    else:
        planned_data = cfg.model.vocab_size or cfg.tokenizer.vocab_size
    with torch.device("meta"):
        return build_model(cfg.model, planned_data)


def check_modality(cfg: Config, model, model_name: str) -> None:
    """A one-line error naming data.name when the data module gives another kind of data (text,
    images) than `model` (a module or a model class) reads."""
    reads, gives = model_modality(model), getattr(DATA.get(cfg.data.name), "modality", "text")
    if reads != gives:
        fitting = [n for n in DATA.names() if getattr(DATA.get(n), "modality", "text") == reads]
        raise PretrainerError(f"config key 'data.name' = {cfg.data.name!r} gives {gives} data, but {model_name} reads "
                              f"{reads}s; set data.name = {' or '.join(repr(n) for n in fitting) or 'one that does'}")


# What objectives are built with when only the config is known: a text vocabulary with a [MASK]
# token. Whether the real tokenizer has one is checked once the data is prepared (check_data).
_CONFIG_ONLY_DATA = DataInfo("text", vocab_size=2, mask_id=1)


def check_objective_fits(cfg: Config, backbone, model_name: str = "") -> None:
    """One-line errors, naming the key, when `cfg.objective` cannot train `backbone` (a causal LM
    on a bidirectional encoder would read its own targets) or train.seq_len does not fit the
    backbone's position table."""
    objective = OBJECTIVES.get(cfg.objective.name)(cfg.objective, _CONFIG_ONLY_DATA)
    where = f"the max_len of {model_name}" if model_name else "model.max_len"
    model_name = model_name or f"model.name = {backbone.config.name!r}"
    refused = objective.check_backbone(backbone)
    if refused:
        raise PretrainerError(f"config key 'objective.name' = {cfg.objective.name!r} cannot train "
                              f"{model_name}: {refused}")
    check_modality(cfg, backbone, model_name)
    data_module = DATA.get(cfg.data.name)
    for layout in objective.layouts():
        if layout not in data_module.layouts:
            raise PretrainerError(f"config key 'objective.name' = {cfg.objective.name!r} needs {layout!r} batches, "
                                  f"which data.name = {cfg.data.name!r} cannot build (it builds: "
                                  f"{', '.join(data_module.layouts)})")
    max_len = getattr(backbone.config, "max_len", None)
    extra = objective.extra_positions
    if max_len is not None and cfg.train.seq_len + extra > max_len:
        plus = f" (+{extra} for {cfg.objective.name}'s shifted targets)" if extra else ""
        raise PretrainerError(f"config key 'train.seq_len' = {cfg.train.seq_len}{plus} is longer than "
                              f"{where} = {max_len}")


def distill(cfg: Config, resume: bool = False, log=print):
    """`pretrainer distill`: a teacher's knowledge into a student, model in, model out.

    With `finetune.teacher` set, task-specific distillation: `finetune` with the teacher's soft
    labels (transfer/distill.py); returns results.json's fields. Otherwise task-agnostic
    distillation, which is pre-training with objective "distill" from `objective.teacher`
    (objectives/distill.py); returns the fit result."""
    if cfg.finetune.teacher:
        return finetune(cfg, resume=resume, log=log)
    if not cfg.objective.teacher:
        raise PretrainerError("nothing to distil from: set objective.teacher (task-agnostic: a run dir, hf:PATH or "
                              "pkg:NAME on unlabeled text) or finetune.teacher (task-specific: a fine-tuned run)")
    return pretrain(dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, name="distill")),
                    resume=resume, log=log)


def evaluate(cfg: Config, log=print) -> dict:
    """Held-out metrics of the run in `cfg.run.dir` under `cfg.objective` (masked-token
    accuracy, perplexity, ...), on `cfg.data` read the way the run reads it."""
    validate(cfg)
    model, _ = load_run(cfg.run.dir)
    # the objective must suit the run's model: a causal LM on an encoder would score nonsense
    check_objective_fits(cfg, getattr(model, "backbone", model), f"the model of {cfg.run.dir}")
    data = prepare(DATA.get(cfg.data.name).inherit(cfg, cfg.run.dir), log=log)
    if not data.has_heldout:
        raise PretrainerError(f"no held-out data in {', '.join(cfg.data.eval or cfg.data.train)}: set "
                              f"data.holdout > 0 (with two or more documents) or data.eval to evaluate")
    objective = OBJECTIVES.get(cfg.objective.name)(cfg.objective, data.info)
    objective.check_data(data)
    if hasattr(objective, "report"):  # clip: retrieval and zero-shot, written to <run.dir>/evaluation/results.json
        report = objective.report(model, data, cfg.train.batch_size, cfg.train.seq_len, log=log)
        out = Path(cfg.run.dir) / "evaluation" / "results.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(report, indent=2))
        log(f"wrote {out}")
        return report
    metrics = objective.evaluate(model, objective.eval_batches(data, cfg.train.batch_size, cfg.train.seq_len,
                                                               max_batches=cfg.train.eval_batches))
    log(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics


def generate(run_dir: str | Path, prompt: str = "", max_new_tokens: int = 100, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, greedy: bool = False, num_samples: int = 1,
             seed: int = 0, num_beams: int = 1) -> list[str]:
    """Continue `prompt` with a causal-LM run, or answer it with an encoder–decoder run (the
    prompt is the encoder's input; greedy, sampled or beam search); returns `num_samples` texts."""
    check_sampling(max_new_tokens, temperature, top_k, top_p, num_samples)
    if num_beams < 1:
        raise PretrainerError(f"--num-beams must be >= 1, got {num_beams}")
    model, tokenizer = load_run(run_dir)
    model = getattr(model, "backbone", model)
    if getattr(model, "is_encoder_decoder", False):
        return generate_seq2seq(model, tokenizer, run_dir, prompt, max_new_tokens, temperature, top_k, top_p, greedy,
                                num_samples, seed, num_beams)
    if not (hasattr(model, "generate") and getattr(model, "causal", False)):
        name = getattr(getattr(model, "config", None), "name", type(model).__name__)
        raise PretrainerError(f"{run_dir}: model {name!r} cannot generate text "
                              f"(generation needs a causal-LM or encoder–decoder run, e.g. model.name = \"gpt\" "
                              f"or \"t5\")")
    if num_beams > 1:
        raise PretrainerError(f"--num-beams = {num_beams}: beam search is for encoder–decoder runs "
                              f"(model.name = \"t5\"); a causal LM samples or decodes greedily")
    ids = tokenizer.encode_batch([prompt])[0] if prompt else []
    ids = [tokenizer.bos_id] + ids
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_samples):
        x = torch.tensor([ids], dtype=torch.long)
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           greedy=greedy, eos_id=tokenizer.eos_id, generator=generator)
        new_ids = y[0, 1:].tolist()
        if tokenizer.eos_id in new_ids[len(ids) - 1:]:  # stop at (and drop) the end-of-text token
            new_ids = new_ids[:new_ids.index(tokenizer.eos_id, len(ids) - 1)]
        out.append(tokenizer.decode(new_ids))
    return out


def generate_seq2seq(model, tokenizer, run_dir, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
                     top_p: float, greedy: bool, num_samples: int, seed: int, num_beams: int) -> list[str]:
    """The encoder reads the prompt and an end token (as span corruption's inputs end); the decoder
    starts from [PAD] and stops at the end token."""
    max_len = model.config.max_len
    if max_new_tokens + 1 > max_len:
        raise PretrainerError(f"--max-new-tokens = {max_new_tokens} is longer than the decoder allows: {run_dir} has "
                              f"model.max_len = {max_len} (start token included); ask for at most {max_len - 1}")
    ids = (tokenizer.encode_batch([prompt])[0] if prompt else []) + [tokenizer.eos_id]
    if len(ids) > max_len:
        raise PretrainerError(f"--prompt is {len(ids)} tokens with its end token, longer than the encoder allows: "
                              f"{run_dir} has model.max_len = {max_len}")
    model.eval()
    x = torch.tensor([ids], dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_samples):
        y = model.generate(x, max_new_tokens, start_id=tokenizer.pad_id, eos_id=tokenizer.eos_id,
                           pad_id=tokenizer.pad_id, num_beams=num_beams, greedy=greedy, temperature=temperature,
                           top_k=top_k, top_p=top_p, generator=generator)[0, 1:].tolist()
        if tokenizer.eos_id in y:
            y = y[:y.index(tokenizer.eos_id)]
        out.append(tokenizer.decode(y))
    return out


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float, num_samples: int) -> None:
    """One-line errors for sampling settings that mean nothing (named as `pretrainer generate` spells them)."""
    if max_new_tokens < 1:
        raise PretrainerError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise PretrainerError(f"--temperature must be > 0, got {temperature} (use --greedy for deterministic "
                              f"decoding)")
    if top_k < 0:
        raise PretrainerError(f"--top-k must be >= 0 (0 = all tokens), got {top_k}")
    if not 0 < top_p <= 1:
        raise PretrainerError(f"--top-p must be in (0, 1] (1 = no nucleus cut), got {top_p}")
    if num_samples < 1:
        raise PretrainerError(f"--num-samples must be >= 1, got {num_samples}")
