"""Model architectures: each a config dataclass plus an nn.Module, registered by name.

Importing this package registers the built-in models ("bert", "gpt", "t5", "boe", "lstm", "elmo", "resnet",
"vit", "mlp") in `MODELS`.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from pretrainer.config import ConfigInvalid, ModelConfig, from_dict, resolve_section
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models.boe import BagOfEmbeddings, BoEConfig
from pretrainer.models.decoder import GPT, GPTConfig
from pretrainer.models.encoder import BertConfig, BertModel
from pretrainer.models.heads import SequenceClassifier, TokenClassifier
from pretrainer.models.lstm import ELMo, ELMoConfig, LSTMConfig, LSTMLanguageModel
from pretrainer.models.mlp import DenseNetwork, MLPConfig
from pretrainer.models.resnet import ResNet, ResNetConfig
from pretrainer.models.t5 import T5Config, T5Model
from pretrainer.models.vit import ViTConfig, VisionTransformer
from pretrainer.registry import MODELS

__all__ = ["BagOfEmbeddings", "BoEConfig", "BertConfig", "BertModel", "DenseNetwork", "ELMo", "ELMoConfig", "GPT", "GPTConfig",
           "LSTMConfig", "LSTMLanguageModel", "MLPConfig",
           "ResNet", "ResNetConfig", "SequenceClassifier", "T5Config", "T5Model", "TokenClassifier", "ViTConfig",
           "VisionTransformer", "build_model", "model_config_dict", "model_from_config_dict", "model_modality",
           "sized_for_images"]


def model_modality(model) -> str:
    """What a model (a module, its class, or a module wrapped around a backbone) reads: its class's
    `modality` ("image" for the image backbones), else "text" (token ids)."""
    return getattr(getattr(model, "backbone", model), "modality", "text")


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
    if model_modality(cls) == "image":  # image_size / channels of 0 take the data's
        return cls(sized_for_images(cfg, data))
    vocab_size = data if isinstance(data, int) else data.vocab_size
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    elif cfg.vocab_size < vocab_size:
        raise PretrainerError(f"config key 'model.vocab_size' = {cfg.vocab_size} is smaller than the "
                              f"tokenizer's vocabulary ({vocab_size}); set it to 0 to use the tokenizer's")
    return cls(cfg)


def sized_for_images(cfg: ModelConfig, data: DataInfo | int) -> ModelConfig:
    """`cfg` with image_size and channels of 0 taken from the data's images (a one-line error
    when the data has none, or when the size then breaks a rule of the architecture)."""
    size = cfg.image_size or getattr(data, "image_size", 0)
    channels = cfg.channels or getattr(data, "channels", 0)
    if not size or not channels:
        raise PretrainerError(f"model {cfg.name!r} reads images, but the data is not images; use an image data "
                              f"module (data.name = \"images\") or set model.image_size and model.channels")
    for key, value in (("image_size", size), ("channels", channels)):
        if getattr(data, key, 0) not in (0, value):
            raise PretrainerError(f"config key 'model.{key}' = {value} but the data's images have {key} = "
                                  f"{getattr(data, key)}; set it to 0 to use the data's")
    cfg = dataclasses.replace(cfg, image_size=size, channels=channels)
    try:
        cfg.check()
    except ConfigInvalid as e:
        raise PretrainerError(f"config key 'model.{e.key}' {e.problem}") from None
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
