"""`pretrainer predict RUN_DIR INPUT`: a run's predictions for a file, as JSON lines.

One path for every form a model is saved in: a run directory of fp32 weights (pre-trained,
fine-tuned, pruned, imported), an int8 run (`pretrainer quantize`, format torch) or an ONNX
run (format onnx, fp32 or int8, run by ONNX Runtime). Each line of output answers one input
record, in order:
  classifier  {"label": "1", "probabilities": {"0": 0.02, "1": 0.98}}
  tagger      {"words": [...], "tags": ["B-PER", "O", ...]}
  generator   {"text": "the greedy continuation"}
  text2text   {"text": "the decoded target"}  (a run fine-tuned with finetune.task = "generation": its
              finetune.max_len and finetune.generation decoding, sentinels never emitted)
  encoder     {"vector": [...]}  (mean of the last hidden states over real tokens, or [CLS] pooler)
A record's "id" field, when it has one, is copied to its output line. A classifier reads long
texts as its run was trained and evaluated (finetune.truncation, or chunks pooled per document:
finetune.chunk_pooling, from the run's config.toml), through the same encoding code.

An image run (its folder holds image_processor.json) reads images instead: an .npz (`file.npz#test`
picks x_test as fine-tuning does), an IDX file or folder, or an image folder (flat or one
sub-folder per class; the class names are not read), each image converted to the run's size and
channels; a line answers each image, its "id" the file (or `file.npz[x_test][i]`):
  image classifier  {"id": ..., "label": "7", "probabilities": {...}}
  image encoder     {"id": ..., "vector": [...]}  (the backbone's pooled features)

Inputs: txt (one text per line), jsonl or csv/tsv with a text column (and optionally a
second text of a pair); a tagger reads whitespace-separated words, or a jsonl "tokens" list.
Records are read, encoded and predicted in batches as the file streams, with a progress bar
on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

import numpy as np
import torch
from torch import nn

from pretrainer.compression.inference import InferenceGraph, backbone_of, model_kind
from pretrainer.compression.onnx import OnnxModel
from pretrainer.compression.quantize import INT8_FORMAT, load_int8
from pretrainer.config import load_config
from pretrainer.data.conll import encode_words
from pretrainer.data.image_files import read_images
from pretrainer.data.image_processor import ImageProcessor, has_processor
from pretrainer.data.labeled_images import split_spec
from pretrainer.data.labeled import EncodedDataset
from pretrainer.data.long_documents import ChunkedDataset, LongDocuments, encode_texts
from pretrainer.data.readers import read_records, record_text
from pretrainer.data.tokenizer import load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import read_json, read_model_state
from pretrainer.models.layers import masked_mean
from pretrainer.objectives.token_classification import decode_tags
from pretrainer.runs import load_run, module_from_spec, run_label_names

POOLINGS = ("mean", "cls")


@dataclass
class Predictor:
    """A loaded run, ready to answer records: `predict(records) -> outputs`, one batch at a time."""

    kind: str  # classifier | tagger | generator | text2text | encoder
    forward: Callable  # (input_ids, attention_mask, token_type_ids[, case_ids]) -> the kind's outputs
    tokenizer: object
    max_len: int
    labels: list[str] | None = None
    backend: str = "fp32"  # fp32 | dynamic_int8 | onnx | onnx-int8
    crf: nn.Module | None = None
    case_features: bool = False
    pooling: str = "mean"
    max_new_tokens: int = 50
    text_field: str = "text"
    pair_field: str = ""
    source: str = ""
    model: nn.Module | None = field(default=None, repr=False)  # the torch module (None for ONNX)
    # How a classifier reads a long text: its run's finetune.truncation / chunk_pooling / ...
    long: LongDocuments = field(default_factory=LongDocuments)
    decoding: object = None  # text2text: the run's finetune.generation (data.text_pairs.Decoding)

    # ------------------------------------------------------------ one batch

    def predict(self, records: list[dict], where: Callable[[int], tuple[str, int]] | None = None) -> list[dict]:
        """Outputs for `records` (dicts as read from the input file); `where(i)` names record
        i's (file, line) for error messages."""
        where = where or (lambda i: ("input", i + 1))
        with torch.inference_mode():
            if self.kind == "generator":
                outputs = [self._generate(self._text(r, where(i))) for i, r in enumerate(records)]
            elif self.kind == "text2text":
                outputs = self._text_to_text([self._text(r, where(i)) for i, r in enumerate(records)])
            elif self.kind == "tagger":
                outputs = self._tag([self._words(r, where(i)) for i, r in enumerate(records)])
            else:
                texts = [self._text(r, where(i)) for i, r in enumerate(records)]
                pairs = [record_text(*where(i), r, self.pair_field) for i, r in enumerate(records)] \
                    if self.pair_field else None
                outputs = self._classify_or_embed(texts, pairs)
        return [{"id": record["id"], **out} if "id" in record else out for record, out in zip(records, outputs)]

    def _text(self, record: dict, where: tuple[str, int]) -> str:
        return record_text(*where, record, self.text_field)

    def _words(self, record: dict, where: tuple[str, int]) -> list[str]:
        tokens = record.get("tokens")
        if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
            return tokens
        return self._text(record, where).split()

    def _padded(self, rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), pad, dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        lengths = np.array([len(r) for r in rows])
        mask = np.arange(width)[None, :] < lengths[:, None]
        return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))

    def batch_inputs(self, texts: list[str], pairs: list[str] | None = None) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask, token_type_ids) of a classifier's or encoder's batch."""
        ids, types = self.tokenizer.encode_for_classification(texts, pairs, max_len=self.max_len)
        input_ids, mask = self._padded(ids, self.tokenizer.pad_id)
        token_types, _ = self._padded(types, 0)
        return input_ids, mask, token_types

    def document_inputs(self, texts: list[str], pairs: list[str] | None = None) -> tuple[tuple, dict]:
        """A classifier's (inputs, keyword inputs), its texts read as its run read them in
        training and evaluation (truncation, or chunks with `chunk_doc`): the same encoding."""
        if self.kind != "classifier" or self.long == LongDocuments():
            return self.batch_inputs(texts, pairs), {}
        ids, lengths, _, _ = encode_texts(self.tokenizer, texts, self.max_len, self.long)
        common = dict(input_ids=ids, token_type_ids=[[0] * len(row) for row in ids], labels=[0] * len(ids),
                      label_names=[], pad_id=self.tokenizer.pad_id)
        dataset = ChunkedDataset(**common, chunk_lengths=lengths) if self.long.chunked else EncodedDataset(**common)
        batch = dataset.batch(range(len(ids)))
        extra = {"chunk_doc": batch["chunk_doc"]} if "chunk_doc" in batch else {}
        return (batch["input_ids"], batch["attention_mask"].long(), batch["token_type_ids"]), extra

    def _classify_or_embed(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        inputs, extra = self.document_inputs(texts, pairs)
        outputs = self.forward(*inputs, **extra)
        if self.kind == "classifier":
            probs = torch.softmax(outputs.float(), dim=-1).tolist()
            labels = self.labels or [f"LABEL_{i}" for i in range(len(probs[0]))]
            return [{"label": labels[int(np.argmax(p))],
                     "probabilities": {name: round(v, 6) for name, v in zip(labels, p)}} for p in probs]
        hidden, cls = outputs
        vectors = cls if self.pooling == "cls" else masked_mean(hidden.float(), inputs[1])
        return [{"vector": [round(v, 6) for v in row]} for row in vectors.float().tolist()]

    def _tag(self, sentences: list[list[str]]) -> list[dict]:
        outputs = [{"words": words, "tags": []} for words in sentences]
        rows = [i for i, words in enumerate(sentences) if words]
        if not rows:
            return outputs
        ids, label_word, case_ids = encode_words(self.tokenizer, [sentences[i] for i in rows], self.max_len)
        input_ids, mask = self._padded(ids, self.tokenizer.pad_id)
        label_word_t, _ = self._padded(label_word, -1)
        inputs = [input_ids, mask, torch.zeros_like(input_ids)]
        if self.case_features:
            inputs.append(self._padded(case_ids, 0)[0])
        logits = self.forward(*inputs)  # (B, T, L)
        predicted = decode_tags(self, logits, label_word_t >= 0).tolist()  # (B, T)
        labels = self.labels or [f"LABEL_{i}" for i in range(logits.shape[-1])]
        for row, i in enumerate(rows):
            tags = ["O"] * len(sentences[i])  # a word truncated away gets "O", as evaluation scores it
            for tag_id, word in zip(predicted[row], label_word[row]):
                if word >= 0:
                    tags[word] = labels[tag_id]
            outputs[i]["tags"] = tags
        return outputs

    def _generate(self, prompt: str) -> dict:
        tok = self.tokenizer
        prompt_ids = [tok.bos_id] + (tok.encode_batch([prompt])[0] if prompt else [])
        ids = list(prompt_ids)
        for _ in range(self.max_new_tokens):
            context = torch.tensor([ids[-self.max_len:]], dtype=torch.long)
            logits = self.forward(context, torch.ones_like(context), torch.zeros_like(context))  # (1, V)
            next_id = int(logits[0].argmax())
            if next_id == tok.eos_id:
                break
            ids.append(next_id)
        return {"text": tok.decode(ids[len(prompt_ids):])}

    def _text_to_text(self, texts: list[str]) -> list[dict]:
        from pretrainer.data.text_pairs import encode_sources
        from pretrainer.transfer.tasks.generation import generate_texts

        dataset = encode_sources(texts, self.tokenizer, self.max_len, self.decoding)
        return [{"text": text} for text in generate_texts(self.model, dataset, len(texts))]

    # ------------------------------------------------------------ as a module

    def batch_module(self) -> nn.Module:
        """An nn.Module taking the task's batches (dicts), so a task's `evaluate` scores this
        run through the same forward as `predict` (used to score int8 and ONNX runs)."""
        return _BatchModule(self)


class _BatchModule(nn.Module):
    def __init__(self, predictor: Predictor):
        super().__init__()
        self.predictor = predictor
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # evaluation reads the device from it
        self.crf = predictor.crf

    def forward(self, batch: dict) -> torch.Tensor:
        p = self.predictor
        inputs = [batch["input_ids"], batch["attention_mask"].long(),
                  batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))]
        if p.case_features:
            inputs.append(batch["case_ids"])
        extra = {"chunk_doc": batch["chunk_doc"]} if batch.get("chunk_doc") is not None else {}
        with torch.inference_mode():
            out = p.forward(*inputs, **extra)
        return out.clone()


# ---------------------------------------------------------------- loading


def run_recipe(run_dir: Path, kind: str):
    """A fine-tuned run's [finetune] section (its config.toml), or None."""
    if kind in ("classifier", "tagger") and (run_dir / "config.toml").is_file():
        try:
            return load_config(run_dir / "config.toml").finetune
        except PretrainerError:
            pass
    return None


def text_to_text_recipe(run_dir: Path):
    """The [finetune] section of a finished run of a task whose targets are texts (finetune.task =
    "generation"), or None."""
    if not ((run_dir / "config.toml").is_file() and (run_dir / "results.json").is_file()):
        return None
    try:
        recipe = load_config(run_dir / "config.toml").finetune
    except PretrainerError:
        return None
    from pretrainer.registry import TASKS
    from pretrainer.transfer import tasks  # noqa: F401  (registers the tasks)

    return recipe if not TASKS.get(recipe.task).labeled else None


def run_max_len(run_dir: Path, model_max_len: int, kind: str) -> int:
    """The input length a run was trained on: finetune.max_len of a fine-tuned run's config.toml,
    else the model's own limit."""
    recipe = run_recipe(run_dir, kind)
    return min(recipe.max_len, model_max_len) if recipe is not None else model_max_len


def run_long_documents(run_dir: Path, kind: str, backend: str, pair_field: str) -> LongDocuments:
    """How a classifier run reads long texts (its config.toml), refused where predict cannot."""
    recipe = run_recipe(run_dir, kind)
    if kind != "classifier" or recipe is None:
        return LongDocuments()
    long = LongDocuments.of(recipe)
    if long != LongDocuments() and pair_field:
        raise PretrainerError(f"--text-pair-field: {run_dir} was trained with finetune.truncation = "
                              f"{long.truncation!r}, chunk_pooling = {long.chunk_pooling!r}, on single texts")
    if long.chunked and backend.startswith("onnx"):
        raise PretrainerError(f"{run_dir}: an ONNX graph cannot pool the chunks of long documents "
                              f"(finetune.chunk_pooling = {long.chunk_pooling!r})")
    return long


def load_predictor(run_dir: str | os.PathLike, threads: int = 0, max_len: int = 0, pooling: str = "mean",
                   max_new_tokens: int = 50, text_field: str = "text", pair_field: str = "") -> Predictor:
    """A `Predictor` for any run directory: fp32 weights, int8 weights, or an ONNX graph."""
    run_dir = Path(run_dir)
    if pooling not in POOLINGS:
        raise PretrainerError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if threads:
        torch.set_num_threads(threads)
    spec_path = run_dir / "model.json"
    if not spec_path.is_file():
        raise PretrainerError(f"{run_dir}: not a run directory (no model.json)")
    spec = read_json(spec_path)
    inference = spec.get("inference") or {}
    fmt = inference.get("format")
    model = None
    if fmt == "onnx":
        tokenizer = load_tokenizer(run_dir)
        forward = OnnxModel(run_dir / inference.get("file", "model.onnx"), threads)
        kind = inference.get("kind", "encoder")
        backend = "onnx-int8" if inference.get("int8") else "onnx"
        case_features = "case_ids" in forward.input_names
        crf = None
    elif fmt == INT8_FORMAT:
        tokenizer = load_tokenizer(run_dir)
        state = read_model_state(run_dir / "model.safetensors")
        model = load_int8(module_from_spec(spec), state, str(run_dir / "model.safetensors")).eval()
        backend = INT8_FORMAT
    elif fmt is None:
        model, tokenizer = load_run(run_dir)
        model.eval()
        backend = "fp32"
    else:
        raise PretrainerError(f"{spec_path}: unknown inference format {fmt!r}")
    if model is not None:
        graph = InferenceGraph(model)
        forward, kind, case_features = graph, graph.kind, graph.case_features
        crf = getattr(model, "crf", None)
    model_max_len = int(spec["config"].get("max_len", 512))
    labels = run_label_names(run_dir) if kind in ("classifier", "tagger") else None
    decoding = None
    if model is not None and kind == "encoder" and getattr(backbone_of(model), "is_encoder_decoder", False):
        recipe = text_to_text_recipe(run_dir)
        if recipe is not None:  # fine-tuned to write text: it answers with text, not vectors
            from pretrainer.transfer.tasks.generation import decoding_of

            kind, decoding, model_max_len = "text2text", decoding_of(recipe), min(recipe.max_len, model_max_len)
    if kind in ("generator", "text2text") and pair_field:
        raise PretrainerError(f"--text-pair-field applies to classifiers and encoders, not a {kind} run")
    return Predictor(kind=kind, forward=forward, tokenizer=tokenizer,
                     max_len=max_len or run_max_len(run_dir, model_max_len, kind), labels=labels, backend=backend,
                     crf=crf, case_features=case_features, pooling=pooling, max_new_tokens=max_new_tokens,
                     text_field=text_field, pair_field=pair_field, source=str(run_dir), model=model,
                     long=run_long_documents(run_dir, kind, backend, pair_field), decoding=decoding)


# ---------------------------------------------------------------- a file in, JSON lines out


def count_records(path: str | os.PathLike) -> int | None:
    """Non-blank lines (less a csv/tsv header): the progress bar's total (exact unless a quoted
    csv field spans lines)."""
    import gzip

    opener = gzip.open if str(path).lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            n = sum(1 for line in f if line.strip())
    except OSError:
        return None
    name = str(path).lower().removesuffix(".gz")
    return max(n - 1, 0) if name.endswith((".csv", ".tsv")) else n


def batched(records: Iterable[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    batch = []
    for item in records:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_file(run_dir: str | os.PathLike, input_path: str | os.PathLike, output: str | os.PathLike = "-",
                 batch_size: int = 32, fmt: str = "auto", progress: bool = True, **options) -> int:
    """Write one JSON line per record of `input_path` to `output` ("-" = stdout); returns the
    number of records. `options` go to `load_predictor` (threads, max_len, pooling, ...)."""
    if batch_size < 1:
        raise PretrainerError(f"--batch-size must be >= 1, got {batch_size}")
    if has_processor(run_dir):
        return predict_images(run_dir, input_path, output, batch_size, pooling=options.get("pooling", "mean"))
    if not Path(input_path).is_file():
        raise PretrainerError(f"{input_path}: file not found")
    predictor = load_predictor(run_dir, **options)
    from tqdm import tqdm

    bar = None  # shown once the first batch is out: input that fails at once gets its one line, no bar
    n = 0
    try:
        with jsonl_sink(output) as sink:
            for batch in batched(read_records(input_path, fmt), batch_size):
                lines = [line for line, _ in batch]
                outputs = predictor.predict([record for _, record in batch],
                                            where=lambda i: (str(input_path), lines[i]))
                sink.write("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs))
                sink.flush()
                n += len(batch)
                if bar is None:
                    bar = tqdm(total=count_records(input_path), unit="ex", file=sys.stderr, disable=not progress,
                               desc=f"predict ({predictor.kind}, {predictor.backend})")
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return n


@contextlib.contextmanager
def jsonl_sink(output: str | os.PathLike) -> Iterator[TextIO]:
    """stdout for "-", else a temporary file beside `output` that replaces it only when everything
    was written: a failed prediction never leaves a partial file under the output's name."""
    if str(output) == "-":
        yield sys.stdout
        return
    out_path = Path(output)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    sink = open(tmp, "w", encoding="utf-8")
    try:
        yield sink
        sink.close()
        os.replace(tmp, out_path)
    except BaseException:
        sink.close()
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- image runs


def predict_images(run_dir: str | os.PathLike, source: str | os.PathLike, output: str | os.PathLike = "-",
                   batch_size: int = 32, pooling: str = "mean") -> int:
    """One JSON line per image of `source` (npz[#split], IDX, image folder) from an image run:
    label + probabilities from a classifier, the pooled features from any other run."""
    path, images_key, _ = split_spec(str(source))
    model, processor = load_run(run_dir)
    if not isinstance(processor, ImageProcessor):
        raise PretrainerError(f"{run_dir}: not an image run")
    found = read_images(path, images_key, channels=processor.channels, size=processor.image_size)
    model.eval()
    kind = model_kind(model)
    labels = run_label_names(run_dir) if kind == "classifier" else None
    with jsonl_sink(output) as sink, torch.inference_mode():
        for start in range(0, len(found), batch_size):
            images = ImageProcessor.to_float(found.images[start:start + batch_size])
            ids = [found.where(i) for i in range(start, start + len(images))]
            sink.write("".join(json.dumps(o, ensure_ascii=False) + "\n"
                               for o in _image_outputs(model, kind, images, ids, labels, pooling)))
    return len(found)


def _image_outputs(model: nn.Module, kind: str, images: torch.Tensor, ids: list[str], labels: list[str] | None,
                   pooling: str) -> list[dict]:
    if kind == "classifier":
        probs = torch.softmax(model({"images": images}).float(), dim=-1).tolist()
        names = labels or [f"LABEL_{i}" for i in range(len(probs[0]))]
        return [{"id": i, "label": names[int(np.argmax(p))],
                 "probabilities": {name: round(v, 6) for name, v in zip(names, p)}} for i, p in zip(ids, probs)]
    backbone = backbone_of(model)
    vectors = backbone.pooled(backbone(images), None, pooling)
    return [{"id": i, "vector": [round(v, 6) for v in row]} for i, row in zip(ids, vectors.float().tolist())]
