"""A dense network on flattened images (the classic MLP / dense autoencoder's encoder).

The image's pixels (C * S * S) go through `hidden` fully connected layers, each followed by
the activation and dropout; the last layer's output is the image's one feature vector, so
`forward(images) -> (B, 1, d_model)` with d_model = hidden[-1], one "token" per image as the
transfer surface expects.

Depth for layer-wise rules: the first layer reads pixels, as an embedding reads ids, so it is
depth 0 and `n_layers = len(hidden) - 1` layers sit above it.
Module tree: `layers.i` (nn.Linear), i = 0 .. len(hidden) - 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from pretrainer.config import ModelConfig, _field, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import decay_groups
from pretrainer.registry import MODELS

# Elementwise activations of the dense layers (a dense autoencoder's classic ones included).
DENSE_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@dataclass
class MLPConfig(ModelConfig):
    name: str = _field("mlp", "architecture from the model registry")
    image_size: int = _field(0, "side of the square input images in pixels (0 = the data's)", check=non_negative)
    channels: int = _field(0, "colour channels of the input images (0 = the data's)", check=non_negative)
    hidden: list[int] = _field([512, 256], "widths of the dense layers, input side first; the last is the "
                                           "feature width (d_model)", check=positive)
    activation: str = _field("relu", "activation after each dense layer", tuple(DENSE_ACTIVATIONS))
    dropout: float = _field(0.0, "dropout after each dense layer's activation", check=dropout_rate)
    init_std: float = _field(0.02, "std of the normal initialisation of the heads an objective builds around it "
                                   "(the dense layers are scaled by their fan-in instead)", check=positive)

    def check(self) -> None:
        if not self.hidden:
            invalid("hidden", "is empty; list at least one layer width, e.g. [512, 256]")

    @classmethod
    def tiny(cls) -> MLPConfig:
        """Two layers of width 32: the registry contract tests' size."""
        return cls(hidden=[32, 32])


@MODELS.register("mlp")
class DenseNetwork(nn.Module):
    config_class = MLPConfig
    causal = False
    modality = "image"  # forward reads images (B, C, S, S), not token ids

    def __init__(self, config: MLPConfig):
        super().__init__()
        if config.image_size <= 0 or config.channels <= 0:
            raise ValueError("MLPConfig.image_size/channels is 0: build the model with build_model(cfg, data_info)")
        if not config.hidden:
            raise ValueError("MLPConfig.hidden is empty: list at least one layer width")
        self.config = config
        self.d_model = config.hidden[-1]
        self.n_layers = len(config.hidden) - 1
        widths = [config.channels * config.image_size ** 2, *config.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.act = DENSE_ACTIVATIONS[config.activation]()
        self.dropout = nn.Dropout(config.dropout)
        # He (ReLU, GELU) or Xavier (tanh, sigmoid) scale: a fixed std such as 0.02 would shrink
        # the activations at every layer of a wide dense stack (fan-in 784 for MNIST).
        gain = 2.0 if config.activation in ("relu", "gelu") else 1.0
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=(gain / layer.in_features) ** 0.5)
            nn.init.zeros_(layer.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) -> (B, 1, d_model): the last dense layer's activations."""
        expected = (self.config.channels, self.config.image_size, self.config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"mlp expects images (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        x = images.flatten(1)  # (B, C * S * S)
        for layer in self.layers:
            x = self.dropout(self.act(layer(x)))
        return x.unsqueeze(1)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "mean") -> torch.Tensor:
        """(B, 1, C) -> (B, C): the one vector ("cls" and "mean" are the same here)."""
        if pooling in ("mean", "cls"):
            return hidden[:, 0]
        raise ValueError(f"unknown pooling {pooling!r} for mlp; choose mean (cls is the same vector)")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise rules: dense layer i -> i (the pixel-reading layer is 0), heads
        n_layers + 1."""
        m = re.match(r"layers\.(\d+)\.", param_name)
        return int(m.group(1)) if m else self.n_layers + 1
