"""llrd: layer-wise learning-rate decay, each layer down trained at `finetune.layer_decay` times
the rate of the one above."""

from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.methods.base import TransferMethod
from pretrainer.transfer.partial import check_layer_decay


@TRANSFER_METHODS.register("llrd")
class LayerwiseDecay(TransferMethod):
    tasks = ("classification", "tokens", "image_classification")

    def head_kwargs(self) -> dict:
        # The head's param_groups carry each depth's lr_scale; build_optimizer applies them.
        check_layer_decay(self.ft.layer_decay)
        return {**super().head_kwargs(), "layer_decay": self.ft.layer_decay}
