"""The heads image objectives train around a backbone and leave behind at transfer: MAE's
pixel decoder and SimCLR's projection MLP. Both are sized by their objective, so each has
`head_config()` and model.json rebuilds it (objectives/heads.py HEADS)."""

from __future__ import annotations

import torch
import torch.nn as nn

from pretrainer.models.layers import Block

DECODER_HEAD_DIM = 32  # the MAE decoder's attention heads are this wide (the paper's 512 / 16)


class MAEDecoder(nn.Module):
    """MAE's light decoder (He et al., 2021): the encoder's outputs for the visible patches,
    projected to its own width, are put back at their places on the patch grid; the hidden
    places get one learned mask token; positions are added and pre-LN blocks run over the
    whole grid; a linear layer predicts each patch's p * p * C pixels."""

    def __init__(self, backbone: nn.Module, n_layers: int, d_model: int):
        super().__init__()
        self.sizes = {"n_layers": n_layers, "d_model": d_model}
        self.n_patches = backbone.n_patches
        n_heads = max(1, d_model // DECODER_HEAD_DIM)
        self.embed = nn.Linear(backbone.d_model, d_model)
        self.mask_token = nn.Parameter(torch.zeros(d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1 + self.n_patches, d_model))  # row 0: [CLS]'s
        self.blocks = nn.ModuleList(Block(d_model, n_heads, 4 * d_model, 0.0, 0.0, "gelu", True, 1e-6,
                                          head_dim=d_model // n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model, eps=1e-6)
        self.pred = nn.Linear(d_model, backbone.patch_size ** 2 * backbone.config.channels)
        # The Linear layers are initialised with the backbone's rule by PretrainingModel; these
        # two are plain parameters it does not touch.
        for p in (self.mask_token, self.pos_embed):
            nn.init.normal_(p, std=0.02)

    def head_config(self) -> dict[str, int]:
        return dict(self.sizes)

    def forward(self, latent: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + n, C_enc): the encoder's [CLS] and visible patches, keep (B, n) their
        grid indices -> (B, N, p * p * C) predicted pixels of every patch, in grid order."""
        x = self.embed(latent)  # (B, 1 + n, d)
        B, _, d = x.shape
        grid = self.mask_token.expand(B, self.n_patches, d)  # (B, N, d)
        grid = grid.scatter(1, keep.unsqueeze(-1).expand(-1, -1, d), x[:, 1:])  # visible patches back in place
        x = torch.cat([x[:, :1], grid], dim=1) + self.pos_embed  # (B, 1 + N, d)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.ln(x[:, 1:]))


class ProjectionMLP(nn.Module):
    """SimCLR's projection head g(h) = W2 ReLU(W1 h): the loss is computed on its output, and
    the representation before it (the backbone's pooled vector) is what transfers."""

    def __init__(self, backbone: nn.Module, d_out: int):
        super().__init__()
        self.sizes = {"d_out": d_out}
        self.fc = nn.Linear(backbone.d_model, backbone.d_model)
        self.act = nn.ReLU()
        # No bias: a shift shared by every image only pulls all vectors towards one direction
        # for the cosine loss; with small initial outputs, Adam's first steps on it collapsed them.
        self.proj = nn.Linear(backbone.d_model, d_out, bias=False)

    def head_config(self) -> dict[str, int]:
        return dict(self.sizes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C of the backbone) -> (B, d_out)."""
        return self.proj(self.act(self.fc(pooled)))
