"""Transfer to labeled tasks: one fine-tuning run skeleton (finetune.py) into which the
registered methods (methods/) and tasks (tasks/) plug. Importing the package registers them."""

from pretrainer.transfer import methods, tasks  # noqa: F401  (registration)
