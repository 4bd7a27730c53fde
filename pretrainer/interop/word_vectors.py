"""`model.init_embeddings = RUN_DIR`: a word-vector run's table as a model's starting word
embeddings (the design's word-embedding stage reused as the embedding layer of a Transformer).

The word-vector run (objective.name = "word2vec") holds a bag-of-embeddings backbone whose table
is one vector per piece of its tokenizer. Its rows are copied into the model's word-embedding
table, which BERT's MLM head and GPT's LM head use as their (tied) output matrix too, so the copy
starts both. The vectors are rescaled to the model's own initialisation scale (their std becomes
`init_std`): word2vec's vectors are orders of magnitude larger, and the LayerNorms and the tied
output would otherwise start far from where the recipe's learning rate expects them. Special
tokens ([CLS], [MASK], ...), which word2vec never trains, keep the model's own init.

The ids must mean the same pieces in both runs, so the two tokenizers' vocabularies must be
equal: WordPiece training is not bit-repeatable (ties broken in hash order), so a run that
trains its own tokenizer may get another vocabulary than the word-vector run did. The way that
always works: `tokenizer.path = "<word-vector run>/tokenizer.json"`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pretrainer.data.tokenizer import TextTokenizer, load_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.io import read_json
from pretrainer.objectives.heads import word_embeddings
from pretrainer.runs import load_run, module_from_spec

KEY = "model.init_embeddings"


def _refuse(run_dir: str, problem: str) -> PretrainerError:
    return PretrainerError(f"config key {KEY!r} = {run_dir!r}: {problem}")


def word_vector_shape(run_dir: str) -> tuple[int, int]:
    """(pieces, width) of the word-vector table in `run_dir`, read from its model.json alone (no
    weights), so a config can be refused before any data is read."""
    spec_path = Path(run_dir) / "model.json"
    if not spec_path.is_file():
        raise _refuse(run_dir, "not a run directory (no model.json); give a run pre-trained with "
                               "objective.name = \"word2vec\"")
    with torch.device("meta"):
        module = module_from_spec(read_json(spec_path))
    table = getattr(getattr(module, "backbone", module), "word_vector_table", None)
    if table is None:
        raise _refuse(run_dir, f"not a word-vector run (its model is {module.config.name!r}); give a run "
                               f"pre-trained with objective.name = \"word2vec\" (model.name = \"boe\")")
    return tuple(table.weight.shape)


def width_key(model_config) -> str:
    """The config key that sets a model's word-embedding width (recurrent models name it d_embed)."""
    return "model.d_embed" if hasattr(model_config, "d_embed") else "model.d_model"


def check_sizes(run_dir: str, vectors: tuple[int, int], table: tuple[int, int], width: str = "model.d_model") -> None:
    """One-line refusals when the word vectors do not fit the model's table (V, C); `width` names the
    key that sets C."""
    if vectors[1] != table[1]:
        raise _refuse(run_dir, f"its vectors are {vectors[1]} wide but this model's word embeddings are "
                               f"{table[1]} ({width}); train the word vectors with that width")
    if vectors[0] != table[0]:
        raise _refuse(run_dir, f"it has {vectors[0]:,} word vectors but this model's table has {table[0]:,} rows "
                               f"(model.vocab_size); leave model.vocab_size = 0 to size it by the tokenizer")


def check_tokenizer(run_dir: str, theirs: TextTokenizer, ours: TextTokenizer) -> None:
    """Refuse when the two vocabularies differ: an id would then mean another piece."""
    a = theirs.tokenizer.get_vocab(with_added_tokens=True)
    b = ours.tokenizer.get_vocab(with_added_tokens=True)
    if a == b:
        return
    moved = sum(1 for piece, i in a.items() if b.get(piece) != i)
    raise _refuse(run_dir, f"its tokenizer differs from this run's ({len(a):,} vs {len(b):,} pieces, {moved:,} "
                           f"without the same id); set tokenizer.path = "
                           f"\"{Path(run_dir) / 'tokenizer.json'}\" so both runs read text alike")


def check_init_embeddings(run_dir: str, backbone: nn.Module, tokenizer_path: str = "") -> None:
    """What can be checked before the data is prepared: a word-vector run as wide as the (planned)
    backbone's word-embedding table, and, when tokenizer.path names the tokenizer, the same vocabulary."""
    pieces, width = word_vector_shape(run_dir)
    model_width = word_embeddings(backbone).embedding_dim  # not d_model: an ELMo's features are twice it
    if width != model_width:
        check_sizes(run_dir, (pieces, width), (pieces, model_width), width_key(backbone.config))
    if tokenizer_path:
        check_tokenizer(run_dir, load_tokenizer(run_dir), load_tokenizer(tokenizer_path))


def init_embeddings(backbone: nn.Module, run_dir: str, tokenizer: TextTokenizer) -> str:
    """Copy the word vectors of `run_dir` into `backbone`'s word embeddings (rescaled to its
    init_std; special tokens keep their init); returns a line for the log."""
    pieces_width = word_vector_shape(run_dir)
    module, theirs = load_run(run_dir)
    check_tokenizer(run_dir, theirs, tokenizer)  # first: another vocabulary is the cause of other sizes
    target = word_embeddings(backbone).weight  # (V, C); the tied output matrix too
    check_sizes(run_dir, pieces_width, tuple(target.shape), width_key(backbone.config))
    vectors = getattr(module, "backbone", module).word_vector_table.weight.detach()
    rows = torch.ones(len(vectors), dtype=torch.bool)
    rows[tokenizer.special_ids] = False
    std = float(vectors[rows].std())
    if not std > 0:
        raise _refuse(run_dir, "its word vectors are all equal (an untrained run?)")
    init_std = getattr(backbone.config, "init_std", 0.02)
    with torch.no_grad():
        target[rows] = (vectors[rows] * (init_std / std)).to(target)
    return (f"word embeddings started from {run_dir} ({int(rows.sum()):,} vectors, std {std:.3g} rescaled to "
            f"{init_std:g}; special tokens keep their init)")
