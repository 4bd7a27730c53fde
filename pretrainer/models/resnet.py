"""A small ResNet-style CNN for images: a stem convolution, then stages of basic residual blocks
(two 3x3 convolutions and a shortcut), the first block of each stage after the first halving the
resolution and widening the channels.

Normalisation is GroupNorm, not BatchNorm: it keeps no running statistics, so a batch's features
do not depend on the other images in it, train and eval modes compute the same function (a
linear probe reads what training saw), and under DDP no cross-process statistics are needed at
small per-process batches.

Transfer surface (the same as the text backbones'): forward(images (B, C, S, S) in [0, 1]) ->
(B, N, d_model) feature tokens, the last stage's N = s x s spatial positions flattened;
`pooled` -> (B, d_model) (their mean); `layer_id` gives the stem depth 0 and each residual block
its own depth 1..n_layers; `param_groups` decays conv and linear weights, not norms and biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ModelConfig, _field, invalid, non_negative, positive
from pretrainer.models.layers import decay_groups
from pretrainer.registry import MODELS


@dataclass
class ResNetConfig(ModelConfig):
    name: str = _field("resnet", "architecture from the model registry")
    image_size: int = _field(0, "input images are image_size x image_size (0 = the data's)", check=non_negative)
    channels: int = _field(0, "input channels (0 = the data's)", check=non_negative)
    widths: list[int] = _field([32, 64, 128], "channels of each stage; each stage after the first halves the "
                                              "resolution (stride 2)", check=positive)
    blocks: list[int] = _field([2, 2, 2], "residual blocks per stage (one entry per stage)", check=positive)
    stem_stride: int = _field(1, "stride of the stem convolution (1 for small images such as 28 x 28, 2 for "
                                 "larger ones)", check=positive)
    groups: int = _field(8, "GroupNorm groups (must divide every width)", check=positive)
    init_std: float = _field(0.02, "std of the normal initialisation of heads put on this backbone",
                             check=positive)

    def check(self) -> None:
        if len(self.blocks) != len(self.widths):
            invalid("blocks", f"has {len(self.blocks)} entries but model.widths has {len(self.widths)}; give one "
                              f"number of blocks per stage")
        for i, width in enumerate(self.widths):
            if width % self.groups:
                invalid("groups", f"= {self.groups} does not divide model.widths[{i}] = {width}")

    @classmethod
    def tiny(cls) -> ResNetConfig:
        """Two stages of one block, widths 8 and 16: the registry contract tests' size."""
        return cls(widths=[8, 16], blocks=[1, 1], groups=4)


class BasicBlock(nn.Module):
    """x -> conv3x3 -> norm -> relu -> conv3x3 -> norm, plus the shortcut (a 1x1 conv when the
    shape changes), -> relu."""

    def __init__(self, d_in: int, d_out: int, stride: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(d_in, d_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, d_out)
        self.conv2 = nn.Conv2d(d_out, d_out, 3, padding=1, bias=False)
        # (No zero-initialised last norm, Goyal et al.'s trick for deep stacks: on these shallow
        # nets it slowed early training several-fold, loss 2.0 vs 1.1 after 40 MNIST steps.)
        self.norm2 = nn.GroupNorm(groups, d_out)
        self.shortcut = None
        if stride != 1 or d_in != d_out:
            self.shortcut = nn.Sequential(nn.Conv2d(d_in, d_out, 1, stride=stride, bias=False),
                                          nn.GroupNorm(groups, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


@MODELS.register("resnet")
class ResNet(nn.Module):
    config_class = ResNetConfig
    causal = False
    modality = "image"

    def __init__(self, config: ResNetConfig):
        super().__init__()
        if config.image_size <= 0 or config.channels <= 0:
            raise ValueError("ResNetConfig.image_size / channels are 0: build the model with build_model(cfg, info)")
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.channels, config.widths[0], 3, stride=config.stem_stride, padding=1, bias=False),
            nn.GroupNorm(config.groups, config.widths[0]), nn.ReLU())
        blocks, d_in = [], config.widths[0]
        for stage, (width, n) in enumerate(zip(config.widths, config.blocks)):
            for i in range(n):
                blocks.append(BasicBlock(d_in, width, 2 if stage > 0 and i == 0 else 1, config.groups))
                d_in = width
        self.blocks = nn.ModuleList(blocks)
        self.d_model = config.widths[-1]
        self.n_layers = len(blocks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def grid_size(self) -> int:
        """The side of the last stage's feature map: N = grid_size ** 2 tokens."""
        side = -(-self.config.image_size // self.config.stem_stride)
        for _ in self.config.widths[1:]:
            side = -(-side // 2)
        return side

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, S, S) -> (B, N, d_model): the last stage's positions as tokens."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h * w, C)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "mean") -> torch.Tensor:
        """(B, N, C) -> (B, C): global average pooling. A CNN has no [CLS] position, so "cls" means
        the mean too (fine-tuning configs written for a transformer work unchanged)."""
        if pooling in ("mean", "cls"):
            return hidden.mean(dim=1)
        raise ValueError(f"unknown pooling {pooling!r} for resnet; choose mean (cls is the mean too)")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise rules: the stem 0, block i (0-based) i + 1, anything else above."""
        if param_name.startswith("stem."):
            return 0
        if param_name.startswith("blocks."):
            return int(param_name.split(".")[1]) + 1
        return self.n_layers + 1
