"""What a transfer method is to the fine-tuning run (transfer/finetune.py).

A method says which tasks it supports, builds the module it trains around a backbone (with
exactly the parameters it trains left trainable), trains it, says what of it is saved, and
rebuilds a saved run for scoring. The defaults are plain fine-tuning: the task's head on the
backbone, everything trainable, `fit` with model selection on dev, saved as the task's head
model (model.json + weights) and loaded back as it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from pretrainer.config import Config
from pretrainer.data.tokenizer import TextTokenizer
from pretrainer.errors import PretrainerError
from pretrainer.objectives.soft_targets import SoftTargets
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.runs import load_run, module_spec
from pretrainer.transfer.select import train_and_select
from pretrainer.transfer.tasks.base import Encoder, Splits, Task


class TransferMethod:
    """One way to transfer a backbone to a task. A subclass registered in TRANSFER_METHODS (a
    file in this folder) is all a new method needs; tests/transfer/test_method_contract.py then
    runs it on every task it lists in `tasks`."""

    tasks: ClassVar[tuple[str, ...]] = ("classification", "tokens")
    uses_labels: ClassVar[bool] = True  # False: no training label is read (zero-shot)
    reads_lm_head: ClassVar[bool] = False  # True: built on the pre-training module with its MLM head
    distills: ClassVar[bool] = True  # False: its fit takes no loss, so finetune.teacher cannot apply
    rescorable: ClassVar[bool] = True  # False: `evaluate --finetuned` cannot score its saved run (knn)
    long_documents: ClassVar[bool] = True  # False: encodes its own inputs; truncation and chunking do not apply

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.ft = cfg.finetune

    def check(self, task: Task) -> None:
        if task.name not in self.tasks:
            able = [name for name in TRANSFER_METHODS if task.name in TRANSFER_METHODS.get(name).tasks]
            raise PretrainerError(f"config key 'finetune.method' = {self.ft.method!r} does not apply to task = "
                                  f"{task.name}; choose {', '.join(able)}")
        if not self.long_documents:
            for key, default in (("truncation", "head"), ("chunk_pooling", "none")):
                if getattr(self.ft, key) != default:
                    raise PretrainerError(f"config key 'finetune.{key}' = {getattr(self.ft, key)!r} does not apply "
                                          f"to method {self.ft.method!r}, which builds its own input; leave it "
                                          f"{default!r}")

    def check_splits(self, splits: Splits) -> None:
        """Refuse what this method cannot do with these splits, before the run directory is written."""

    def input_length(self, backbone: nn.Module) -> int:
        """The longest encoded input."""
        return self.ft.max_len

    def encoder(self, task: Task, tokenizer: TextTokenizer, max_len: int) -> Encoder:
        """How examples become model inputs: the task's own encoding unless the method changes it."""
        return task.encoder(tokenizer, max_len, self.ft)

    def head_kwargs(self) -> dict:
        """Constructor arguments of the task's head that the method sets."""
        return {"dropout": self.ft.classifier_dropout}

    def build(self, task: Task, backbone: nn.Module, tokenizer: TextTokenizer, label_names: list[str],
              log) -> nn.Module:
        """The module to train; what the method does not train is frozen (requires_grad False)."""
        return task.head(backbone, len(label_names), self.ft, **self.head_kwargs())

    def fit(self, task: Task, model: nn.Module, splits: Splits, run_dir: Path, resume: bool, log) -> dict:
        """Train `model` on `splits.subset`; returns fields for results.json (at least "steps")."""
        ft = self.ft
        eval_set = splits.dev if splits.dev is not None else splits.test

        def evaluate(m: nn.Module) -> dict:
            return task.evaluate(m, eval_set, splits.label_names, ft.train.batch_size)

        objective = task.objective(splits.label_names)
        if ft.teacher:  # the batches carry the teacher's logits (transfer/distill.py)
            objective = SoftTargets(objective, ft.distill_alpha, ft.distill_temperature)
        steps = train_and_select(self.cfg, model, objective,
                                 task.batches(splits, ft.train.batch_size, self.cfg.run.seed), len(splits.subset),
                                 run_dir, evaluate if eval_set is not None else None, has_dev=splits.dev is not None,
                                 metric=task.metric, resume=resume, log=log)
        return {"steps": steps}

    def score(self, task: Task, model: nn.Module, dataset, label_names: list[str]) -> dict:
        """The metrics results.json records for a dev/test split."""
        return task.evaluate(model, dataset, label_names, self.ft.train.batch_size, final=True)

    def export(self, model: nn.Module) -> tuple[nn.Module, dict | None]:
        """What a run saves: the module whose weights go to model.safetensors, and its model.json
        spec (None: weights only, and `rebuild` knows the architecture)."""
        return model, module_spec(model)

    def rebuild(self, task: Task, run_dir: Path, label_names: list[str], log) -> tuple[nn.Module, TextTokenizer]:
        """A saved run's model as this method used it, and its tokenizer (`pretrainer evaluate
        --finetuned`)."""
        model, tokenizer = load_run(run_dir)
        if not isinstance(model, task.head_class):
            raise PretrainerError(f"{run_dir}: the model is a {type(model).__name__}, not a "
                                  f"{task.head_class.__name__} (a pre-training run?)")
        return model, tokenizer


def around_backbone(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the parts a task put around `model.backbone` (its new, untrained head)."""
    return tuple(f"{name}." for name, _ in model.named_children() if name != "backbone")
