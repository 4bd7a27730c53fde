"""The text data module (`[data] name = "text"`): a corpus of documents, a tokenizer trained
or loaded for it, packed into cached token shards; batches in the layouts objectives name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from pretrainer.config import Config, DataConfig, resolve_section
from pretrainer.data_info import DataInfo
from pretrainer.data.lexicon import Lexicon, load_lexicon
from pretrainer.data.loader import LAYOUTS, PackedLMLoader, eval_batches
from pretrainer.data.segments import SegmentLoader, segment_eval_batches
from pretrainer.data.shards import PreparedCorpus, prepare_corpus
from pretrainer.data.text_config import TextDataConfig
from pretrainer.data.tokenizer import TextTokenizer, tokenizer_file
from pretrainer.errors import PretrainerError
from pretrainer.registry import DATA


def text_info(tokenizer: TextTokenizer) -> DataInfo:
    """The description of text read through `tokenizer`."""
    return DataInfo(modality="text", vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
                    cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id,
                    bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, special_ids=tuple(tokenizer.special_ids),
                    sentinel_ids=tuple(tokenizer.sentinel_ids), tokenizer_kind=tokenizer.kind)


NO_HELDOUT = (" (no held-out data: set data.holdout > 0 with two or more documents, or data.eval, "
              "to get a held-out metric)")


@DATA.register("text")
class TextData:
    """Read, tokenize and pack a text corpus once (cached by content); describe it; cut batches.

    `layouts` are the batch layouts it can build (data/loader.py); an objective names one as
    its `batch_layout`, and options it needs (e.g. whole-word masking) as `layout_options`.
    """

    config_class = TextDataConfig
    layouts = (*LAYOUTS, "segments")
    modality = "text"  # what models it feeds: those that read token ids (models.model_modality)

    def __init__(self, cfg: Config):
        self.cfg = dataclasses.replace(cfg, data=resolve_section(DataConfig, cfg.data))
        self.corpus: PreparedCorpus | None = None
        self._lexicons: dict[str, Lexicon] = {}

    @staticmethod
    def inherit(cfg: Config, folder: str | Path) -> Config:
        """`cfg` reading text the way the model in `folder` (a run or Hugging Face folder) was
        trained to: with its tokenizer, unless tokenizer.path names one already."""
        if cfg.tokenizer.path:
            return cfg
        return dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, path=str(tokenizer_file(folder))))

    def prepare(self, log: Callable[[str], None] = print) -> TextData:
        self.corpus = prepare_corpus(self.cfg, log=log)
        return self

    @property
    def prepared(self) -> PreparedCorpus:
        if self.corpus is None:
            raise RuntimeError("call prepare() first")
        return self.corpus

    @property
    def tokenizer(self) -> TextTokenizer:
        return self.prepared.tokenizer

    @property
    def info(self) -> DataInfo:
        return text_info(self.tokenizer)

    @property
    def has_heldout(self) -> bool:
        """Whether there is held-out text to evaluate on. Without it (data.holdout = 0 and no
        data.eval, a one-document corpus, or empty eval files) there is no held-out metric: an
        evaluation over nothing would read as a perfect score (loss 0, perplexity 1)."""
        return len(self.prepared.eval.tokens) > 0

    def token_counts(self) -> np.ndarray:
        """(vocab_size,) int64: how often each id occurs in the training shards."""
        return np.bincount(np.asarray(self.prepared.train.tokens), minlength=self.tokenizer.vocab_size)

    def summary(self) -> str:
        corpus = self.prepared
        return (f"prepared {corpus.meta.get('documents', '?')} documents, {len(corpus.train.tokens):,} train / "
                f"{len(corpus.eval.tokens):,} held-out tokens{'' if self.has_heldout else NO_HELDOUT}, "
                f"vocab {corpus.tokenizer.vocab_size:,} -> {corpus.cache_dir}")

    def check_layout(self, layout: str, objective: str) -> None:
        if layout not in self.layouts:
            raise PretrainerError(f"objective {objective!r} needs {layout!r} batches, which data.name = "
                                  f"\"text\" cannot build (it builds: {', '.join(self.layouts)})")

    def lexicon(self, path: str) -> Lexicon | None:
        """The phrases of `path` in this tokenizer's ids (read once), or None for no path; a file
        that does not read or encode is a one-line error naming its line."""
        if not path:
            return None
        if path not in self._lexicons:
            self._lexicons[path] = load_lexicon(path, self.tokenizer)
        return self._lexicons[path]

    def train_batches(self, layout: str, batch_size: int, seq_len: int, *, seed: int, rank: int = 0,
                      world_size: int = 1, **options) -> PackedLMLoader | SegmentLoader:
        """Infinite, resumable, rank-aware batches (state_dict / load_state_dict).

        Options: `whole_word` (batches carry word_starts), `lexicon` (a phrase file: batches
        also carry unit_starts, see data/lexicon.py)."""
        if layout == "segments":  # one text per row instead of packed windows (data/segments.py)
            return SegmentLoader(self.prepared.train, batch_size, seq_len, self.tokenizer, seed=seed,
                                 rank=rank, world_size=world_size)
        return PackedLMLoader(self.prepared.train, batch_size, seq_len, layout, self.tokenizer, seed=seed,
                              rank=rank, world_size=world_size, whole_word=options.get("whole_word", False),
                              lexicon=self.lexicon(options.get("lexicon", "")))

    def eval_batches(self, layout: str, batch_size: int, seq_len: int, max_batches: int = 0,
                     **options) -> Iterator[dict[str, torch.Tensor]]:
        """Held-out batches, the same every time."""
        if layout == "segments":
            return segment_eval_batches(self.prepared.eval, batch_size, seq_len, self.tokenizer,
                                        max_batches=max_batches)
        return eval_batches(self.prepared.eval, batch_size, seq_len, layout, self.tokenizer, max_batches=max_batches,
                            lexicon=self.lexicon(options.get("lexicon", "")))

    def save(self, run_dir: str | Path) -> None:
        """What a run needs to read new data the same way: its tokenizer.json."""
        self.tokenizer.save(Path(run_dir))
