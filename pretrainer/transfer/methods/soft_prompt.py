"""soft_prompt: a few trainable vectors after [CLS] and a linear head on a frozen backbone
(finetune.prompt.soft_tokens)."""

from pathlib import Path

from torch import nn

from pretrainer.data.tokenizer import load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import load_weights
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.backbone import load_backbone
from pretrainer.transfer.methods.base import TransferMethod
from pretrainer.transfer.prompts import SoftPromptClassifier
from pretrainer.transfer.tasks.classification import chunk_pooling


@TRANSFER_METHODS.register("soft_prompt")
class SoftPrompt(TransferMethod):
    tasks = ("classification",)

    def input_length(self, backbone: nn.Module) -> int:
        # The prompt takes position embeddings too.
        return min(self.ft.max_len, backbone.config.max_len - self.ft.prompt.soft_tokens)

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        return SoftPromptClassifier(backbone, len(label_names), self.ft.prompt.soft_tokens, pooling=self.ft.pooling,
                                    dropout=self.ft.classifier_dropout, **chunk_pooling(self.ft))

    def export(self, model: nn.Module) -> tuple[nn.Module, None]:
        # No architecture of its own in the model registry: the run keeps the whole classifier's
        # weights, and `rebuild` puts them back around the init's architecture.
        return model, None

    def rebuild(self, task, run_dir: Path, label_names, log):
        """finetune.init must still exist: it gives the backbone's architecture."""
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            raise PretrainerError(f"{run_dir}: no model.safetensors (is the run finished?)")
        backbone, _, _ = load_backbone(self.cfg)
        tokenizer = load_tokenizer(run_dir)
        model = self.build(task, backbone, tokenizer, label_names, log)
        load_weights(model, weights)
        return model, tokenizer
