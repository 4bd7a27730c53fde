"""lora: low-rank adapters on the backbone's linear layers (finetune.lora), the rest frozen
but the task's new head; merged into plain linears when saved."""

from torch import nn

from pretrainer.registry import TRANSFER_METHODS
from pretrainer.runs import module_spec
from pretrainer.transfer.lora import apply_lora, merge_lora
from pretrainer.transfer.methods.base import TransferMethod, around_backbone


@TRANSFER_METHODS.register("lora")
class Lora(TransferMethod):
    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        model = super().build(task, backbone, tokenizer, label_names, log)
        return apply_lora(model, self.ft.lora, trainable=around_backbone(model))

    def export(self, model: nn.Module) -> tuple[nn.Module, dict]:
        # Merged, the run loads and exports like any run, with no adapter code.
        merged = merge_lora(model)
        return merged, module_spec(merged)
