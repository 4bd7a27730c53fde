"""Training engines (`objective.engine`, registry.ENGINES): what runs the updates of a
pre-training module. Every objective trains with "fit", the library's loop; word2vec can also
train with "gensim" (training/gensim_word2vec.py). An engine takes the module, the objective,
its resumable training batches and the config, and honours fit's contract: run length and
schedule from [train], metrics.jsonl, held-out evaluation, checkpoints, --resume, and the final
weights in run_dir/model.safetensors; it returns a `FitResult`.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from pretrainer.config import Config
from pretrainer.registry import ENGINES
from pretrainer.training.gensim_word2vec import train_with_gensim
from pretrainer.training.loop import FitResult, fit


@ENGINES.register("fit")
def train_with_fit(model: nn.Module, objective, train_batches, cfg: Config, run_dir, *,
                   eval_fn: Callable[[nn.Module], dict] | None = None, resume: bool = False,
                   log: Callable[[str], None] = print) -> FitResult:
    return fit(model, objective, train_batches, cfg.train, cfg.impl, run_dir, eval_fn=eval_fn, resume=resume, log=log)


ENGINES.register("gensim")(train_with_gensim)
