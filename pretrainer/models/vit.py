"""ViT (Dosovitskiy et al., 2020): an image cut into square patches, each patch a token.

A convolution with stride = kernel = `patch_size` embeds the patches (row-major over the patch
grid, the order `patchify` uses for pixels), learned position embeddings are added, a [CLS]
token goes in front, and pre-LN Transformer blocks (models/layers.py, as BERT and GPT use)
with a final LayerNorm read them. `forward(images) -> (B, 1 + N, d_model)`: [CLS] then the
N = (image_size / patch_size)^2 patch tokens.

MAE (objectives/mae.py) runs the encoder on a subset of the patches: `forward(images,
keep=indices)` embeds every patch, adds its position, and keeps only the patches listed in
`keep` (B, n) in that order before the blocks, so the output is (B, 1 + n, d_model).

Module tree: `patch_embed` (Conv2d C -> d_model), `cls_token` (d_model,), `pos_embed`
(1 + N, d_model; row 0 is [CLS]'s), `blocks.i`, `ln_f`. The [CLS] token is a vector and the
position table a matrix, so `decay_groups` decays the table (as BERT's position embeddings)
and not the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from pretrainer.config import ModelConfig, _field, dropout_rate, invalid, non_negative, positive
from pretrainer.models.layers import ACTIVATIONS, Block, decay_groups, init_weights, masked_mean
from pretrainer.registry import MODELS


@dataclass
class ViTConfig(ModelConfig):
    name: str = _field("vit", "architecture from the model registry")
    image_size: int = _field(0, "side of the square input images in pixels (0 = the data's)", check=non_negative)
    channels: int = _field(0, "colour channels of the input images (0 = the data's)", check=non_negative)
    patch_size: int = _field(4, "side of a square patch in pixels (must divide image_size)", check=positive)
    n_layers: int = _field(4, "Transformer blocks", check=positive)
    d_model: int = _field(128, "hidden size", check=positive)
    n_heads: int = _field(4, "attention heads (must divide d_model)", check=positive)
    d_ff: int = _field(0, "MLP hidden size (0 = 4 * d_model)", check=non_negative)
    dropout: float = _field(0.0, "dropout on embeddings and sublayer outputs", check=dropout_rate)
    attn_dropout: float = _field(0.0, "dropout on attention probabilities", check=dropout_rate)
    activation: str = _field("gelu", "MLP activation", ACTIVATIONS)
    layer_norm_eps: float = _field(1e-6, "LayerNorm epsilon", check=positive)
    init_std: float = _field(0.02, "std of the normal weight initialisation", check=positive)

    def check(self) -> None:
        if self.d_model % self.n_heads:
            invalid("n_heads", f"= {self.n_heads} must divide d_model = {self.d_model} (each head gets "
                               f"d_model / n_heads dimensions)")
        if self.image_size and self.image_size % self.patch_size:
            invalid("patch_size", f"= {self.patch_size} must divide image_size = {self.image_size} "
                                  f"(the image is cut into whole patches)")

    @classmethod
    def tiny(cls) -> ViTConfig:
        """2 layers, width 32, patches of 4 pixels: the registry contract tests' size."""
        return cls(patch_size=4, n_layers=2, d_model=32, n_heads=2)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, N, p * p * C): each patch's pixels, patches row-major over the grid
    (the order of ViT's tokens), pixels row-major within a patch with the channels last."""
    B, C, S, _ = images.shape
    g = S // patch_size
    x = images.reshape(B, C, g, patch_size, g, patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, patch_size * patch_size * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, p * p * C) -> (B, C, S, S)."""
    B, N, _ = patches.shape
    g = int(round(N ** 0.5))
    x = patches.reshape(B, g, g, patch_size, patch_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, g * patch_size, g * patch_size)


@MODELS.register("vit")
class VisionTransformer(nn.Module):
    config_class = ViTConfig
    causal = False  # every patch sees every other
    modality = "image"  # forward reads images (B, C, S, S), not token ids

    def __init__(self, config: ViTConfig):
        super().__init__()
        if config.image_size <= 0 or config.channels <= 0:
            raise ValueError("ViTConfig.image_size/channels is 0: build the model with build_model(cfg, data_info)")
        if config.image_size % config.patch_size or config.d_model % config.n_heads:
            raise ValueError(f"patch_size {config.patch_size} must divide image_size {config.image_size} and "
                             f"n_heads {config.n_heads} divide d_model {config.d_model}")
        self.config = config
        self.d_model = config.d_model
        self.n_layers = config.n_layers
        self.patch_size = config.patch_size
        self.n_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = nn.Conv2d(config.channels, config.d_model, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(config.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.n_patches, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        d_ff = config.d_ff or 4 * config.d_model
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, d_ff, config.dropout, config.attn_dropout, config.activation,
                  True, config.layer_norm_eps) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)  # pre-LN stacks end in a norm
        init_weights(self, config.init_std)
        # The patch embedding is a linear map of each patch's pixels: initialised as one.
        for p in (self.patch_embed.weight, self.cls_token, self.pos_embed):
            nn.init.normal_(p, std=config.init_std)
        nn.init.zeros_(self.patch_embed.bias)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, N, d_model): every patch embedded, its position added."""
        expected = (self.config.channels, self.config.image_size, self.config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"vit expects images (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, C), patches row-major
        return x + self.pos_embed[1:]

    def forward(self, images: torch.Tensor, *, keep: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, C, S, S) -> (B, 1 + N, d_model): [CLS] then the patch tokens.

        keep (B, n) int: the patches (indices into the row-major grid) the encoder sees, in
        that order; the output is then (B, 1 + n, d_model) (MAE's encoder on visible patches)."""
        x = self.patch_tokens(images)  # (B, N, C)
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, n, C)
        cls = (self.cls_token + self.pos_embed[0]).expand(x.shape[0], 1, -1)  # (B, 1, C)
        x = self.dropout(torch.cat([cls, x], dim=1))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def pooled(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
               pooling: str = "cls") -> torch.Tensor:
        """(B, 1 + N, C) -> (B, C): the [CLS] token's output, or the mean of the patch tokens
        (without [CLS], as timm's global average pooling). `attention_mask` (B, 1 + N), if
        given, leaves positions out of the mean; images have no padding."""
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "mean":
            return masked_mean(hidden[:, 1:], None if attention_mask is None else attention_mask[:, 1:])
        raise ValueError(f"unknown pooling {pooling!r} for vit; choose cls or mean")

    def param_groups(self, weight_decay: float) -> list[dict]:
        return decay_groups(self, weight_decay)

    def layer_id(self, param_name: str) -> int:
        """Depth for layer-wise LR decay: patch and position embeddings and [CLS] 0, block i ->
        i + 1, the final norm and heads n_layers + 1."""
        if param_name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            return 0
        m = re.match(r"blocks\.(\d+)\.", param_name)
        return int(m.group(1)) + 1 if m else self.n_layers + 1
