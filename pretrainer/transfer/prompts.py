"""Prompt-based classification: cloze prompts over the MLM head, and soft prompts.

Cloze (PET-style): each example becomes a sentence with one [MASK], e.g. "{text} it was {mask} .",
and the score of label i is the MLM logit of its verbalizer word (e.g. "great") at the mask.
Evaluated untrained that is a zero-shot classifier; fine-tuning the whole model through it, MLM
head included, is few-shot learning that starts from the pre-training task instead of a random head.

Soft prompts: a few trainable vectors in the word-embedding space sit right after [CLS]; the
backbone is frozen and only the prompt and a linear head learn (a few thousand parameters).

Both modules take a classification batch (`input_ids`, `attention_mask`, `token_type_ids`) and
return logits (B, num_labels), so `ClassificationObjective` trains and evaluates them unchanged.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn

from pretrainer.data.labeled import EncodedDataset, collate, label_indices
from pretrainer.data.readers import LabeledExamples
from pretrainer.data.tokenizer import TextTokenizer, truncate_longest_first
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import WrapsBackbone, freeze_pooler, word_embedding_table
from pretrainer.objectives.heads import PretrainingModel, mlm_head_for
from pretrainer.models.layers import decay_groups, pool_chunks

TEMPLATE_KEY = "config key 'finetune.prompt.template'"
VERBALIZER_KEY = "config key 'finetune.prompt.verbalizer'"
SOFT_TOKENS_KEY = "config key 'finetune.prompt.soft_tokens'"
_SLOT = re.compile(r"\{(text|pair|mask)\}")


def template_parts(template: str, has_pairs: bool) -> list[str]:
    """Alternating literal text and slot names: "{text} it was {mask} ." -> ["", "text", " it was ", "mask", " ."]."""
    parts = _SLOT.split(template)
    slots = parts[1::2]
    if slots.count("text") != 1 or slots.count("mask") != 1 or slots.count("pair") > 1:
        raise PretrainerError(f"{TEMPLATE_KEY} must hold {{text}} and {{mask}} once each (and {{pair}} at most "
                              f"once), got {template!r}")
    if has_pairs and "pair" not in slots:
        raise PretrainerError(f"{TEMPLATE_KEY}: the examples are sentence pairs; place the second sentence "
                              f"with {{pair}}, e.g. \"{{text}} ? {{mask}} , {{pair}}\" (got {template!r})")
    if not has_pairs and "pair" in slots:
        raise PretrainerError(f"{TEMPLATE_KEY} has a {{pair}} slot but the examples have no second sentence")
    return parts


def encode_cloze_examples(examples: LabeledExamples, tokenizer: TextTokenizer, label_names: Sequence[str],
                          template: str, max_len: int) -> EncodedDataset:
    """[CLS] filled-in template [SEP] per example, at most max_len tokens, exactly one [MASK] each.

    Only the example's text (and pair) is truncated, so the mask and the rest of the
    template always survive. Token types are all 0: the template is one segment.
    """
    if tokenizer.mask_id is None:
        raise PretrainerError(f"cloze prompts need a tokenizer with a [MASK] token (BERT WordPiece); "
                              f"this one is {tokenizer.kind}")
    parts = template_parts(template, examples.pairs is not None)
    literals = tokenizer.encode_batch(parts[0::2])  # ids of the fixed text around the slots
    fixed = sum(len(ids) for ids in literals) + 3  # + [CLS], [MASK], [SEP]
    budget = max_len - fixed
    if budget < (2 if examples.pairs is not None else 1):
        raise PretrainerError(f"config key 'finetune.max_len' = {max_len} leaves no room for the text: the "
                              f"template {template!r} takes {fixed} tokens with [CLS] and [SEP]")
    labels = label_indices(examples, label_names)
    texts = _without_mask(tokenizer.encode_batch(examples.texts), tokenizer)
    pairs = (_without_mask(tokenizer.encode_batch(examples.pairs), tokenizer)
             if examples.pairs is not None else [[]] * len(texts))
    all_ids = []
    for text, pair in zip(texts, pairs):
        keep_text, keep_pair = truncate_longest_first(len(text), len(pair), budget)
        slots = {"text": text[:keep_text], "pair": pair[:keep_pair], "mask": [tokenizer.mask_id]}
        ids = [tokenizer.cls_id]
        for i, part in enumerate(parts):
            ids.extend(literals[i // 2] if i % 2 == 0 else slots[part])
        ids.append(tokenizer.sep_id)
        all_ids.append(ids)
    return EncodedDataset(input_ids=all_ids, token_type_ids=[[0] * len(ids) for ids in all_ids], labels=labels,
                          label_names=list(label_names), pad_id=tokenizer.pad_id)


def content_free_batch(tokenizer: TextTokenizer, label_names: Sequence[str], template: str,
                       has_pairs: bool) -> dict[str, torch.Tensor]:
    """One cloze row with empty text (and pair): the template alone, for `ClozeClassifier.calibrate`."""
    empty = LabeledExamples(texts=[""], pairs=[""] if has_pairs else None, labels=[label_names[0]],
                            source="content-free input", line_numbers=[0])
    # No text to truncate, so any length that holds the template will do.
    return collate(encode_cloze_examples(empty, tokenizer, label_names, template, max_len=1 << 20), [0])


def _without_mask(encoded: list[list[int]], tokenizer: TextTokenizer) -> list[list[int]]:
    # A literal "[MASK]" in the data would add a second mask; the classifier reads exactly one per row.
    return [[tokenizer.unk_id if t == tokenizer.mask_id else t for t in ids] if tokenizer.mask_id in ids else ids
            for ids in encoded]


def verbalizer_token_ids(tokenizer: TextTokenizer, verbalizer: Sequence[str],
                         label_names: Sequence[str]) -> list[int]:
    """The vocabulary id of each label's word, in label order; each word must be exactly one token.

    A word is tokenized the way text is (the tokenizer's normalizer lowercases it when the
    tokenizer does), so its id is the one the MLM head learned to predict for that word.
    """
    if len(verbalizer) != len(label_names):
        raise PretrainerError(f"{VERBALIZER_KEY} has {len(verbalizer)} words for {len(label_names)} labels "
                              f"{list(label_names)}: give one word per label, in label order")
    ids = []
    for word, label in zip(verbalizer, label_names):
        encoding = tokenizer.tokenizer.encode(word, add_special_tokens=False)
        if len(encoding.ids) != 1 or encoding.ids[0] == tokenizer.unk_id or encoding.ids[0] in tokenizer.special_ids:
            raise PretrainerError(f"{VERBALIZER_KEY}: {word!r} (label {label!r}) must be one token of the "
                                  f"vocabulary, but it tokenizes as {encoding.tokens}")
        ids.append(encoding.ids[0])
    if len(set(ids)) < len(ids):
        raise PretrainerError(f"{VERBALIZER_KEY}: {list(verbalizer)} gives two labels the same token")
    return ids


class ClozeClassifier(WrapsBackbone):
    """Label scores = the MLM logits of the verbalizer tokens at the single [MASK] of each row."""

    def __init__(self, backbone: nn.Module, verbalizer_ids: Sequence[int], mask_id: int):
        super().__init__()
        if not getattr(backbone, "has_lm_head", False):
            # A backbone without its pre-training heads (trained from scratch, or stripped):
            # cloze scores come from a fresh MLM head, as for a checkpoint that shipped none.
            backbone = PretrainingModel(backbone, {"mlm_head": mlm_head_for(backbone)})
        freeze_pooler(backbone.backbone)  # cloze scores read the [MASK] position, never the pooler
        self.backbone = backbone
        self.mask_id = mask_id
        self.num_labels = len(verbalizer_ids)
        # Not saved with the weights: the verbalizer is configuration, and the checkpoint keeps
        # the backbone's own keys. A buffer so it follows the model to its device.
        self.register_buffer("verbalizer_ids", torch.tensor(list(verbalizer_ids), dtype=torch.long),
                             persistent=False)
        # Subtracted from the label scores; zero unless `calibrate` sets it (also not saved).
        self.register_buffer("label_bias", torch.zeros(len(verbalizer_ids)), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        is_mask = input_ids == self.mask_id  # (B, T)
        if not bool((is_mask.sum(dim=1) == 1).all()):
            raise ValueError("every row of a cloze batch needs exactly one [MASK] (encode with encode_cloze_examples)")
        hidden = self.backbone(input_ids, batch.get("attention_mask"), batch.get("token_type_ids"))  # (B, T, C)
        at_mask = hidden[is_mask]  # (B, C): one position per row, in row order
        # The vocabulary projection runs on B vectors only, never on all B * T positions.
        return self.backbone.lm_logits(at_mask)[:, self.verbalizer_ids] - self.label_bias  # (B, num_labels)

    @torch.no_grad()
    def calibrate(self, content_free: dict[str, torch.Tensor]) -> torch.Tensor:
        """Contextual calibration (Zhao et al., 2021): make every label equally likely on an input
        that says nothing, by subtracting the label log-probabilities the model gives it.

        `content_free` is a one-row cloze batch (the template around an empty text). Returns
        the bias now subtracted from every row's label scores.
        """
        self.label_bias.zero_()
        was_training = self.training
        device = self.label_bias.device
        scores = self.eval()({k: v.to(device) for k, v in content_free.items()}).log_softmax(dim=-1)[0]
        self.train(was_training)
        self.label_bias.copy_(scores)
        return scores

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)



class SoftPromptClassifier(WrapsBackbone):
    """Frozen backbone over [CLS] prompt text [SEP]; the prompt vectors and a linear head learn.

    The prompt goes after [CLS] rather than before it, so [CLS] keeps position 0 as in
    pre-training and `pooling="cls"` still reads it. Mean pooling averages the input's own
    tokens, not the prompt positions: with 20 prompt vectors and a short sentence the prompt's
    states would otherwise dominate the mean; the prompt acts through attention instead.
    """

    def __init__(self, backbone: nn.Module, num_labels: int, soft_tokens: int = 20, pooling: str = "mean",
                 dropout: float = 0.1, chunk_pooling: str = "mean"):
        super().__init__()
        words = word_embedding_table(backbone, "soft prompts")
        max_len = backbone.config.max_len
        if soft_tokens < 1 or soft_tokens + 3 > max_len:
            raise PretrainerError(f"{SOFT_TOKENS_KEY} must be from 1 to {max_len - 3} (the model's max_len is "
                                  f"{max_len}), got {soft_tokens}")
        self.backbone = backbone.requires_grad_(False)
        self.soft_tokens = soft_tokens
        # The prompt takes position embeddings too: the longest [CLS] text [SEP] that still fits.
        self.max_input_len = max_len - soft_tokens
        # Start from the embeddings of random vocabulary tokens: vectors the frozen backbone
        # already knows how to read, which trains better than random noise of the wrong scale.
        picks = torch.randint(words.num_embeddings, (soft_tokens,)).to(words.weight.device)
        self.prompt = nn.Parameter(words.weight.detach()[picks].clone())  # (P, C)
        self.pooling = pooling
        self.chunk_pooling = chunk_pooling
        self.dropout = nn.Dropout(dropout)
        self.num_labels = num_labels
        self.head = nn.Linear(backbone.d_model, num_labels).to(device=words.weight.device, dtype=words.weight.dtype)
        nn.init.normal_(self.head.weight, mean=0.0, std=getattr(backbone.config, "init_std", 0.02))
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"]
        B, T = input_ids.shape
        if T > self.max_input_len:
            raise PretrainerError(f"inputs of {T} tokens plus {self.soft_tokens} soft prompt tokens exceed the "
                                  f"model's max_len = {self.config.max_len}; set config key 'finetune.max_len' "
                                  f"to at most {self.max_input_len} or lower {SOFT_TOKENS_KEY}")
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        types = batch.get("token_type_ids")
        words = self.backbone.embeddings.word_embeddings(input_ids)  # (B, T, C)
        prompt = self.prompt.to(words.dtype).expand(B, -1, -1)  # (B, P, C)
        x = _insert_after_first(words, prompt)  # (B, T + P, C): [CLS] prompt text [SEP]
        attend = _insert_after_first(mask, mask.new_ones(B, self.soft_tokens))
        if types is not None:
            types = _insert_after_first(types, types.new_zeros(B, self.soft_tokens))
        hidden = self.backbone(None, attend, types, inputs_embeds=x)  # (B, T + P, C)
        text_only = _insert_after_first(mask, mask.new_zeros(B, self.soft_tokens))
        pooled = self.backbone.pooled(hidden, text_only, self.pooling)  # (B or N chunks, C)
        if batch.get("chunk_doc") is not None:  # a long document's chunks, pooled again (heads.SequenceClassifier)
            pooled = pool_chunks(pooled, batch["chunk_doc"], self.chunk_pooling)  # (B, C)
        return self.head(self.dropout(pooled))

    def param_groups(self, weight_decay: float) -> list[dict]:
        decay, no_decay = decay_groups(self, weight_decay)
        # No decay on the prompt: it would pull the vectors to zero, away from the token
        # embeddings the frozen backbone was trained to read.
        decay["params"] = [p for p in decay["params"] if p is not self.prompt]
        no_decay["params"].append(self.prompt)
        return [decay, no_decay]

    def layer_id(self, param_name: str) -> int:
        """The prompt sits with the embeddings (0), the head above the backbone's top layer."""
        if param_name == "prompt":
            return 0
        return super().layer_id(param_name)


def _insert_after_first(per_token: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) and (B, P, ...) -> (B, T + P, ...): `inserted` placed after position 0 ([CLS])."""
    return torch.cat([per_token[:, :1], inserted, per_token[:, 1:]], dim=1)
