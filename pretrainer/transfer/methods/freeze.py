"""freeze: the embeddings and the bottom `finetune.freeze_layers` blocks frozen."""

from torch import nn

from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.methods.base import TransferMethod
from pretrainer.transfer.partial import default_freeze_layers, freeze_bottom_layers


@TRANSFER_METHODS.register("freeze")
class Freeze(TransferMethod):
    tasks = ("classification", "tokens", "image_classification")

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        model = super().build(task, backbone, tokenizer, label_names, log)
        freeze_bottom_layers(model, self.ft.freeze_layers or default_freeze_layers(model))
        return model
