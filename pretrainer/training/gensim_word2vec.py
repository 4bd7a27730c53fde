"""The gensim engine (`objective.engine = "gensim"`): word2vec's skip-gram trained by gensim's C
code, inside a run like any other.

It reads the same batches `fit` would (the objective's "packed" layout: same order, same
resumable loader), hands them to gensim a few steps at a time as sentences split at the
document separator, and copies the two tables back into the run's module, which is then
evaluated, checkpointed and saved as `fit` does it: config.toml, model.json, metrics.jsonl with
the held-out `sgns_loss`, checkpoints/ (safetensors and JSON; gensim's own pickles are never
written) and model.safetensors.

Learning rate: gensim's SGD alpha is `train.lr`, following `train.schedule` (word2vec: 0.025
falling linearly to 0.0001, i.e. schedule "linear", min_lr_ratio 0.004); gensim decays it
linearly inside each chunk between the rates of its first and last step. A step is one batch:
`train.batch_size` x `train.seq_len` pieces, as for `fit`.

Resume: a checkpoint holds the tables, the loader position and the schedule. gensim's random
state is re-seeded from (run.seed, step) before each chunk, so with `impl.threads = 1` (one
gensim worker) a resumed run ends with the very weights of an uninterrupted one; with more
workers gensim's Hogwild updates are not repeatable, resumed or not.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch
from torch import nn

from pretrainer.config import Config, parse_duration
from pretrainer.data.loader import seed_words
from pretrainer.errors import PretrainerError
from pretrainer.io import save_weights
from pretrainer.training.checkpoint import load_latest_checkpoint, restore, save_checkpoint
from pretrainer.training.logging import MetricsLogger, Progress
from pretrainer.training.loop import FitResult
from pretrainer.training.schedule import LRSchedule


def import_gensim():
    try:
        from gensim.models import Word2Vec
    except ImportError:
        raise PretrainerError("config key 'objective.engine' = \"gensim\" needs gensim, a dependency of pretrainer: "
                              "pip install 'gensim>=4.3,<5' (or set objective.engine = \"fit\")") from None
    return Word2Vec


class GensimTables:
    """A gensim Word2Vec whose vocabulary is the run's non-special pieces that the corpus has,
    with their counts; `rows` (gensim row -> token id) maps its tables onto the module's."""

    def __init__(self, module: nn.Module, objective, cfg: Config):
        Word2Vec = import_gensim()
        ocfg = objective.cfg
        counts = module.context_embeddings.token_counts.cpu().numpy()
        present = np.flatnonzero(counts > 0)
        present = present[~np.isin(present, objective.special_ids)]
        if not len(present):
            raise PretrainerError("word2vec: the training corpus has no pieces but special tokens")
        self.model = Word2Vec(vector_size=module.context_embeddings.weight.shape[1], window=ocfg.window,
                              negative=ocfg.negatives, ns_exponent=ocfg.ns_exponent, sample=ocfg.subsample,
                              sg=1, hs=0, min_count=1, workers=max(cfg.impl.threads, 1), seed=cfg.run.seed,
                              alpha=cfg.train.lr, min_alpha=cfg.train.lr * cfg.train.min_lr_ratio)
        # gensim sorts its vocabulary by count; ids as strings are its keys
        self.model.build_vocab_from_freq({str(i): int(counts[i]) for i in present})
        self.rows = torch.as_tensor([int(key) for key in self.model.wv.index_to_key])
        self.special = np.zeros(len(counts), dtype=bool)
        self.special[objective.special_ids] = True
        self.keys = np.array([str(i) for i in range(len(counts))], dtype=object)

    def load_from(self, module: nn.Module) -> None:
        """The module's tables (fresh init or a checkpoint's) become gensim's starting point."""
        with torch.no_grad():
            self.model.wv.vectors[:] = module.backbone.word_vector_table.weight[self.rows].cpu().numpy()
            self.model.syn1neg[:] = module.context_embeddings.weight[self.rows].cpu().numpy()

    def store_into(self, module: nn.Module) -> None:
        with torch.no_grad():
            table, context = module.backbone.word_vector_table.weight, module.context_embeddings.weight
            table[self.rows] = torch.from_numpy(self.model.wv.vectors).to(table)
            context[self.rows] = torch.from_numpy(self.model.syn1neg).to(context)

    def sentences(self, batch: dict) -> list[list[str]]:
        """(B, T) ids -> gensim sentences: each row cut at special tokens (document borders)."""
        out = []
        for row in batch["input_ids"].numpy():
            cuts = np.flatnonzero(self.special[row])
            for piece in np.split(row, cuts):
                piece = piece[~self.special[piece]]
                if len(piece) > 1:
                    out.append(self.keys[piece].tolist())
        return out

    def train(self, sentences: list[list[str]], start_alpha: float, end_alpha: float, seed: list[int]) -> int:
        """One pass over `sentences` at a rate falling linearly from start_alpha to end_alpha;
        returns the pieces trained on after subsampling."""
        self.model.random = np.random.RandomState(np.random.SeedSequence(seed).generate_state(1)[0])
        trained, _ = self.model.train(sentences, total_examples=len(sentences), epochs=1, start_alpha=start_alpha,
                                      end_alpha=end_alpha, report_delay=math.inf)
        return int(trained)


MAX_CHUNK_STEPS = 50  # the sentences of one chunk are held in memory (50 steps of 256 x 64: 800K pieces)


def chunk_steps(train_cfg) -> int:
    """Steps per gensim call: a divisor of every step that logs, evaluates or saves (so chunk
    borders fall on them, resumed or not), at most MAX_CHUNK_STEPS."""
    every = math.gcd(*[n for n in (train_cfg.log_every, train_cfg.eval_every, train_cfg.save_every) if n]
                     or [MAX_CHUNK_STEPS])
    return max(d for d in range(1, min(every, MAX_CHUNK_STEPS) + 1) if every % d == 0)


def train_with_gensim(model: nn.Module, objective, train_batches, cfg: Config, run_dir, *,
                      eval_fn: Callable[[nn.Module], dict] | None = None, resume: bool = False,
                      log: Callable[[str], None] = print) -> FitResult:
    """`fit`'s contract (length, schedule, logging, evaluation, checkpoints, final weights) with
    gensim doing the updates; see the module docstring."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise PretrainerError("config key 'objective.engine' = \"gensim\" trains in one process (its threads are "
                              "impl.threads); launch without torchrun, or use objective.engine = \"fit\"")
    run_dir = Path(run_dir)
    train_cfg = cfg.train
    import_gensim()  # before anything is read: a missing extra is one line
    budget_s = parse_duration(train_cfg.budget) if train_cfg.budget else None
    rate = SimpleNamespace(param_groups=[{"lr": train_cfg.lr}])  # what LRSchedule drives: alpha
    schedule = LRSchedule.from_config(rate, train_cfg, total_steps=None if budget_s else train_cfg.max_steps,
                                      budget_s=budget_s)
    step = 0
    if resume:
        ckpt = load_latest_checkpoint(run_dir)
        if ckpt is None:
            raise PretrainerError(f"no checkpoint in {run_dir / 'checkpoints'} to resume from; a run stopped "
                                  f"before its first checkpoint starts again without --resume")
        state = restore(ckpt, model)
        schedule.load_state_dict(state["schedule"])
        train_batches.load_state_dict(state["loader"])
        step = ckpt.step
        log(f"resuming from {ckpt.path} at step {step}")
    tables = GensimTables(model, objective, cfg)  # after a restore: the piece counts are the checkpoint's
    tables.load_from(model)

    logger = MetricsLogger(run_dir, resume_step=step if resume else None)
    total_steps = None if budget_s else train_cfg.max_steps
    progress = Progress(total_steps=total_steps, budget_s=budget_s, start_step=step, enabled=True,
                        bar=cfg.impl.progress, log_every=train_cfg.log_every, log=log)
    eval_history: list[dict] = []
    last_train: dict = {}
    last_eval_step = last_saved_step = step if resume else None
    chunk_every = chunk_steps(train_cfg)

    def evaluate() -> None:
        nonlocal last_eval_step
        results = {k: float(v) for k, v in eval_fn(model).items()}
        eval_history.append({"step": step, **results})
        logger.log(step, "eval", results, elapsed=schedule.elapsed())
        progress.message(f"eval @ step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in results.items()))
        last_eval_step = step

    def checkpoint() -> None:
        nonlocal last_saved_step
        save_checkpoint(run_dir, step, model.state_dict(), None,
                        {"schedule": schedule.state_dict(), "loader": train_batches.state_dict()},
                        keep=train_cfg.keep_checkpoints)
        last_saved_step = step

    def every(n: int) -> bool:
        return bool(n) and step % n == 0

    schedule.start()
    try:
        while not schedule.done():
            # A chunk runs to the next step that logs, evaluates or saves: chunk borders (and so
            # gensim's rates and seeds) are the same whether or not the run was resumed.
            n_steps = chunk_every - step % chunk_every
            if total_steps is not None:
                n_steps = min(n_steps, total_steps - step)
            start_alpha = schedule.get_lr()
            sentences, tokens = [], 0
            for _ in range(n_steps):
                batch = next(train_batches)
                sentences += tables.sentences(batch)
                tokens += batch["input_ids"].numel()
            for _ in range(n_steps - 1):
                schedule.step()
            t0 = time.monotonic()
            trained = tables.train(sentences, start_alpha, schedule.get_lr(), seed_words(cfg.run.seed, step))
            seconds = time.monotonic() - t0
            lr = schedule.get_lr()
            schedule.step()
            step += n_steps
            tables.store_into(model)
            last_train = {"trained_pieces": float(trained)}
            if every(train_cfg.log_every):
                logger.log(step, "train", last_train, elapsed=schedule.elapsed(), lr=lr,
                           tokens_per_s=tokens / seconds if seconds > 0 else None)
            progress.update(step, last_train, lr=lr, tokens_per_s=tokens / seconds if seconds > 0 else None,
                            elapsed=schedule.elapsed(), run_elapsed=schedule.elapsed())
            if eval_fn is not None and every(train_cfg.eval_every):
                evaluate()
            if every(train_cfg.save_every):
                checkpoint()
        if eval_fn is not None and last_eval_step != step:
            evaluate()
        if last_saved_step != step:
            checkpoint()
        save_weights(model.state_dict(), run_dir / "model.safetensors")
    finally:
        progress.close()
        logger.close()
    elapsed = schedule.elapsed()
    log(f"trained {step} steps ({cfg.impl.threads or 1} gensim worker(s)) in {elapsed:.1f}s; "
        f"weights in {run_dir / 'model.safetensors'}")
    return FitResult(step=step, metrics=last_train, eval_history=eval_history, elapsed=elapsed)
