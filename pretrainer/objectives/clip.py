"""CLIP (Radford et al., 2021): an image and its caption are each other's positive.

The "image_text" layout (data/image_text.py) gives images with their captions tokenized. The
backbone ([model], an image model: vit, resnet) reads the images; its pooled vector (the mean of
its output tokens) goes through a linear map to objective.clip_dim. The text tower (a head,
`clip_text`: [objective.text_model], a text model of the registry such as BERT, or a text run /
MiniLM given by objective.text_init) reads the captions, mean-pooled over real tokens, through its
own linear map. Both are L2-normalised; the logits are cosine similarities times a learned scale
exp(s), s = log(1 / temperature) starting at objective.temperature and clamped at log(100), as
CLIP does. The loss is symmetric InfoNCE: cross-entropy of each image over the captions and of
each caption over the images, averaged. Under torchrun both sides' vectors are gathered from
every rank (objectives/gather.py; gradients flow back to the rank that made them), so the
negatives are the whole global batch, as in one process. The image backbone is what transfers;
the text tower, the projections and the scale are heads left behind.

Held-out metrics (eval mode, all held-out pairs at once; data/image_text.py keeps one pair per
distinct image): clip_loss (symmetric InfoNCE within batches of train.batch_size, comparable
with training), recall@1/5/10 image->text and text->image among all held-out pairs.
`pretrainer evaluate` adds zero-shot classification (objectives/clip_report.py).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import Config, ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models import build_model, model_config_dict, model_modality
from pretrainer.objectives.base import PretrainingObjective, image_backbone_refusal
from pretrainer.objectives.gather import gather_rows
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.objectives.clip_heads import CLIPImageProjection, CLIPTextTower, LogitScale
from pretrainer.objectives.mlm import to_device
from pretrainer.registry import DATA, MODELS, OBJECTIVES, PRETRAINED

RECALL_KS = (1, 5, 10)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              gather: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """image, text (n, D): this rank's pairs (row i of each is one pair); scale: exp(s).
    -> (symmetric InfoNCE, image->text hits (n,), text->image hits (n,)). With `gather` the
    candidates are every rank's rows (rank r's at r * n .. r * n + n - 1)."""
    image, text = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    all_text, offset = gather_rows(text) if gather else (text, 0)
    all_image, _ = gather_rows(image) if gather else (image, 0)
    targets = offset + torch.arange(image.shape[0], device=image.device)
    image_to_text = scale * image @ all_text.T  # (n, W * n)
    text_to_image = scale * text @ all_image.T
    loss = (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
    return loss, image_to_text.argmax(-1) == targets, text_to_image.argmax(-1) == targets


def recall_at_k(similarity: torch.Tensor, ks=RECALL_KS) -> dict[int, float]:
    """similarity (N, M) whose right answer for row i is column i -> {k: share of rows whose
    right column is among their k most similar}. A tie counts against the query (a collapsed
    encoder, all vectors equal, scores 0, not 1)."""
    right = similarity.diagonal().unsqueeze(1)
    rank = (similarity >= right).sum(dim=1) - 1  # columns at least as similar, the right one left out
    return {k: float((rank < k).float().mean()) for k in ks}


@OBJECTIVES.register("clip")
class CLIP(PretrainingObjective):
    batch_layout = "image_text"
    modality = "image"

    def __init__(self, cfg: ObjectiveConfig, data: DataInfo | None = None):
        super().__init__(cfg, data)
        self.data_info = data
        self.layout_options = {"augment": True}

    @classmethod
    def configure(cls, cfg: Config) -> Config:
        """Captions read with the text init's tokenizer, when there is one."""
        if cfg.objective.text_init and not cfg.tokenizer.path:
            folder = PRETRAINED.get("folder")(cfg.objective.text_init)
            return DATA.get("text").inherit(cfg, folder)
        return cfg

    def check_backbone(self, backbone: nn.Module) -> str | None:
        refusal = image_backbone_refusal(backbone, "CLIP's backbone is its image encoder", "use an image model, e.g. "
                                         "model.name = \"vit\"; the text encoder is [objective.text_model]")
        if refusal:
            return refusal
        if not self.cfg.text_init and model_modality(MODELS.get(self.cfg.text_model.name)) == "image":
            return f"objective.text_model.name = {self.cfg.text_model.name!r} reads images; name a text model"
        return None

    def text_encoder(self) -> nn.Module:
        """The text tower's encoder: the text init's backbone (weights and all), else
        [objective.text_model] sized to the captions' vocabulary, from random weights."""
        if self.cfg.text_init:
            with torch.random.fork_rng(devices=[]):  # loading builds modules: leave the run's RNG alone
                model, _, _ = PRETRAINED.get("load")(self.cfg.text_init)
            encoder = getattr(model, "backbone", model)
            if model_modality(encoder) != "text" or getattr(encoder, "causal", False):
                raise PretrainerError(f"objective.text_init = {self.cfg.text_init!r}: CLIP's text tower needs a "
                                      f"bidirectional text encoder; model {encoder.config.name!r} is not one")
            return encoder
        vocab = self.data_info.vocab_size if self.data_info is not None else 0
        if not vocab:
            raise PretrainerError("objective.name = \"clip\" needs captions: set data.name = \"image_text\"")
        return build_model(self.cfg.text_model, vocab)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        encoder = self.text_encoder()
        tower = CLIPTextTower(backbone, model_config_dict(encoder), self.cfg.clip_dim)
        heads = {"clip_text": tower, "clip_image_projection": CLIPImageProjection(backbone, self.cfg.clip_dim),
                 "clip_logit_scale": LogitScale(backbone)}
        model = PretrainingModel(backbone, heads)  # initialises the heads' weights (the tower's encoder too)
        if self.cfg.text_init:  # ... so the init's weights go in after; a resume then loads its checkpoint
            model.clip_text.encoder.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            model.clip_logit_scale.log_scale.fill_(math.log(1 / self.cfg.temperature))
        return model

    def embed(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image vectors (B, clip_dim), caption vectors (B, clip_dim)), not normalised."""
        image = model.clip_image_projection(model.pooled(model(batch["images"]), None, "mean"))
        text = model.clip_text(batch["input_ids"], batch["attention_mask"])
        return image, text

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        image, text = self.embed(model, batch)
        scale = model.clip_logit_scale()
        loss, hits_i2t, hits_t2i = clip_loss(image, text, scale)
        return {"loss": loss, "clip_acc": (hits_i2t.float().mean() + hits_t2i.float().mean()).detach() / 2,
                "temperature": (1 / scale).detach(), "n_tokens": int(batch["images"].shape[0])}

    @torch.no_grad()
    def embed_all(self, model: nn.Module, batches: Iterable[dict]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Every held-out pair embedded (eval mode) -> (images (N, D), captions (N, D), both
        normalised; mean batch loss)."""
        was_training = model.training
        model.eval()
        images, texts, loss_sum, count = [], [], 0.0, 0
        try:
            scale = model.clip_logit_scale()
            for batch in batches:
                batch = to_device(batch, model)
                image, text = self.embed(model, batch)
                loss, _, _ = clip_loss(image, text, scale, gather=False)
                loss_sum += float(loss) * image.shape[0]
                count += image.shape[0]
                images.append(F.normalize(image.float(), dim=-1))
                texts.append(F.normalize(text.float(), dim=-1))
        finally:
            model.train(was_training)
        return torch.cat(images), torch.cat(texts), loss_sum / max(count, 1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        images, texts, loss = self.embed_all(model, batches)
        similarity = images @ texts.T  # (N, N): row i's caption is column i
        out = {"clip_loss": loss, "temperature": float(1 / model.clip_logit_scale())}
        for k, r in recall_at_k(similarity).items():
            out[f"image_to_text_r@{k}"] = r
        for k, r in recall_at_k(similarity.T).items():
            out[f"text_to_image_r@{k}"] = r
        return out

    def report(self, model: nn.Module, data, batch_size: int, seq_len: int, log=print) -> dict:
        """`pretrainer evaluate`'s results: retrieval and zero-shot (objectives/clip_report.py)."""
        from pretrainer.objectives.clip_report import clip_report

        return clip_report(self, model, data, batch_size, seq_len, log=log)
