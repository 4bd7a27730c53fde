"""ELECTRA (Clark et al. 2020): replaced-token detection with a small masked-LM generator.

The generator fills the masked positions with tokens sampled from its own prediction; the
discriminator (the backbone, which is what transfers) reads the result and says, for every
real token, whether it was replaced. Both train together:
loss = generator MLM loss + rtd_weight * discriminator BCE. The generator shares the
backbone's embedding module (objectives/heads.MaskedLMGenerator), so it stays small and its
tied decoder teaches the discriminator's word vectors too.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrainer.config import ObjectiveConfig
from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.models.heads import freeze_pooler
from pretrainer.objectives.heads import MaskedLMGenerator, PretrainingModel, rtd_head_for
from pretrainer.objectives.linear_ce import linear_cross_entropy
from pretrainer.objectives.mlm import MaskedLM, no_context, perplexity, seeded_evaluation_batches
from pretrainer.registry import OBJECTIVES


def generator_size(backbone: nn.Module, cfg: ObjectiveConfig) -> dict[str, int]:
    """The generator's blocks, width, heads and MLP size for `backbone` under `cfg`: depth
    `generator_layers` (0 = a third of the backbone's, at least 1); width the backbone's times
    `generator_width_ratio`, in whole heads of the backbone's head size."""
    c = backbone.config
    head_size = backbone.d_model // c.n_heads
    n_heads = max(1, round(c.n_heads * cfg.generator_width_ratio))
    d_model = n_heads * head_size
    d_ff = round((c.d_ff or 4 * backbone.d_model) * d_model / backbone.d_model)
    n_layers = cfg.generator_layers or max(1, backbone.n_layers // 3)
    return {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff}


@OBJECTIVES.register("electra")
class ReplacedTokenDetection(MaskedLM):
    """Masks as MaskedLM does (objective.mask_rate, ...), on the same "mlm" batches."""

    def check_backbone(self, backbone: nn.Module) -> str | None:
        if getattr(backbone, "causal", False):
            return ("ELECTRA's generator and discriminator read every token's both sides; a causal decoder "
                    "sees only its left (use clm)")
        if not hasattr(getattr(backbone, "embeddings", None), "word_embeddings"):
            return "ELECTRA's generator shares the backbone's embedding module, which this model has not"
        if not hasattr(backbone.config, "n_heads"):
            return ("ELECTRA's generator is a small Transformer sized in the backbone's attention heads, "
                    "which this model has not")
        return no_context(backbone)

    def build(self, backbone: nn.Module) -> PretrainingModel:
        """The backbone (the discriminator), the generator that shares its embeddings, the RTD head."""
        freeze_pooler(backbone)  # replaced-token detection reads every position, never the pooled [CLS]
        generator = MaskedLMGenerator(backbone, **generator_size(backbone, self.cfg))
        return PretrainingModel(backbone, {"generator": generator, "rtd_head": rtd_head_for(backbone)})

    def initialise(self, module: PretrainingModel, data) -> None:
        if self.cfg.unigram_bias and "generator" in module.head_names:
            self.set_unigram_bias(module.generator.head.bias, data)

    def sample_replacements(self, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            generator: torch.Generator | None) -> torch.Tensor:
        """One token per chosen position (N,), drawn from the generator's prediction (N, V). A
        method of its own so a test can swap the generator for a fixed corruption."""
        probs = torch.softmax(F.linear(features, weight, bias).float(), dim=-1)  # (N, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    def terms(self, model: nn.Module, batch: dict, generator: torch.Generator | None = None) -> dict:
        """Both losses on one batch, with the counts the metrics are made of. Randomness (masking
        and sampling) comes from `generator`, or torch's global RNG, which checkpoints save."""
        masked_ids, labels = self.mask(batch, generator)
        attention_mask, token_type_ids = batch.get("attention_mask"), batch.get("token_type_ids")
        original = batch["input_ids"]  # (B, T)
        chosen = labels != IGNORE_INDEX  # (B, T)
        targets = labels[chosen]  # (N,)

        gen_hidden = model.generator(masked_ids, attention_mask, token_type_ids)  # (B, T, Cg)
        features, weight, bias = model.generator.lm_projection(gen_hidden[chosen])  # (N, C), (V, C), (V,)
        gen_loss, hits = linear_cross_entropy(features, weight, targets, bias)

        corrupted = original.clone()
        if targets.numel():
            # No gradient flows through the sample: the generator learns from its MLM loss only.
            with torch.no_grad():
                corrupted[chosen] = self.sample_replacements(features, weight, bias, generator)
        replaced = corrupted != original  # a sample equal to the original counts as original

        real = ~batch["special_tokens_mask"].bool()  # (B, T): no [CLS], [SEP] or padding
        if attention_mask is not None:
            real &= attention_mask.bool()
        hidden = model(corrupted, attention_mask, token_type_ids)  # (B, T, C)
        rtd_logits = model.rtd_head(hidden[real]).squeeze(-1).float()  # (M,)
        rtd_targets = replaced[real].float()
        rtd_loss = F.binary_cross_entropy_with_logits(rtd_logits, rtd_targets)
        return {"gen_loss": gen_loss, "rtd_loss": rtd_loss, "n_masked": targets.numel(), "gen_hits": hits.sum(),
                "n_real": rtd_targets.numel(), "rtd_hits": ((rtd_logits > 0) == replaced[real]).sum(),
                "n_replaced": rtd_targets.sum()}

    def __call__(self, model: nn.Module, batch: dict) -> dict:
        t = self.terms(model, batch)
        n_masked, n_real = max(t["n_masked"], 1), max(t["n_real"], 1)
        return {"loss": t["gen_loss"] + self.cfg.rtd_weight * t["rtd_loss"],
                "mlm_loss": t["gen_loss"].detach(), "rtd_loss": t["rtd_loss"].detach(),
                "mlm_acc": (t["gen_hits"].float() / n_masked).detach(),
                "rtd_acc": (t["rtd_hits"].float() / n_real).detach(),
                "replaced": (t["n_replaced"] / n_real).detach(),
                "n_tokens": batch["input_ids"].numel()}

    def _evaluate(self, model: nn.Module, batches: Iterable[dict]) -> dict:
        # under MaskedLM.evaluate: no gradient, masking at the evaluation rate
        gen_sum = gen_hits = rtd_sum = rtd_hits = n_replaced = 0.0
        n_masked = n_real = 0
        for batch, generator in seeded_evaluation_batches(model, batches):
            t = self.terms(model, batch, generator)
            gen_sum += float(t["gen_loss"]) * t["n_masked"]
            gen_hits += float(t["gen_hits"])
            n_masked += t["n_masked"]
            rtd_sum += float(t["rtd_loss"]) * t["n_real"]
            rtd_hits += float(t["rtd_hits"])
            n_replaced += float(t["n_replaced"])
            n_real += t["n_real"]
        mlm = gen_sum / max(n_masked, 1)
        return {"mlm_loss": mlm, "mlm_acc": gen_hits / max(n_masked, 1), "mlm_ppl": perplexity(mlm),
                "rtd_loss": rtd_sum / max(n_real, 1), "rtd_acc": rtd_hits / max(n_real, 1),
                "replaced": n_replaced / max(n_real, 1)}
