"""full: the task's head on the backbone, every parameter trained."""

from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.methods.base import TransferMethod


@TRANSFER_METHODS.register("full")
class Full(TransferMethod):
    """Everything trains at one learning rate: the baseline every other method is compared with."""

    tasks = ("classification", "tokens", "image_classification", "generation")
