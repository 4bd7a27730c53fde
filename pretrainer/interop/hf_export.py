"""Hugging Face export: a run directory -> config.json, model.safetensors and tokenizer files
that `transformers`' Auto classes load offline. transformers itself is never imported here.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from tokenizers import Tokenizer, processors

from pretrainer.errors import PretrainerError
from pretrainer.models.heads import SequenceClassifier, TokenClassifier
from pretrainer.data.tokenizer import CLS, ENDOFTEXT, MASK, PAD, SEP, UNK
from pretrainer.interop.hf_families import FAMILIES_BY_NAME, hf_names
from pretrainer.interop.hf_layout import HFFamily
from pretrainer.objectives.heads import PretrainingModel
from pretrainer.io import read_json, write_folder_atomically
from pretrainer.runs import load_run, run_label_names

# ---------------------------------------------------------------- export


_PRUNABLE = re.compile(r"(?:backbone\.)?blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)\.(weight|bias)")


def dense_state(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """A pruned encoder's weights (`pretrainer prune`) in the dense layout Hugging Face BERT
    builds: each removed head back at its index, and a narrower layer's MLP widened to the
    widest, as zero rows and columns. A zero head has zero values and zero output columns, a
    zero neuron zero output columns, so they add exactly nothing and transformers computes
    what the pruned model does. (transformers 5 no longer reads `pruned_heads`, so zeros are
    the layout every version loads; the smaller model is the run itself, or its ONNX export.)"""
    pruned, sizes = getattr(cfg, "pruned_heads", None), getattr(cfg, "ffn_sizes", None)
    if not pruned and not sizes:
        return state
    H, D = cfg.n_heads, cfg.d_model // cfg.n_heads
    width = max(sizes) if sizes else None
    out = {}
    for key, t in state.items():
        m = _PRUNABLE.fullmatch(key)
        layer, part, kind = (int(m.group(1)), m.group(2), m.group(3)) if m else (0, "", "")
        if part.startswith("attn") and pruned and pruned[layer]:
            kept = [h for h in range(H) if h not in pruned[layer]]
            cols = torch.tensor([h * D + d for h in kept for d in range(D)])
            if part == "attn.qkv":  # rows: the q, k and v blocks
                full = t.new_zeros((3 * H * D,) + tuple(t.shape[1:]))
                full[torch.cat([cols + i * H * D for i in range(3)])] = t
            elif kind == "weight":
                full = t.new_zeros(t.shape[0], H * D)
                full[:, cols] = t
            else:
                full = t
        elif part == "mlp.fc" and width and t.shape[0] < width:
            full = t.new_zeros((width,) + tuple(t.shape[1:]))
            full[:t.shape[0]] = t
        elif part == "mlp.proj" and kind == "weight" and width and t.shape[1] < width:
            full = t.new_zeros(t.shape[0], width)
            full[:, :t.shape[1]] = t
        else:
            full = t
        out[key] = full
    return out


def hf_state_dict(model: nn.Module, family: HFFamily) -> dict[str, torch.Tensor]:
    """Our weights under their full Hugging Face names (qkv split, Conv1D transposed; a pruned
    encoder in the dense layout, see `dense_state`)."""
    out = {}
    # A pre-training head Hugging Face's classes have no place for (the sentence-order head) stays home.
    unmapped = tuple(f"{h}." for h in getattr(model, "head_names", ()) if h not in family.pretraining_heads)
    cfg = getattr(model, "config", None)
    for key, t in dense_state(model.state_dict(), cfg).items():
        if unmapped and key.startswith(unmapped):
            continue
        names = hf_names(family, key, cfg)
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


def head_kind(model: nn.Module) -> str | None:
    """"classifier" (SequenceClassifier), "tagger" (TokenClassifier) or None (a bare backbone)."""
    if isinstance(model, SequenceClassifier):
        return "classifier"
    return "tagger" if isinstance(model, TokenClassifier) else None


def choose_architecture(family: HFFamily, head: str | None, parts: frozenset | None = None) -> str:
    """The Hugging Face class for an export: the family's class for a classifier or tagger
    (`head`), else the smallest one holding `parts` (None = all we have)."""
    if head is not None:
        architecture = family.head_architecture(head)
        if architecture is None:
            raise PretrainerError(f"a {family.our_name} {head} has no Hugging Face equivalent (its head "
                                  f"differs); export the backbone with architecture {family.base_architecture}")
        return architecture
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
    head = head_kind(model)
    backbone = model if head is None else model.backbone
    name = backbone.config.name
    if name not in FAMILIES_BY_NAME:
        raise PretrainerError(f"model {name!r} has no Hugging Face export; exportable: {', '.join(FAMILIES_BY_NAME)}")
    family = FAMILIES_BY_NAME[name]
    architecture = architecture or choose_architecture(family, head)
    if architecture not in family.architectures:
        raise PretrainerError(f"architecture {architecture!r} is not available for {name}; choose one of: "
                              f"{', '.join(family.architectures)}")
    parts = family.architectures[architecture]
    hf_cfg = family.config_to_hf(backbone.config)
    if "classifier" in parts:
        wanted = "tagger" if architecture == family.tagger_architecture else "classifier"
        if head != wanted:
            raise PretrainerError(f"{architecture} needs a fine-tuned {wanted} run; this run has no {wanted}")
        if head == "tagger" and model.case_embeddings is not None:
            raise PretrainerError(f"{architecture} cannot hold this tagger's word-shape vectors "
                                  f"(finetune.case_features = true): Hugging Face BERT takes no such input")
        if head == "tagger" and model.crf is not None:
            raise PretrainerError(f"{architecture} cannot hold this tagger's CRF (finetune.crf = true): "
                                  f"Hugging Face token classifiers pick each tag alone")
        if head == "classifier" and model.pooling != "cls":
            raise PretrainerError(f"{architecture} pools with the pooler on [CLS]; this classifier uses "
                                  f"pooling = {model.pooling!r}, which Hugging Face BERT cannot express")
        labels = labels or [f"LABEL_{i}" for i in range(model.num_labels)]
        if len(labels) != model.num_labels:
            raise PretrainerError(f"{len(labels)} label names for a classifier with {model.num_labels} labels")
        hf_cfg.update(id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
                      classifier_dropout=model.dropout.p)
    if "lm_head" in parts and backbone.config.tie_embeddings:
        parts = parts - {"lm_head"}  # tied: transformers re-ties lm_head to wte, so it is not stored

    # Without a classifier part (e.g. BertModel asked for a tagger run) only the backbone goes out.
    exported = model if "classifier" in parts else backbone
    state = {k: v for k, v in hf_state_dict(exported, family).items() if family.part_of(k) in parts}
    lacking = sorted(parts - {family.part_of(k) for k in state})
    if lacking:
        raise PretrainerError(f"{architecture} holds parts this model does not have ({', '.join(lacking)}): "
                              f"choose a class without them, e.g. {choose_architecture(family, head, parts - set(lacking))}")
    if architecture == family.base_architecture:
        state = {k.removeprefix(family.base_prefix): v for k, v in state.items()}
    eot = tokenizer.eos_id
    special_ids = {"pad_token_id": tokenizer.pad_id}
    if tokenizer.kind == "bytebpe":
        special_ids.update(bos_token_id=eot, eos_token_id=eot)
    if getattr(getattr(backbone, "backbone", backbone), "is_encoder_decoder", False):  # decoding starts from [PAD], as T5's
        special_ids.update(eos_token_id=eot, decoder_start_token_id=tokenizer.pad_id)
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
    write_folder_atomically(out_dir, write, overwrite)
    return out_dir


def export_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike, architecture: str | None = None,
              overwrite: bool = False) -> Path:
    """Export a run directory (pre-training, fine-tuned classifier, or imported) as a Hugging Face folder.

    Without `architecture`, the class is the smallest that holds the weights the run trained:
    BertForMaskedLM after MLM, BertForPreTraining after MLM+NSP, GPT2LMHeadModel after CLM,
    BertForSequenceClassification for a classifier, Bert/GPT2ForTokenClassification for a tagger, and
    for an imported run the parts the source checkpoint had (MiniLM: BertModel). Untrained heads
    are left out rather than shipped as random weights. Label names come from results.json or imported_from.json.
    """
    run_dir = Path(run_dir)
    model, tokenizer = load_run(run_dir)
    family = FAMILIES_BY_NAME.get(model.config.name)
    if architecture is None and family is not None:
        architecture = choose_architecture(family, head_kind(model), _trained_parts(run_dir, family, model))
    labels = run_label_names(run_dir)
    if architecture is not None and architecture.endswith("ForSequenceClassification"):
        _refuse_long_document_encoding(run_dir, architecture)
    return save_hf(model, tokenizer, out_dir, architecture, labels=labels, overwrite=overwrite)


def _refuse_long_document_encoding(run_dir: Path, architecture: str) -> None:
    """A classifier trained on head+tail or chunk-pooled encodings would be read by Hugging Face on the
    first max_len pieces only: different inputs, silently different predictions on long texts."""
    results = run_dir / "results.json"
    encoded = read_json(results).get("encoded", {}) if results.is_file() else {}
    truncation, chunks = encoded.get("truncation", "head"), encoded.get("chunk_pooling", "none")
    if truncation != "head" or chunks != "none":
        how = f"chunk_pooling = {chunks!r}" if chunks != "none" else f"truncation = {truncation!r}"
        raise PretrainerError(f"{run_dir}: this classifier was trained with finetune.{how}, which {architecture} "
                              f"cannot express (it reads the first pieces only); export the encoder with "
                              f"--architecture BertModel, or predict with `pretrainer predict {run_dir}`")


def _trained_parts(run_dir: Path, family: HFFamily, model: nn.Module) -> frozenset | None:
    """The parts of the run's model that hold trained weights, or None when that is unknown."""
    if (run_dir / "imported_from.json").is_file():
        fresh = set(read_json(run_dir / "imported_from.json").get("fresh_parts", []))
        return frozenset().union(*family.architectures.values()) - fresh - {"classifier"}
    if isinstance(model, PretrainingModel):  # the heads its objective built and trained
        return family.trained_parts(model.head_names)
    return None
