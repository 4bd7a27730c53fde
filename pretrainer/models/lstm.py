"""Recurrent language models: an AWD-LSTM-style stack (ULMFiT) and its bidirectional form (ELMo).

One `torch.nn.LSTM` per layer, so each layer is its own `layer_id` (discriminative rates and
gradual unfreezing move it alone). The output softmax is the word-embedding table itself (tied,
no bias, as GPT-2's), so the top layer's output must have the embedding width: `projection`
"top" maps it there with a linear layer when `hidden` differs (AWD-LSTM instead makes its top
layer narrow), "every" makes every layer an LSTMP (torch's `proj_size`: the recurrent output is
projected, ELMo's cells), so all layers have the embedding width.

Dropouts (AWD-LSTM, Merity et al. 2018), each a config key: `embed_dropout` drops whole word
types (every occurrence of a word in the batch) and rescales the rest; `input_dropout` on the
embeddings, `hidden_dropout` between layers and `output_dropout` before the softmax are
"locked": one mask per sequence, the same at every time step. Weight-dropped (DropConnect)
recurrent matrices are not implemented: they need the cell's weights replaced every forward.

`bidirectional = true` (ELMo, Peters et al. 2018) adds a second stack that reads each text
right to left. Both share the embeddings and the softmax. `directions()` gives the two top
layers for the bidirectional LM objective (objectives/bilm.py); `forward()`, what transfer
reads, is ELMo's scalar mix: gamma * sum_j softmax(w)_j * [fwd_j; bwd_j] over the layers
(layer 0 = the token embedding, given to both halves), with w and gamma trained by the task.

Padding is assumed on the right (the tokenizer's): the forward stack reads pads only after the
real tokens; the backward stack reads each row reversed within its own length, so it too sees
the real tokens first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ModelConfig, _field, at_least, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import decay_groups, masked_mean
from pretrainer.registry import MODELS

POOLINGS = ("cls", "last", "mean", "max", "concat")


@dataclass
class LSTMConfig(ModelConfig):
    name: str = _field("lstm", "architecture from the model registry")
    vocab_size: int = _field(0, "vocabulary size (0 = the tokenizer's)", check=non_negative)
    d_embed: int = _field(256, "width of the word embeddings, which are also the output softmax (tied)",
                          check=positive)
    hidden: int = _field(512, "width of each LSTM layer's cell (0 = d_embed)", check=non_negative)
    n_layers: int = _field(2, "stacked LSTM layers (per direction)", check=at_least(1))
    projection: str = _field("top", "how layers reach the embedding width: top (a linear map after the top "
                                    "layer when hidden != d_embed, AWD-LSTM) or every (each layer an LSTMP whose "
                                    "recurrent output is projected to d_embed, ELMo; needs hidden > d_embed)",
                             ("top", "every"))
    bidirectional: bool = _field(False, "ELMo: a second stack reads right to left (trained by objective "
                                        "\"bilm\"); transfer reads a learned weighted sum of all layers")
    embed_dropout: float = _field(0.1, "drop whole word types from the embedding table per batch (AWD-LSTM's "
                                       "embedding dropout)", check=dropout_rate)
    input_dropout: float = _field(0.1, "locked dropout on the embeddings (one mask per sequence)",
                                  check=dropout_rate)
    hidden_dropout: float = _field(0.2, "locked dropout between LSTM layers", check=dropout_rate)
    output_dropout: float = _field(0.1, "locked dropout on the top layer before the softmax", check=dropout_rate)
    init_std: float = _field(0.1, "std of the embedding table's normal initialisation (the LSTMs keep torch's "
                                  "uniform init, with forget-gate biases at 1)", check=positive)

    def check(self) -> None:
        hidden = self.hidden or self.d_embed
        if self.projection == "every" and hidden <= self.d_embed:
            invalid("projection", f"= \"every\" projects each layer's cell (hidden = {hidden}) down to d_embed = "
                                  f"{self.d_embed}, so hidden must be larger")
        if self.bidirectional and self.projection == "top" and hidden != self.d_embed and self.n_layers > 1:
            invalid("bidirectional", f"mixes all layers, so they need one width: set model.projection = \"every\" "
                                     f"or model.hidden = d_embed (now {hidden} != {self.d_embed})")

    @classmethod
    def tiny(cls) -> LSTMConfig:
        """2 layers, embeddings 32, cells 48 (a projection on top), no dropout: the contract tests' size."""
        return cls(d_embed=32, hidden=48, n_layers=2, embed_dropout=0.0, input_dropout=0.0, hidden_dropout=0.0,
                   output_dropout=0.0)


@dataclass
class ELMoConfig(LSTMConfig):
    """`model.name = "elmo"`: the LSTM with `bidirectional` on and LSTMP layers by default."""

    name: str = _field("elmo", "architecture from the model registry")
    bidirectional: bool = _field(True, "ELMo: a second stack reads right to left (trained by objective "
                                       "\"bilm\"); transfer reads a learned weighted sum of all layers")
    projection: str = _field("every", "how layers reach the embedding width: every (each layer an LSTMP whose "
                                      "recurrent output is projected to d_embed, ELMo; needs hidden > d_embed) or "
                                      "top (a linear map after the top layer; then hidden must equal d_embed)",
                             ("top", "every"))

    @classmethod
    def tiny(cls) -> ELMoConfig:
        """As the LSTM's, each layer an LSTMP so the layers can be mixed."""
        return cls(d_embed=32, hidden=48, n_layers=2, projection="every", embed_dropout=0.0, input_dropout=0.0,
                   hidden_dropout=0.0, output_dropout=0.0)


class LockedDropout(nn.Dropout):
    """Dropout with one mask per sequence, shared by every time step of x (B, T, C). A subclass
    of nn.Dropout, so `set_dropout` (finetune.dropout) reaches it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class WordEmbeddings(nn.Module):
    """The table under BERT's name (`embeddings.word_embeddings`), with word-type dropout."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_embed)
        self.embed_dropout = cfg.embed_dropout

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids)
        p = self.embed_dropout
        if self.training and p > 0:
            # One draw per word type, read at each occurrence: the same as zeroing table rows.
            keep = torch.empty(self.word_embeddings.num_embeddings, device=x.device).bernoulli_(1 - p)
            x = x * (keep[input_ids] / (1 - p)).unsqueeze(-1).to(x.dtype)
        return x


class Stack(nn.Module):
    """`n_layers` LSTMs reading left to right, the top one's output at the embedding width."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        hidden = cfg.hidden or cfg.d_embed
        every = cfg.projection == "every"
        width = cfg.d_embed if every else hidden  # what each layer outputs
        self.layers = nn.ModuleList(
            nn.LSTM(cfg.d_embed if i == 0 else width, hidden, batch_first=True, proj_size=cfg.d_embed if every else 0)
            for i in range(cfg.n_layers))
        self.proj = nn.Linear(hidden, cfg.d_embed) if width != cfg.d_embed else None
        self.hidden_dropout = LockedDropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, T, d_embed) -> each layer's output (B, T, width), the top one at d_embed."""
        outs = []
        for i, lstm in enumerate(self.layers):
            if i:
                x = self.hidden_dropout(x)
            x, _ = lstm(x)
            outs.append(x)
        if self.proj is not None:
            outs[-1] = self.proj(outs[-1])
        return outs


class ScalarMix(nn.Module):
    """ELMo's task-specific combination of layers: gamma * sum_j softmax(w)_j * h_j. It starts as
    the plain average (w = 0, gamma = 1)."""

    def __init__(self, n: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(n))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        s = torch.softmax(self.weights, dim=0)
        return self.gamma * sum(w * h for w, h in zip(s, layers))


def lengths_of(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) attention mask -> (B,) real lengths; None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    return mask.long().sum(dim=1)


def reverse_within(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, T, C) with each row's first `lengths[b]` positions reversed and its pads left in place
    (so a right-to-left reader meets the real tokens first). Its own inverse."""
    if lengths is None:
        return x.flip(1)
    T = x.shape[1]
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    n = lengths.to(x.device)[:, None]  # (B, 1)
    index = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return x.gather(1, index[:, :, None].expand_as(x))


@MODELS.register("lstm")
class LSTMLanguageModel(nn.Module):
    config_class = LSTMConfig

    def __init__(self, config: LSTMConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("LSTMConfig.vocab_size is 0: build the model with build_model(cfg, vocab_size)")
        self.config = config
        self.causal = not config.bidirectional  # the forward LM's position t has read only tokens <= t
        self.n_layers = config.n_layers
        self.embeddings = WordEmbeddings(config)
        self.input_dropout = LockedDropout(config.input_dropout)
        self.output_dropout = LockedDropout(config.output_dropout)
        self.forward_stack = Stack(config)
        self.backward_stack = Stack(config) if config.bidirectional else None
        self.scalar_mix = ScalarMix(config.n_layers + 1) if config.bidirectional else None
        self.d_model = config.d_embed * (2 if config.bidirectional else 1)  # the width forward returns
        nn.init.normal_(self.embeddings.word_embeddings.weight, mean=0.0, std=config.init_std)
        for stack in (self.forward_stack, self.backward_stack):
            if stack is None:
                continue
            if stack.proj is not None:
                nn.init.normal_(stack.proj.weight, std=stack.proj.in_features ** -0.5)
                nn.init.zeros_(stack.proj.bias)
            for lstm in stack.layers:
                with torch.no_grad():  # forget gates open at the start: gradients flow back in time
                    h = lstm.hidden_size
                    lstm.bias_ih_l0[h:2 * h].fill_(1.0)
                    lstm.bias_hh_l0[h:2 * h].zero_()

    # ------------------------------------------------------------ features

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        return self.input_dropout(x)

    def _layers(self, input_ids, attention_mask, inputs_embeds) -> tuple[torch.Tensor, list, list | None]:
        """The embeddings (B, T, E) and each stack's layer outputs (the backward ones back in reading order)."""
        x = self._embed(input_ids, inputs_embeds)
        fwd = self.forward_stack(x)
        if self.backward_stack is None:
            return x, fwd, None
        lengths = lengths_of(attention_mask)
        bwd = [reverse_within(h, lengths) for h in self.backward_stack(reverse_within(x, lengths))]
        return x, fwd, bwd

    def directions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The top layer of each direction (B, T, d_embed): position t of the forward one has read
        tokens <= t, of the backward one tokens >= t (None for a forward-only model)."""
        _, fwd, bwd = self._layers(input_ids, attention_mask, None)
        return fwd[-1], None if bwd is None else bwd[-1]

    def forward(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, d_model): the top layer (forward LM), or the scalar mix of
        [forward; backward] over all layers (bidirectional). token_type_ids are ignored."""
        x, fwd, bwd = self._layers(input_ids, attention_mask, inputs_embeds)
        if bwd is None:
            return fwd[-1]
        layers = [torch.cat([x, x], dim=-1)] + [torch.cat([f, b], dim=-1) for f, b in zip(fwd, bwd)]
        return self.scalar_mix(layers)

    # ------------------------------------------------------------ transfer surface

    poolings = POOLINGS

    def pooled_width(self, pooling: str) -> int:
        return 3 * self.d_model if pooling == "concat" else self.d_model

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "last") -> torch.Tensor:
        """(B, T, C) -> (B, C), or (B, 3C) for "concat" (ULMFiT's [last, max, mean]).

        "last" (= "cls", so BERT configs work unchanged) is the state that has read the whole text:
        the last real token's; for a bidirectional model its forward half there and its backward
        half at the first token."""
        if pooling in ("last", "cls"):
            return self._last(hidden, attention_mask)
        if pooling == "mean":
            return masked_mean(hidden, attention_mask)
        if pooling == "max":
            return masked_max(hidden, attention_mask)
        if pooling == "concat":
            return torch.cat([self._last(hidden, attention_mask), masked_max(hidden, attention_mask),
                              masked_mean(hidden, attention_mask)], dim=-1)
        raise ValueError(f"unknown pooling {pooling!r} for {self.config.name}; choose {', '.join(POOLINGS)}")

    def _last(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = hidden.shape
        last = (torch.full((B,), T - 1, device=hidden.device) if attention_mask is None
                else attention_mask.long().sum(dim=1).clamp(min=1) - 1)
        at_last = hidden[torch.arange(B, device=hidden.device), last]
        if self.backward_stack is None:
            return at_last
        return torch.cat([at_last[:, :C // 2], hidden[:, 0, C // 2:]], dim=-1)

    def lm_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        """(features, weight, bias) with logits = features @ weight.T: a top layer (B, T, d_embed)
        through output dropout onto the tied embedding table."""
        return self.output_dropout(hidden), self.embeddings.word_embeddings.weight, None

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        features, weight, _ = self.lm_projection(hidden)
        return F.linear(features, weight)

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise rules: embeddings 0, LSTM layer i of either direction i + 1 (a top
        projection with the top layer), the scalar mix above the top, with the task's head."""
        if param_name.startswith("embeddings."):
            return 0
        m = re.match(r"(?:forward|backward)_stack\.layers\.(\d+)\.", param_name)
        if m:
            return int(m.group(1)) + 1
        if re.match(r"(?:forward|backward)_stack\.proj\.", param_name):
            return self.n_layers
        return self.n_layers + 1


@MODELS.register("elmo")
class ELMo(LSTMLanguageModel):
    """The bidirectional LSTM under its own name (the same as model.name = "lstm" with
    model.bidirectional = true), so the registry contract tests train it with "bilm"."""

    config_class = ELMoConfig


def masked_max(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Each feature's largest value over the real tokens: (B, T, C) -> (B, C)."""
    if attention_mask is None:
        return hidden.max(dim=1).values
    pad = ~attention_mask.bool()[:, :, None]
    return hidden.masked_fill(pad, torch.finfo(hidden.dtype).min).max(dim=1).values
