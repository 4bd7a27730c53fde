"""Where a fine-tuning run's backbone comes from: `finetune.init` (a run directory, `hf:PATH`,
`pkg:NAME`), its architecture afresh (`finetune.from_scratch`), or `[model]` with `tokenizer.path`
(an image model: with model.image_size and model.channels). What reads the inputs comes with it: a
tokenizer, or an image run's ImageProcessor."""

from __future__ import annotations

from torch import nn

from pretrainer.config import Config
from pretrainer.data.image_processor import ImageProcessor
from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models import build_model, model_modality
from pretrainer.models.layers import set_dropout
from pretrainer.interop.hf_import import load_pretrained
from pretrainer.registry import MODELS, TRANSFER_METHODS


def load_backbone(cfg: Config) -> tuple[nn.Module, TextTokenizer | ImageProcessor, str]:
    """The backbone and tokenizer to fine-tune, and a short description of where they came from;
    `finetune.dropout` (when >= 0) replaces the backbone's own dropout rates."""
    backbone, tokenizer, source = _load(cfg)
    if cfg.finetune.dropout >= 0:
        set_dropout(backbone, cfg.finetune.dropout)
    return backbone, tokenizer, source


def _load(cfg: Config) -> tuple[nn.Module, TextTokenizer | ImageProcessor, str]:
    ft = cfg.finetune
    if ft.init:
        loaded, tokenizer, _ = load_pretrained(ft.init)
        backbone = getattr(loaded, "backbone", loaded)  # drop pre-training heads or an imported classifier's
        if TRANSFER_METHODS.get(ft.method).reads_lm_head and getattr(loaded, "has_lm_head", False):
            backbone = loaded  # cloze prompts score with the MLM head pre-training left
        if ft.from_scratch:
            backbone = getattr(backbone, "backbone", backbone)
            # Same architecture and tokenizer, fresh weights: the honest baseline.
            backbone = type(backbone)(backbone.config)
            return backbone, tokenizer, f"scratch ({ft.init} architecture)"
        return backbone, tokenizer, ft.init
    if model_modality(MODELS.get(cfg.model.name)) == "image":
        return _image_model_from_scratch(cfg)
    if not cfg.tokenizer.path:
        raise PretrainerError("set finetune.init to a pre-training run directory, or tokenizer.path and "
                              "[model] for a model trained from scratch")
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    return build_model(cfg.model, tokenizer.vocab_size), tokenizer, "scratch"


def _image_model_from_scratch(cfg: Config) -> tuple[nn.Module, ImageProcessor, str]:
    """[model] from random weights for images of model.image_size and model.channels."""
    size, channels = getattr(cfg.model, "image_size", 0), getattr(cfg.model, "channels", 0)
    if not size or not channels:
        raise PretrainerError("set finetune.init to a pre-training run directory, or model.image_size and "
                              "model.channels for an image model trained from scratch")
    processor = ImageProcessor(image_size=size, channels=channels)
    return build_model(cfg.model, DataInfo("image", image_size=size, channels=channels)), processor, "scratch"
