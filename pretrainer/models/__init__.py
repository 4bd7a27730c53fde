"""Model architectures: each a config dataclass plus an nn.Module, registered by name.

Importing this package registers the built-in models ("bert", "gpt", "t5", "boe", "lstm", "elmo") in `MODELS`.
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
from pretrainer.models.lstm import ELMo, ELMoConfig, LSTMConfig, LSTMLanguageModel
from pretrainer.models.t5 import T5Config, T5Model
from pretrainer.registry import MODELS

__all__ = ["BagOfEmbeddings", "BoEConfig", "BertConfig", "BertModel", "ELMo", "ELMoConfig", "GPT", "GPTConfig", "LSTMConfig", "LSTMLanguageModel", "SequenceClassifier", "T5Config",
           "T5Model", "TokenClassifier", "build_model",
           "model_config_dict", "model_from_config_dict"]


def build_model(cfg: ModelConfig, data: DataInfo | int) -> nn.Module:
    """The registered model for `cfg.name`, sized from the data's description (an int is a
    vocabulary size, for text); a vocab_size of 0 in `cfg` takes the data's.

    `cfg` is not modified: the model's own `config` holds the resolved vocabulary size.
    A bare `ModelConfig` (only a name) gets that architecture's defaults.
    """
    vocab_size = data if isinstance(data, int) else data.vocab_size
    cls = MODELS.get(cfg.name)
    cfg = resolve_section(ModelConfig, cfg)
    if cfg.init_embeddings:  # a starting point, applied by the caller (api): not part of the architecture
        cfg = dataclasses.replace(cfg, init_embeddings="")
    if cfg.vocab_size == 0:
        cfg = dataclasses.replace(cfg, vocab_size=vocab_size)
    elif cfg.vocab_size < vocab_size:
        raise PretrainerError(f"config key 'model.vocab_size' = {cfg.vocab_size} is smaller than the "
                              f"tokenizer's vocabulary ({vocab_size}); set it to 0 to use the tokenizer's")
    return cls(cfg)


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
