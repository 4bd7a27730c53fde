"""Text-to-text generation: a target text per source text (jsonl / csv / tsv with
finetune.data.text_field and target_field), e.g. a news headline from its article.

The "head" is the encoder–decoder itself: its decoder and tied LM head are what the task
trains, by teacher forcing (objectives/text_to_text.py). Dev / test are decoded (greedy or beam
search, finetune.generation) and scored with ROUGE-1/2/L F1 (evaluation/rouge.py); ROUGE-L on
dev picks the best weights. A fine-tuned run saves the encoder–decoder as it is, so `generate`,
`export` and `predict` read it like any T5 run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pretrainer.data.labeled import ClassificationLoader
from pretrainer.data.readers import ReadStats, TextPairs, read_text_pairs
from pretrainer.data.text_pairs import Decoding, TextPairDataset, encode_text_pairs
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.rouge import rouge_f1
from pretrainer.io import atomic_write_text
from pretrainer.objectives.text_to_text import TextToTextObjective
from pretrainer.registry import TASKS
from pretrainer.transfer.tasks.base import Encoder, Splits, Task


def decoding_of(ft) -> Decoding:
    g = ft.generation
    return Decoding(max_target_len=g.max_target_len, num_beams=g.num_beams, length_penalty=g.length_penalty)


def check_encoder_decoder(backbone: nn.Module, ft, source: str = "the backbone") -> None:
    """Generation needs a decoder, and one long enough for finetune.generation.max_target_len."""
    if not getattr(backbone, "is_encoder_decoder", False):
        name = getattr(getattr(backbone, "config", None), "name", type(backbone).__name__)
        raise PretrainerError(f"config key 'finetune.task' = \"generation\" needs an encoder–decoder (model.name = "
                              f"\"t5\"); {source} is {name!r}, which has no decoder")
    max_len = backbone.config.max_len
    if ft.generation.max_target_len > max_len:
        raise PretrainerError(f"config key 'finetune.generation.max_target_len' = {ft.generation.max_target_len} is "
                              f"longer than the decoder allows (model.max_len = {max_len}); set it to at most "
                              f"{max_len}")


def suppressed_ids(tokenizer) -> list[int]:
    """Tokens a generated text never holds: sentinels, the start token ([PAD]) and [CLS] / [MASK]
    (the end token stays: it stops the text)."""
    specials = set(tokenizer.special_ids) - {tokenizer.eos_id}
    return sorted(specials | {tokenizer.pad_id})


@torch.no_grad()
def generate_texts(model: nn.Module, dataset: TextPairDataset, batch_size: int) -> list[str]:
    """The decoded text of every source of `dataset`, in order (decoding: dataset.decoding)."""
    backbone = getattr(model, "backbone", model)
    tokenizer, decoding = dataset.tokenizer, dataset.decoding
    device = next(backbone.parameters()).device
    suppress = suppressed_ids(tokenizer)
    texts = []
    for first in range(0, len(dataset), batch_size):
        batch = dataset.batch(range(first, min(first + batch_size, len(dataset))))
        out = backbone.generate(batch["input_ids"].to(device), decoding.max_target_len,
                                attention_mask=batch["attention_mask"].to(device), start_id=tokenizer.pad_id,
                                eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, num_beams=decoding.num_beams,
                                length_penalty=decoding.length_penalty, greedy=True, suppress_ids=suppress)
        for row in out[:, 1:].tolist():
            if tokenizer.eos_id in row:
                row = row[:row.index(tokenizer.eos_id)]
            texts.append(tokenizer.decode(row, skip_special=True).strip())
    return texts


def describe_lengths(dataset: TextPairDataset) -> str:
    n = len(dataset)
    return (f"{n:,} pairs, {sum(map(len, dataset.input_ids)) / n:.0f} source and "
            f"{sum(map(len, dataset.target_ids)) / n:.1f} target tokens on average; "
            f"{dataset.truncated_sources:,} sources cut to finetune.max_len, {dataset.truncated_targets:,} targets "
            f"to finetune.generation.max_target_len")


@TASKS.register("generation")
class Generation(Task):
    name = "generation"
    head_class = nn.Module  # the encoder–decoder itself; `check_encoder_decoder` says which
    metric = "rougeL"
    unit = "source/target pairs"
    labels_noun = "targets"
    record = {"task": "generation"}
    labeled = False

    def check(self, ft) -> None:
        for key, default in (("truncation", "head"), ("chunk_pooling", "none")):
            if getattr(ft, key) != default:
                raise PretrainerError(f"config key 'finetune.{key}' = {getattr(ft, key)!r} does not apply to "
                                      f"finetune.task = \"generation\" (the source keeps its head); leave it "
                                      f"{default!r}")
        for key in ("case_features", "crf", "teacher"):
            if getattr(ft, key):
                raise PretrainerError(f"config key 'finetune.{key}' does not apply to finetune.task = \"generation\"")

    def read(self, path: str, data_cfg, stats: ReadStats | None = None) -> TextPairs:
        return read_text_pairs(path, data_cfg, stats)

    def infer_labels(self, examples) -> list[str]:
        return []

    def encoder(self, tokenizer, max_len: int, ft=None) -> Encoder:
        if getattr(tokenizer, "kind", "") == "image":
            raise PretrainerError("config key 'finetune.task' = \"generation\" reads text, but the backbone reads "
                                  "images")
        decoding = decoding_of(ft) if ft is not None else Decoding()
        on_long = ft.generation.on_long_target if ft is not None else "truncate"
        return lambda pairs, _names: encode_text_pairs(pairs, tokenizer, max_len, decoding, on_long)

    def prepare(self, model: nn.Module, splits: Splits, log) -> None:
        for name in ("train", "dev", "test"):
            dataset = getattr(splits, name)
            if dataset is not None:
                log(f"{name}: {describe_lengths(dataset)}")

    def read_splits(self, ft, encode: Encoder, seed: int, uses_labels: bool = True) -> Splits:
        """As a labeled task's, without labels: every training pair is used (finetune.label_fraction
        and n_labels take a seeded subset of the pairs)."""
        stats = {name: ReadStats() for name, path in (("train", ft.data.train), ("dev", ft.data.dev),
                                                       ("test", ft.data.test)) if path}
        train = self.require_examples(encode(self.read(ft.data.train, ft.data, stats["train"]), []), ft.data.train)
        if len(train) < 2:
            raise PretrainerError(f"{ft.data.train}: only {len(train)} of the {self.unit}; fine-tuning needs at "
                                  f"least 2")

        def split(name: str, path: str):
            return self.read_evaluation_file(path, ft.data, encode, [], stats[name]) if path else None

        return Splits(label_names=[], train=train, subset=self.subset(train, ft, seed), dev=split("dev", ft.data.dev),
                      test=split("test", ft.data.test), read_stats=stats)

    def subset(self, train, ft, seed: int) -> list[int]:
        n = len(train)
        keep = ft.n_labels or max(2, round(ft.label_fraction * n))
        if keep > n:
            raise PretrainerError(f"config key 'finetune.n_labels' = {ft.n_labels}, but {ft.data.train} has only "
                                  f"{n} {self.unit}")
        if keep == n:
            return list(range(n))
        return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].tolist())

    def size(self, dataset) -> int:
        return len(dataset)

    def present_labels(self, dataset, indices=None) -> set[int]:
        return set()

    def head(self, backbone: nn.Module, num_labels: int, ft, **kwargs) -> nn.Module:
        check_encoder_decoder(backbone, ft)
        return backbone

    def objective(self, label_names: list[str]) -> TextToTextObjective:
        return TextToTextObjective()

    def batches(self, splits: Splits, batch_size: int, seed: int) -> ClassificationLoader:
        return ClassificationLoader(splits.train, batch_size, seed=seed, indices=splits.subset)

    def evaluate(self, model: nn.Module, dataset: TextPairDataset, label_names: list[str], batch_size: int,
                 final: bool = False) -> dict:
        """Teacher-forced target loss and token accuracy, and ROUGE F1 of the decoded texts; the
        final report keeps every generated text (`write_outputs` moves them to a file)."""
        scores = TextToTextObjective().evaluate(model, (dataset.batch(range(i, min(i + batch_size, len(dataset))))
                                                        for i in range(0, len(dataset), batch_size)))
        generated = generate_texts(model, dataset, batch_size)
        scores.update(rouge_f1(generated, dataset.targets))
        scores["mean_generated_words"] = sum(len(t.split()) for t in generated) / len(generated)
        scores["mean_target_words"] = sum(len(t.split()) for t in dataset.targets) / len(dataset)
        if final:
            scores.update(truncated_sources=dataset.truncated_sources, truncated_targets=dataset.truncated_targets)
            scores["outputs"] = [{"id": i, "target": t, "generated": g, "source_start": s[:200]}
                                 for i, t, g, s in zip(dataset.ids, dataset.targets, generated, dataset.sources)]
        return scores

    def write_outputs(self, metrics: dict, run_dir: Path, name: str) -> dict:
        """The generated texts to `<run_dir>/<name>.jsonl`; results.json names the file."""
        outputs = metrics.pop("outputs", None)
        if outputs is None:
            return metrics
        path = Path(run_dir) / f"{name}.jsonl"
        atomic_write_text(path, "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs))
        return {**metrics, "generated": path.name}

    def describe(self, metrics: dict) -> str:
        return (f"ROUGE-1 {metrics['rouge1']:.4f}, ROUGE-2 {metrics['rouge2']:.4f}, ROUGE-L {metrics['rougeL']:.4f} "
                f"(F1); target loss {metrics['target_loss']:.4f}, token accuracy {metrics['token_acc']:.4f}")
