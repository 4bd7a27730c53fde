import json

import numpy as np
from collections import Counter

import pytest
import torch

from pretrainer.config import LabeledDataConfig
from pretrainer.data.labeled import (ClassificationLoader, encode_examples, infer_label_names, iterate_once,
                                     stratified_subset)
from pretrainer.data.readers import LabeledExamples, read_labeled
from pretrainer.errors import PretrainerError


def examples(n: int = 30, pairs: bool = False) -> LabeledExamples:
    texts = [" ".join(["the cat sat"] * (1 + i % 5)) for i in range(n)]
    return LabeledExamples(texts=texts, pairs=["on the mat"] * n if pairs else None,
                           labels=[str(i % 3) for i in range(n)], source="t.jsonl",
                           line_numbers=list(range(1, n + 1)))


@pytest.fixture
def dataset(wordpiece):
    return encode_examples(examples(), wordpiece, ["0", "1", "2"], max_len=32)


def test_encode_examples(wordpiece):
    data = encode_examples(examples(pairs=True), wordpiece, ["0", "1", "2"], max_len=12)
    assert len(data) == 30 and data.labels[:4] == [0, 1, 2, 0]
    assert all(len(ids) <= 12 and ids[0] == wordpiece.cls_id for ids in data.input_ids)
    assert all(1 in types for types in data.token_type_ids)


def test_label_outside_the_label_set(wordpiece):
    ex = examples()
    ex.labels[4] = "foo"
    with pytest.raises(PretrainerError) as info:
        encode_examples(ex, wordpiece, ["0", "1", "2"], max_len=16)
    assert str(info.value) == "t.jsonl:5: label 'foo' is not in the label set ['0', '1', '2']"


def test_infer_label_names():
    assert infer_label_names(examples()) == ["0", "1", "2"]
    ex = examples()
    ex.labels = ["pos", "neg", "pos"]
    assert infer_label_names(ex) == ["neg", "pos"]
    ex.labels = ["10", "9", "1"]
    assert infer_label_names(ex) == ["1", "9", "10"]  # integer labels sort as numbers


def test_stratified_subset_keeps_class_proportions():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    subset = stratified_subset(labels, 0.1, seed=0)
    assert Counter(labels[i] for i in subset) == {0: 6, 1: 3, 2: 1}
    assert subset == sorted(subset) and subset == stratified_subset(labels, 0.1, seed=0)
    assert subset != stratified_subset(labels, 0.1, seed=1)
    tiny = stratified_subset(labels, 0.001, seed=0)
    assert Counter(labels[i] for i in tiny) == {0: 1, 1: 1, 2: 1}  # every class keeps one
    assert stratified_subset(labels, 1.0, seed=0) == list(range(100))
    with pytest.raises(PretrainerError, match="label_fraction"):
        stratified_subset(labels, 0.0, seed=0)


def test_batches_pad_to_the_longest_in_the_batch(dataset, wordpiece):
    batch = next(ClassificationLoader(dataset, 4, seed=0, shuffle=False))
    lengths = [len(dataset.input_ids[i]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, n in zip(batch["input_ids"], lengths):
        assert (row[n:] == wordpiece.pad_id).all()
    assert batch["labels"].tolist() == [0, 1, 2, 0] and batch["labels"].dtype == torch.long
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert batch["attention_mask"].dtype == torch.bool


def test_loader_epochs_cover_the_subset_and_resume(dataset):
    subset = [0, 3, 4, 8, 9, 10, 15, 20, 21, 29]
    loader = ClassificationLoader(dataset, 4, seed=5, indices=subset)
    assert loader.steps_per_epoch == 3
    seen = [tuple(next(loader)["input_ids"][:, 0].shape) for _ in range(3)]
    assert seen == [(4,), (4,), (2,)]  # the epoch's last batch is smaller

    reference = ClassificationLoader(dataset, 4, seed=5, indices=subset)
    for _ in range(2):
        next(reference)
    state = json.loads(json.dumps(reference.state_dict()))
    expected = [next(reference) for _ in range(4)]
    resumed = ClassificationLoader(dataset, 4, seed=5, indices=subset)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_ranks_take_disjoint_examples(wordpiece):
    ex = examples()
    ex.labels = [str(i) for i in range(len(ex))]  # a label per example identifies it in a batch
    data = encode_examples(ex, wordpiece, ex.labels, max_len=16)
    seen = []
    for rank in range(3):
        loader = ClassificationLoader(data, 4, seed=1, rank=rank, world_size=3)
        assert loader.steps_per_epoch == 3  # 30 examples / 3 ranks = 10 each
        seen.append([int(i) for _ in range(3) for i in next(loader)["labels"]])
    assert all(len(ids) == 10 for ids in seen)
    assert sorted(seen[0] + seen[1] + seen[2]) == list(range(30))


def test_iterate_once_in_order(dataset):
    batches = list(iterate_once(dataset, 7))
    assert [len(b["labels"]) for b in batches] == [7, 7, 7, 7, 2]
    assert torch.cat([b["labels"] for b in batches]).tolist() == dataset.labels


def test_sst2_end_to_end(shared_data, wordpiece):
    ex = read_labeled(shared_data / "classification/sst2/dev.txt", LabeledDataConfig())
    data = encode_examples(ex, wordpiece, infer_label_names(ex), max_len=64)
    batch = next(iter(iterate_once(data, 16)))
    assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].shape[1] <= 64


def test_length_grouping_cuts_padding_and_keeps_every_example():
    from pretrainer.data.labeled import EncodedDataset

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=400)
    dataset = EncodedDataset(input_ids=[list(range(1, n + 1)) for n in lengths],
                             token_type_ids=[[0] * n for n in lengths], labels=[i % 2 for i in range(400)],
                             label_names=["a", "b"], pad_id=0)

    def padded_tokens(loader):
        batches = [next(loader) for _ in range(loader.steps_per_epoch)]
        seen = sorted(int(x) for b in batches for x in b["attention_mask"].sum(1))
        return sum(b["input_ids"].numel() for b in batches), seen

    grouped, seen_grouped = padded_tokens(ClassificationLoader(dataset, 16, seed=1))
    plain, seen_plain = padded_tokens(ClassificationLoader(dataset, 16, seed=1, group_by_length=False))
    assert seen_grouped == seen_plain == sorted(lengths.tolist())  # the same examples, once each
    assert grouped < 0.75 * plain
