"""Fine-tuning tasks, registered in `pretrainer.registry.TASKS` (config key `finetune.task`)."""

from pretrainer.transfer.tasks import classification, tokens  # noqa: F401  (registers each task)
from pretrainer.transfer.tasks import images  # noqa: F401  (image_classification)
from pretrainer.transfer.tasks import generation  # noqa: F401  (text-to-text, ROUGE)
from pretrainer.transfer.tasks.base import Encoder, Splits, Task

__all__ = ["Encoder", "Splits", "Task"]
