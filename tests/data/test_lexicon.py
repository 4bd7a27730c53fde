"""Lexicon files: reading (one-line errors naming file and line) and finding phrases on word borders;
with masking = "lexicon", a found phrase is masked whole and the budget holds."""

import numpy as np
import pytest
import torch

from pretrainer.config import ObjectiveConfig
from pretrainer.data.lexicon import Lexicon, load_lexicon
from pretrainer.data.loader import PackedLMLoader
from pretrainer.errors import PretrainerError
from pretrainer.objectives.mlm import MaskedLM


def write(tmp_path, text, name="lexicon.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_phrases_are_found_whole_on_word_borders_longest_first(tmp_path, wordpiece):
    lexicon = load_lexicon(write(tmp_path, "green river\ngreen river stone\nsat on\n"), wordpiece)
    ids = np.array(wordpiece.encode_batch(["the green river stone sat on a green river ."])[0])
    found = [wordpiece.decode(ids[s:e]) for s, e in lexicon.find(ids, wordpiece.word_starts(ids))]
    assert found == ["green river stone", "sat on", "green river"]
    units = lexicon.unit_starts(ids[None], wordpiece.word_starts(ids)[None])[0]
    words = wordpiece.word_starts(ids)
    assert units.sum() == words.sum() - 2 - 1 - 1  # inner words of the three phrases


def test_a_phrase_is_found_only_on_word_borders():
    lexicon = Lexicon([(5, 6)])
    ids = np.array([1, 5, 6, 7, 5, 6, 2])
    starts = np.array([True, True, True, True, True, True, True])
    assert lexicon.find(ids, starts) == [(1, 3), (4, 6)]
    starts[3] = False  # 7 continues the word 6 begins: "5 6" is part of a longer word there
    assert lexicon.find(ids, starts) == [(4, 6)]
    starts[4] = False  # and here 5 continues the word before it
    assert lexicon.find(ids, starts) == []


@pytest.mark.parametrize("text,where,says", [
    ("green river\n\nsat on\n", ":2:", "empty line"),
    ("green river\n日本語\n", ":2:", "cannot encode"),
    (b"green river\nsat \xff on\n", ":2:", "UTF-8"),
    ("", "lexicon.txt", "no phrases"),
])
def test_bad_lexicon_files_are_one_line_errors(tmp_path, wordpiece, text, where, says):
    path = write(tmp_path, text)
    with pytest.raises(PretrainerError) as error:
        load_lexicon(path, wordpiece)
    message = str(error.value)
    assert where in message and says in message and "\n" not in message


def test_a_missing_lexicon_names_the_key(tmp_path, wordpiece):
    with pytest.raises(PretrainerError, match=r"objective\.lexicon.*file not found"):
        load_lexicon(tmp_path / "nope.txt", wordpiece)
    with pytest.raises(PretrainerError, match=r"objective\.lexicon.*file not found"):
        MaskedLM(ObjectiveConfig(masking="lexicon", lexicon=str(tmp_path / "nope.txt")), wordpiece)


def test_lexicon_masking_masks_found_phrases_whole_within_the_budget(tmp_path, wordpiece, stream_of):
    docs = ["the green river ran under a small tree and the green river sang ."] * 40
    path = write(tmp_path, "green river\nsmall tree\n")
    lexicon = load_lexicon(path, wordpiece)
    loader = PackedLMLoader(stream_of(docs), 8, 32, "mlm", wordpiece, seed=0, lexicon=lexicon)
    objective = MaskedLM(ObjectiveConfig(masking="lexicon", lexicon=str(path), mask_rate=0.2), wordpiece)
    assert objective.layout_options == {"whole_word": True, "lexicon": str(path)}
    whole = partial = 0
    for _ in range(10):
        batch = next(loader)
        _, labels = objective.mask(batch, torch.Generator().manual_seed(0))
        chosen = (labels != -100).numpy()
        ids = batch["input_ids"].numpy()
        for row in range(len(ids)):
            for start, end in lexicon.find(ids[row], batch["word_starts"][row].numpy()):
                inside = chosen[row, start:end]
                whole += inside.all()
                partial += inside.any() and not inside.all()
            n = int((~batch["special_tokens_mask"][row]).sum())
            budget = max(1, round(0.2 * n))
            assert budget <= chosen[row].sum() < budget + 3  # a unit may cross the budget: at most 3 tokens
    assert whole > 0 and partial == 0
    (tmp_path / "run").mkdir()
    objective.save(tmp_path / "run")  # the run keeps the phrases it masked by
    assert (tmp_path / "run" / "lexicon.txt").read_bytes() == path.read_bytes()
