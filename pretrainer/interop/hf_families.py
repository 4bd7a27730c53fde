"""The Hugging Face families import and export know, by config.json model_type and by our model name."""

from __future__ import annotations

from pretrainer.interop.hf_layout import BERT, GPT2, HFFamily
from pretrainer.interop.hf_t5 import T5

FAMILIES = {f.model_type: f for f in (BERT, GPT2, T5)}  # config.json model_type -> family
FAMILIES_BY_NAME = {f.our_name: f for f in (BERT, GPT2, T5)}  # our model name -> family


def hf_names(family: HFFamily, key: str, cfg) -> list[str]:
    """Full Hugging Face name(s) of one of our keys; a classifier's or tagger's head is `classifier`."""
    if key.startswith("head."):
        return ["classifier." + key[len("head."):]]
    return family.hf_names(key.removeprefix("backbone."), cfg)
