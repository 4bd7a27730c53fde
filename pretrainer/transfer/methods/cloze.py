"""cloze and cloze_zero_shot: each example in a template with one [MASK], label scores = the
MLM head's logits of the verbalizer words there (PET-style; finetune.prompt). Fine-tuned through
the MLM head, or untrained (zero-shot, optionally calibrated)."""

from pathlib import Path

from torch import nn

from pretrainer.registry import TRANSFER_METHODS
from pretrainer.runs import load_run, module_spec
from pretrainer.transfer.methods.base import TransferMethod
from pretrainer.transfer.prompts import (ClozeClassifier, content_free_batch, encode_cloze_examples,
                                         verbalizer_token_ids)


@TRANSFER_METHODS.register("cloze")
class Cloze(TransferMethod):
    tasks = ("classification",)
    reads_lm_head = True
    long_documents = False  # the template places the text around one [MASK]

    def encoder(self, task, tokenizer, max_len: int):
        template = self.ft.prompt.template
        return lambda examples, names: encode_cloze_examples(examples, tokenizer, names, template, max_len)

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        return ClozeClassifier(backbone, verbalizer_token_ids(tokenizer, self.ft.prompt.verbalizer, label_names),
                               tokenizer.mask_id)

    def export(self, model: nn.Module) -> tuple[nn.Module, dict]:
        # The backbone with its MLM head: it loads and exports as a masked LM; the template and
        # verbalizer are in config.toml.
        return model.backbone, module_spec(model.backbone)

    def rebuild(self, task, run_dir: Path, label_names, log):
        backbone, tokenizer = load_run(run_dir)
        return self.build(task, backbone, tokenizer, label_names, log), tokenizer


@TRANSFER_METHODS.register("cloze_zero_shot")
class ClozeZeroShot(Cloze):
    """The pre-trained MLM head as it is: no training label is read and nothing trains."""

    uses_labels = False
    distills = False  # nothing trains

    def build(self, task, backbone, tokenizer, label_names, log) -> nn.Module:
        model = super().build(task, backbone, tokenizer, label_names, log).requires_grad_(False)
        prompt = self.ft.prompt
        if prompt.calibrate:
            bias = model.calibrate(content_free_batch(tokenizer, label_names, prompt.template,
                                                      has_pairs="{pair}" in prompt.template))
            log("calibrated on the content-free input: label log-probabilities "
                + ", ".join(f"{name} {b:.2f}" for name, b in zip(label_names, bias.tolist())))
        return model

    def fit(self, task, model, splits, run_dir, resume, log) -> dict:
        return {"steps": 0}
