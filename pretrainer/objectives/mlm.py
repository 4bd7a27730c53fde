"""Masked language modelling (BERT): predict the original ids of randomly corrupted tokens."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from pretrainer.config import ObjectiveConfig
from pretrainer.data.collators import IGNORE_INDEX, corrupt_chosen, mask_tokens
from pretrainer.data.masking import choose_spans, choose_units
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_bytes
from pretrainer.models.heads import freeze_pooler
from pretrainer.data_info import DataInfo
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.objectives.heads import PretrainingModel, mlm_head_for
from pretrainer.objectives.linear_ce import linear_cross_entropy
from pretrainer.registry import OBJECTIVES

EVAL_SEED = 1234  # evaluation masks the same tokens every time, so numbers are comparable


def to_device(batch: dict, model: nn.Module) -> dict:
    device = next(model.parameters()).device
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluation_batches(model: nn.Module, batches: Iterable[dict]) -> Iterator[dict]:
    """Yield `batches` moved to the model's device with the model in eval mode; the model's
    train/eval mode is restored afterwards, however the loop ends."""
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            yield to_device(batch, model)
    finally:
        model.train(was_training)


def seeded_evaluation_batches(model: nn.Module, batches: Iterable[dict]) -> Iterator[tuple[dict, torch.Generator]]:
    """As `evaluation_batches`, with one generator seeded by EVAL_SEED for the whole pass."""
    generator = None
    for batch in evaluation_batches(model, batches):
        if generator is None:
            generator = torch.Generator(batch["input_ids"].device).manual_seed(EVAL_SEED)
        yield batch, generator


def no_context(backbone: nn.Module) -> str | None:
    """Why a model whose outputs never read their neighbours (a bag of embeddings) cannot learn
    to predict a hidden token, or None."""
    if getattr(backbone, "contextual", True):
        return None
    return ("a masked token's output reads only the token itself in this model (no context), so nothing "
            "but piece frequencies could be learnt; a bag of embeddings trains with objective.name = \"word2vec\"")


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


@OBJECTIVES.register("mlm")
class MaskedLM(PretrainingObjective):
    batch_layout = "mlm"  # the batch layout the loader builds for this objective

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo):
        super().__init__(cfg, data)
        if getattr(data, "mask_id", None) is None:
            raise PretrainerError(f"objective.name = {cfg.name!r} needs a tokenizer with a [MASK] token; "
                                  f"use tokenizer.kind = \"wordpiece\" (byte-BPE has none)")
        # "word" is also spelled whole_word = true (the older key)
        self.masking = "word" if cfg.whole_word and cfg.masking == "token" else cfg.masking
        self.layout_options = {"whole_word": self.masking != "token"}  # the batches then carry word_starts
        if self.masking == "lexicon":
            if not Path(cfg.lexicon).is_file():
                raise PretrainerError(f"config key 'objective.lexicon' = '{cfg.lexicon}': file not found")
            self.layout_options["lexicon"] = cfg.lexicon  # ... and unit_starts (data/lexicon.py)
        self.mask_id = data.mask_id
        self.vocab_size = data.vocab_size
        self.special_ids = list(getattr(data, "special_ids", None) or [])
        self.mask_rate = cfg.mask_rate

    def check_data(self, data) -> None:
        super().check_data(data)
        if self.masking == "lexicon":
            if not hasattr(data, "lexicon"):
                raise PretrainerError(f"objective.masking = \"lexicon\" finds phrases in text; the data module "
                                      f"{type(data).__name__} holds none")
            data.lexicon(self.cfg.lexicon)  # read and encoded now: its errors come before the run is written

    def save(self, run_dir) -> None:
        """A copy of the lexicon beside config.toml: what the run masked by, if the file changes later."""
        if self.masking == "lexicon":
            atomic_write_bytes(Path(run_dir) / "lexicon.txt", Path(self.cfg.lexicon).read_bytes())

    def set_progress(self, fraction: float) -> None:
        end = self.cfg.mask_rate_end
        if end > 0:
            self.mask_rate = self.cfg.mask_rate + (end - self.cfg.mask_rate) * fraction

    def initialise(self, module: PretrainingModel, data) -> None:
        if self.cfg.unigram_bias and "mlm_head" in module.head_names:
            self.set_unigram_bias(module.mlm_head.bias, data)

    def set_unigram_bias(self, bias: torch.Tensor, data) -> None:
        """An MLM output bias (V,) <- the corpus' log unigram frequencies (objective.unigram_bias)."""
        counts = torch.as_tensor(data.token_counts(), dtype=torch.float64)
        counts[self.special_ids] = 0  # never a target
        # add-one smoothing: a piece the corpus never shows still gets a finite, low logit
        log_freq = torch.log((counts + 1) / (counts + 1).sum())
        with torch.no_grad():
            bias.copy_(log_freq.to(bias.dtype))

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if getattr(backbone, "causal", False):
            return "masked LM predicts a token from both sides; a causal decoder sees only its left (use clm)"
        if getattr(backbone, "is_encoder_decoder", False):
            return ("masked LM trains an encoder alone; an encoder–decoder pre-trains both stacks with "
                    "objective.name = \"span_corruption\"")
        table = getattr(getattr(backbone, "embeddings", None), "word_embeddings", None)
        if isinstance(table, nn.Embedding) and table.embedding_dim != backbone.d_model:
            return (f"the MLM head's decoder is the word-embedding table (width {table.embedding_dim}), which "
                    f"this model's output (width {backbone.d_model}) does not match (a bidirectional LSTM: "
                    f"use objective.name = \"bilm\")")
        return no_context(backbone)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """The backbone with an MLM head (decoder tied to the word embeddings)."""
        freeze_pooler(backbone)  # masked LM reads no pooled vector
        return PretrainingModel(backbone, {"mlm_head": mlm_head_for(backbone)})

    def mask(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (masked ids, labels), both (B, T), with the positions objective.masking chooses."""
        return MASKINGS[self.masking](self, batch, generator)

    def _batch_field(self, batch: dict, name: str) -> torch.Tensor:
        if name not in batch:
            raise ValueError(f"objective.masking = {self.masking!r} but the batch has no {name}")
        return batch[name]

    def _corrupt(self, batch: dict, chosen: torch.Tensor, generator: torch.Generator | None):
        return corrupt_chosen(batch["input_ids"], batch["special_tokens_mask"], chosen, mask_id=self.mask_id,
                              vocab_size=self.vocab_size, mask_token_rate=self.cfg.mask_token_rate,
                              random_token_rate=self.cfg.random_token_rate, generator=generator,
                              special_ids=self.special_ids)

    def _mask_spans(self, batch: dict, generator: torch.Generator | None):
        chosen = choose_spans(batch["special_tokens_mask"], self._batch_field(batch, "word_starts"), self.mask_rate,
                              p=self.cfg.span_p, max_len=self.cfg.span_max, generator=generator)
        return self._corrupt(batch, chosen, generator)

    def _mask_units(self, batch: dict, generator: torch.Generator | None):
        chosen = choose_units(batch["special_tokens_mask"], self._batch_field(batch, "unit_starts"), self.mask_rate,
                              generator=generator)
        return self._corrupt(batch, chosen, generator)

    def _mask_words(self, batch: dict, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        word_starts = None if self.masking == "token" else self._batch_field(batch, "word_starts")
        return mask_tokens(batch["input_ids"], batch["special_tokens_mask"], mask_id=self.mask_id,
                           vocab_size=self.vocab_size, mask_rate=self.mask_rate,
                           mask_token_rate=self.cfg.mask_token_rate,
                           random_token_rate=self.cfg.random_token_rate, word_starts=word_starts,
                           generator=generator, special_ids=self.special_ids)

    def encode(self, model: nn.Module, batch: dict, generator: torch.Generator | None = None):
        """Mask, run the backbone once: -> hidden (B, T, C), labels (B, T)."""
        masked_ids, labels = self.mask(batch, generator)
        hidden = model(masked_ids, batch.get("attention_mask"), batch.get("token_type_ids"))
        return hidden, labels

    @staticmethod
    def masked_lm_terms(model: nn.Module, hidden: torch.Tensor, labels: torch.Tensor):
        """-> (mean loss, n_correct, n_predicted) over the chosen positions only.

        The vocabulary projection is the most expensive matmul, so it runs on the ~15%
        chosen positions (N, C) rather than on every position (B, T, C).
        """
        chosen = labels != IGNORE_INDEX  # (B, T)
        targets = labels[chosen]  # (N,)
        if targets.numel() == 0:  # nothing to predict (all special tokens): a zero that backprops
            zero = hidden.sum() * 0.0
            return zero, zero.detach(), 0
        features, weight, bias = model.lm_projection(hidden[chosen])  # (N, C), (V, C), (V,)
        loss, hits = linear_cross_entropy(features, weight, targets, bias)
        n_correct = hits.sum()
        return loss, n_correct, targets.numel()

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        hidden, labels = self.encode(model, batch)
        loss, n_correct, n = self.masked_lm_terms(model, hidden, labels)
        return {"loss": loss, "mlm_acc": (n_correct.float() / max(n, 1)).detach(),
                "n_tokens": batch["input_ids"].numel()}

    @property
    def eval_mask_rate(self) -> float:
        """Held-out batches are always masked at the schedule's final rate, so evaluations
        compare across steps (and with constant-rate runs at that rate)."""
        return self.cfg.mask_rate_end if self.cfg.mask_rate_end > 0 else self.cfg.mask_rate

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        training_rate, self.mask_rate = self.mask_rate, self.eval_mask_rate
        try:
            return self._evaluate(model, batches)
        finally:
            self.mask_rate = training_rate

    def _evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        loss_sum = correct = 0.0
        count = 0
        for batch, generator in seeded_evaluation_batches(model, batches):
            hidden, labels = self.encode(model, batch, generator)
            loss, n_correct, n = self.masked_lm_terms(model, hidden, labels)
            loss_sum += float(loss) * n
            correct += float(n_correct)
            count += n
        mlm_loss = loss_sum / max(count, 1)
        return {"mlm_loss": mlm_loss, "mlm_acc": correct / max(count, 1), "mlm_ppl": perplexity(mlm_loss)}


# objective.masking -> how MaskedLM.mask chooses and corrupts positions (a batch -> (masked ids, labels)).
MASKINGS = {
    "token": MaskedLM._mask_words,
    "word": MaskedLM._mask_words,
    "span": MaskedLM._mask_spans,
    "lexicon": MaskedLM._mask_units,
}
