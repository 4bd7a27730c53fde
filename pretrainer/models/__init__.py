"""Model architectures: each a config dataclass plus an nn.Module, registered by name.

Importing this package registers the built-in models ("bert", "gpt", "t5", "boe", "resnet") in `MODELS`.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from pretrainer.config import ModelConfig, from_dict, resolve_section
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models.boe import BagOfEmbeddings, BoEConfig
from pretrainer.models.decoder import GPT, GPTConfig
from pretrainer.models.encoder import BertConfig, BertModel
from pretrainer.models.heads import SequenceClassifier, TokenClassifier
from pretrainer.models.resnet import ResNet, ResNetConfig
from pretrainer.models.t5 import T5Config, T5Model
from pretrainer.registry import MODELS

__all__ = ["BagOfEmbeddings", "BoEConfig", "BertConfig", "BertModel", "GPT", "GPTConfig", "ResNet", "ResNetConfig",
           "SequenceClassifier", "T5Config", "T5Model", "TokenClassifier", "build_model", "model_modality",
           "model_config_dict", "model_from_config_dict"]


def model_modality(model) -> str:
    """What a model (a module, its class, or a module wrapped around a backbone) reads: "image" for
    the image backbones (their config has `image_size`), else "text" (token ids). A class may say
    so itself with a `modality` attribute."""
    model = getattr(model, "backbone", model)
    declared = getattr(model, "modality", None)
    if isinstance(declared, str):
        return declared
    config_class = getattr(model, "config_class", None) or type(getattr(model, "config", None))
    fields = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    return "image" if "image_size" in fields else "text"


def build_model(cfg: ModelConfig, data: DataInfo | int) -> nn.Module:
    """The registered model for `cfg.name`, sized from the data's description (an int is a
    vocabulary size, for text); a vocab_size of 0 in `cfg` takes the data's, and an image model's
    image_size / channels of 0 the images'.

    `cfg` is not modified: the model's own `config` holds the resolved vocabulary size.
    A bare `ModelConfig` (only a name) gets that architecture's defaults.
    """
    cls = MODELS.get(cfg.name)
    cfg = resolve_section(ModelConfig, cfg)
    if cfg.init_embeddings:  # a starting point, applied by the caller (api): not part of the architecture
        cfg = dataclasses.replace(cfg, init_embeddings="")
    if model_modality(cls) == "image":
        return cls(sized_for_images(cfg, data))
    vocab_size = data if isinstance(data, int) else data.vocab_size
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    elif cfg.vocab_size < vocab_size:
        raise PretrainerError(f"config key 'model.vocab_size' = {cfg.vocab_size} is smaller than the "
                              f"tokenizer's vocabulary ({vocab_size}); set it to 0 to use the tokenizer's")
    return cls(cfg)


def sized_for_images(cfg: ModelConfig, data: DataInfo | int) -> ModelConfig:
    """An image model's config with image_size / channels of 0 taken from the data's images; a
    size the config sets must be the data's."""
    found = {"image_size": getattr(data, "image_size", 0), "channels": getattr(data, "channels", 0)}
    for key, value in found.items():
        own = getattr(cfg, key)
        if own == 0 and value == 0:
            raise PretrainerError(f"config key 'model.{key}' is 0 (the data's) but no image data describes it; "
                                  f"set it, or read images (data.name = \"images\")")
        if own == 0:
            cfg = dataclasses.replace(cfg, **{key: value})
        elif value and own != value:
            raise PretrainerError(f"config key 'model.{key}' = {own}, but the data's images have {key} {value}; "
                                  f"set it to 0 to take the data's (or convert the images with data.{key})")
    return cfg


def model_config_dict(model: nn.Module) -> dict:
    """What run_dir/model.json holds: {"name": ..., "config": {...}} (architecture only).

    A SequenceClassifier adds {"classifier": {"num_labels", "pooling"}} so it can be rebuilt too.
    """
    config = dataclasses.asdict(model.config)
    config.pop("init_embeddings", None)  # how a run started, not its architecture
    spec = {"name": model.config.name, "config": config}
    if isinstance(model, SequenceClassifier):
        spec["classifier"] = {"num_labels": model.num_labels, "pooling": model.pooling,
                              "dropout": model.dropout.p, "chunk_pooling": model.chunk_pooling}
    elif isinstance(model, TokenClassifier):
        spec["tagger"] = {"num_labels": model.num_labels, "dropout": model.dropout.p,
                          "case_features": model.case_embeddings is not None, "crf": model.crf is not None}
    return spec


def model_from_config_dict(spec: dict) -> nn.Module:
    """Inverse of `model_config_dict`: a freshly initialised model of that architecture."""
    cls = MODELS.get(spec["name"])
    cfg = from_dict(cls.config_class, {**spec["config"], "name": spec["name"]}, source="model.json")
    model = cls(cfg)
    if "classifier" in spec:
        model = SequenceClassifier(model, **spec["classifier"])
    elif "tagger" in spec:
        model = TokenClassifier(model, **spec["tagger"])
    return model
