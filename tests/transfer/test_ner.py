"""Token classification: CoNLL reading, sub-token label alignment, the tagger, NER fine-tuning end to end."""

import dataclasses
import json
import random

import pytest
import torch

from pretrainer.config import Config, TokenizerConfig, load_config
from pretrainer.data.conll import (WORD_SHAPES, TaggedSentence, TaggingLoader, collate_tagging, encode_sentences,
                                   infer_tag_names, iterate_tagging_once, read_conll, sentence_subset, word_shape)
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import TokenClassifier
from pretrainer.objectives.token_classification import TokenClassificationObjective
from pretrainer.registry import TASKS, TRANSFER_METHODS
from pretrainer.transfer.finetune import check_finetune_config, finetune

FILLER = "the a of walked towards quickly yesterday morning beside under".split()
# Entity words and their tags; "new delhi" is a two-word entity. No entity word starts with
# a filler word's first letter, so a tiny model can tell them apart from their first sub-token.
ENTITIES = [(["kim"], ["B-PER"]), (["joe"], ["B-PER"]), (["paris"], ["B-LOC"]),
            (["new", "delhi"], ["B-LOC", "I-LOC"]), (["zenith"], ["B-ORG"])]
QUIET = dict(log=lambda *_: None)


def tagged_sentences(n, seed):
    """Filler words around one or two entities; an entity's tags depend only on its words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(1, 2)):
            filler = rng.choices(FILLER, k=rng.randint(1, 4))
            entity_words, entity_tags = rng.choice(ENTITIES)
            words += filler + entity_words
            tags += ["O"] * len(filler) + entity_tags
        sentences.append((words, tags))
    return sentences


def write_conll(path, sentences, prefix=""):
    blocks = ["\n".join(f"{prefix}{w}\t{t}" for w, t in zip(words, tags)) for words, tags in sentences]
    path.write_text("-DOCSTART-\tO\n\n" + "\n\n".join(blocks) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    # A small vocabulary, so that many words split into several sub-tokens.
    texts = [" ".join(words) for words, _ in tagged_sentences(200, seed=0)]
    return train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=70, min_frequency=1))


# ---------------------------------------------------------------- reading


def test_read_conll_strips_prefix_and_splits_on_blank_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\n"
                    "en:R.H.\tB-ORG\nen:Saunders\tI-ORG\nen:(\tO\n\n\n"
                    "en:Paris B-LOC\n"  # whitespace-separated
                    "en:New York\tI-LOC\n"  # a tab lets a word hold a space
                    "\n"
                    "en:Bob\tB-PER")  # no blank line at the end
    sentences = read_conll(path, token_prefix="en:")
    assert [(s.words, s.tags) for s in sentences] == [
        (["R.H.", "Saunders", "("], ["B-ORG", "I-ORG", "O"]),
        (["Paris", "New York"], ["B-LOC", "I-LOC"]),
        (["Bob"], ["B-PER"])]
    assert sentences[1].where == f"{path}:8"
    assert infer_tag_names(sentences) == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG"]
    assert read_conll(path)[0].words[0] == "en:R.H."  # no prefix given, nothing stripped


@pytest.mark.parametrize("line, message", [
    ("Saunders", "expected `word<TAB>tag`"),
    ("Saunders\tX-PER", "'X-PER' is not an IOB2 tag"),
    ("Saunders\tPER", "'PER' is not an IOB2 tag"),
])
def test_read_conll_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(f"Alice\tB-PER\n\n{line}\n")
    with pytest.raises(PretrainerError, match=f"bad.txt:3: {message}".replace("(", r"\(")):
        read_conll(path)


def test_unknown_tag_names_its_sentence(tmp_path, tokenizer):
    path = write_conll(tmp_path / "dev.txt", [(["kim"], ["B-PER"]), (["paris"], ["B-LOC"])])
    with pytest.raises(PretrainerError, match=r"dev.txt:5: tag 'B-LOC' is not in the label set"):
        encode_sentences(read_conll(path), tokenizer, ["O", "B-PER"], max_len=16)


def test_sentence_subset():
    assert sentence_subset(10, 1.0, 0, seed=0) == list(range(10))
    half = sentence_subset(10, 0.5, 0, seed=0)
    assert len(half) == 5 and half == sorted(half) and half == sentence_subset(10, 0.5, 0, seed=0)
    assert half != sentence_subset(10, 0.5, 0, seed=1)
    assert len(sentence_subset(10, 0.01, 0, seed=0)) == 1
    assert len(sentence_subset(10, 0.5, 3, seed=0)) == 3  # n_labels wins
    with pytest.raises(PretrainerError, match="n_labels"):
        sentence_subset(10, 1.0, 11, seed=0)
    with pytest.raises(PretrainerError, match="label_fraction"):
        sentence_subset(10, 0.0, 0, seed=0)


# ---------------------------------------------------------------- alignment


def test_first_sub_token_carries_the_label(tokenizer):
    words = ["kim", "walked", "towards", "new", "delhi"]
    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    names = ["O", "B-LOC", "B-PER", "I-LOC"]
    data = encode_sentences([TaggedSentence(words, tags, "x:1")], tokenizer, names, max_len=64)
    pieces = [len(tokenizer.tokenizer.encode(w, add_special_tokens=False).ids) for w in words]
    assert max(pieces) > 1, "the test needs a word of several sub-tokens"

    batch = collate_tagging(data, [0])
    expected = [-100]  # [CLS]
    for tag, n in zip(tags, pieces):
        expected += [names.index(tag)] + [-100] * (n - 1)
    expected += [-100]  # [SEP]
    assert batch["labels"][0].tolist() == expected
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id and len(ids) == sum(pieces) + 2
    assert batch["word_labels"][0].tolist() == [names.index(t) for t in tags]


@pytest.mark.parametrize("word, shape", [
    ("paris", "lower"), ("Paris", "Title"), ("A", "Title"), ("PARIS", "UPPER"), ("U.S.", "UPPER"),
    ("iPhone", "miXed"), ("McDonald", "miXed"), ("1984", "uncased"), ("--", "uncased"), ("東京", "uncased"),
    ("Éric", "Title"), ("mid-1990s", "lower")])
def test_word_shape(word, shape):
    assert WORD_SHAPES[word_shape(word)] == shape


def test_every_sub_token_carries_its_words_shape(tokenizer):
    words = ["Kim", "walked", "towards", "NEW", "delhi"]
    data = encode_sentences([TaggedSentence(words, ["O"] * 5, "x:1"), TaggedSentence(["joe"], ["O"], "x:2")],
                            tokenizer, ["O"], max_len=64)
    pieces = [len(tokenizer.tokenizer.encode(w, add_special_tokens=False).ids) for w in words]
    batch = collate_tagging(data, [0, 1])
    shape = {name: i for i, name in enumerate(WORD_SHAPES)}
    expected = [0]  # [CLS]
    for word, n in zip(words, pieces):
        expected += [word_shape(word)] * n
    expected += [0]  # [SEP]
    assert batch["case_ids"][0].tolist() == expected
    assert expected[1] == shape["Title"] and shape["UPPER"] in expected
    # The short sentence is padded with shape 0, like its [CLS] and [SEP].
    assert batch["case_ids"][1].tolist() == [0, *[shape["lower"]] * (len(data.input_ids[1]) - 2), 0] + \
        [0] * (batch["input_ids"].shape[1] - len(data.input_ids[1]))


def test_truncation_keeps_every_gold_word_for_scoring(tokenizer):
    words, tags = ["kim", "walked", "towards", "paris"], ["B-PER", "O", "O", "B-LOC"]
    names = ["O", "B-LOC", "B-PER"]
    data = encode_sentences([TaggedSentence(words, tags, "x:1"), TaggedSentence(["joe"], ["B-PER"], "x:3")],
                            tokenizer, names, max_len=4)
    batch = collate_tagging(data, [0, 1])
    assert batch["input_ids"].shape[1] == 4
    assert batch["word_labels"][0].tolist() == [2, 0, 0, 1]  # all four words, though few fit
    assert batch["word_labels"][1].tolist() == [2, -100, -100, -100]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(ids) for ids in data.input_ids]
    # Words lost to truncation are predicted "O": here "paris" is a missed entity.
    objective = TokenClassificationObjective(names)
    always_per = torch.full_like(batch["input_ids"], 2)
    gold, predicted = objective.word_tags(always_per, batch["label_word"], batch["word_labels"])
    assert gold == [tags, ["B-PER"]]
    assert predicted[0][-1] == "O" and predicted[1] == ["B-PER"]


def test_bytebpe_words_are_encoded_as_in_running_text():
    texts = [" ".join(words) for words, _ in tagged_sentences(100, seed=0)]
    bpe = train_tokenizer(texts, TokenizerConfig(kind="bytebpe", vocab_size=300, min_frequency=1))
    words = ["kim", "walked", "towards", "paris"]
    data = encode_sentences([TaggedSentence(words, ["B-PER", "O", "O", "B-LOC"], "x:1")], bpe,
                            ["O", "B-LOC", "B-PER"], max_len=32)
    assert data.input_ids[0][1:-1] == bpe.encode_batch([" ".join(words)])[0]


def test_loader_resumes_where_it_stopped(tokenizer):
    sentences = [TaggedSentence(w, t, "x:1") for w, t in tagged_sentences(20, seed=1)]
    data = encode_sentences(sentences, tokenizer, infer_tag_names(sentences), max_len=32)
    loader = TaggingLoader(data, batch_size=4, seed=0)
    next(loader)
    state = loader.state_dict()
    expected = next(loader)
    again = TaggingLoader(data, batch_size=4, seed=0)
    again.load_state_dict(state)
    assert torch.equal(next(again)["labels"], expected["labels"])
    assert sum(len(b["word_labels"]) for b in iterate_tagging_once(data, 6)) == 20


# ---------------------------------------------------------------- head and objective


def test_token_classifier_shapes_and_transfer_surface(make_model):
    model = TokenClassifier(make_model("bert"), num_labels=5, dropout=0.0)
    batch = {"input_ids": torch.randint(5, 61, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.bool)}
    assert model(batch).shape == (3, 7, 5)
    assert model.layer_id("head.weight") == model.backbone.n_layers + 1
    assert model.d_model == 32 and model.config is model.backbone.config
    grouped = sum(len(g["params"]) for g in model.param_groups(0.01))
    # every trainable parameter; the [CLS] pooler (a tagger never reads it) is frozen
    assert grouped == len([p for p in model.parameters() if p.requires_grad]) == len(list(model.parameters())) - 2

    objective = TokenClassificationObjective(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    labels = torch.full((3, 7), -100)
    labels[:, 1:4] = torch.tensor([1, 2, 0])
    out = objective(model, {**batch, "labels": labels})
    assert out["loss"].ndim == 0 and out["loss"] > 0 and 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert model.head.weight.grad is not None


def test_case_features_start_from_the_backbone_outputs(make_model):
    plain = TokenClassifier(make_model("bert"), num_labels=3, dropout=0.0).eval()
    cased = TokenClassifier(make_model("bert"), num_labels=3, dropout=0.0, case_features=True).eval()
    cased.load_state_dict({**plain.state_dict(), "case_embeddings.weight": cased.case_embeddings.weight}, strict=True)
    batch = {"input_ids": torch.randint(5, 61, (2, 6)), "case_ids": torch.randint(0, len(WORD_SHAPES), (2, 6))}
    # Zero-initialised: the same outputs as without case features, until the vectors learn.
    torch.testing.assert_close(cased(batch), plain(batch))
    with torch.no_grad():
        cased.case_embeddings.weight.normal_()
    assert not torch.allclose(cased(batch), plain(batch))


# ---------------------------------------------------------------- end to end


def ner_config(tmp_path, tokenizer, train, dev, *extra):
    tokenizer.save(tmp_path / "tok")
    return load_config(None, [
        f'--run.dir="{tmp_path / "run"}"', f'--tokenizer.path="{tmp_path / "tok"}"', '--model.name="bert"',
        "--model.n_layers=2", "--model.d_model=32", "--model.n_heads=2", "--model.max_len=64",
        '--finetune.task="tokens"', '--finetune.data.format="conll"', f'--finetune.data.train="{train}"',
        f'--finetune.data.dev="{dev}"', "--finetune.max_len=48", "--finetune.train.batch_size=16",
        "--finetune.train.eval_every=0", "--finetune.train.log_every=0", '--impl.device="cpu"',
        "--impl.threads=1", "--impl.progress=false", *extra])


def test_finetune_tokens_writes_results(tmp_path, tokenizer):
    train = write_conll(tmp_path / "train.txt", tagged_sentences(40, seed=1), prefix="en:")
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(10, seed=2), prefix="en:")
    cfg = ner_config(tmp_path, tokenizer, train, dev, '--finetune.data.token_prefix="en:"',
                     "--finetune.train.epochs=0", "--finetune.train.max_steps=3", "--finetune.n_labels=20")
    results = finetune(cfg, **QUIET)
    assert results["steps"] == 3 and results["n_labels"] == 20
    assert results["labels"] == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC"]
    saved = json.loads((tmp_path / "run" / "finetune" / "results.json").read_text())
    dev_metrics = saved["dev"]
    assert 0.0 <= dev_metrics["f1"] <= 1.0 and 0.0 <= dev_metrics["accuracy"] <= 1.0
    assert dev_metrics["macro_f1"] == dev_metrics["f1"]
    assert set(dev_metrics["per_type"]) <= {"PER", "LOC", "ORG"}
    # The run directory loads back as a tagger, like any run (model.json + weights).
    from pretrainer.api import load_run
    from pretrainer.models.heads import TokenClassifier

    model, _ = load_run(tmp_path / "run" / "finetune")
    assert isinstance(model, TokenClassifier) and model.num_labels == 5


def test_finetune_tokens_learns_a_simple_tagging_task(tmp_path, tokenizer):
    # Entity words are multi-piece and follow a varying number of filler pieces, so labels
    # put on the wrong sub-tokens would not be learnable, nor read back at the right words.
    train = write_conll(tmp_path / "train.txt", tagged_sentences(300, seed=1))
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(40, seed=2))
    cfg = ner_config(tmp_path, tokenizer, train, dev, "--finetune.train.epochs=0",
                     "--finetune.train.max_steps=60", "--finetune.train.lr=3e-3",
                     "--finetune.train.warmup=0.1", "--finetune.classifier_dropout=0.0")
    results = finetune(cfg, **QUIET)
    assert results["dev"]["f1"] > 0.9, results["dev"]


def test_crf_tagger_learns_and_reloads_with_its_constraints(tmp_path, tokenizer):
    from pretrainer.api import load_run
    from pretrainer.data.conll import iterate_tagging_once, read_conll

    train = write_conll(tmp_path / "train.txt", tagged_sentences(300, seed=1))
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(40, seed=2))
    cfg = ner_config(tmp_path, tokenizer, train, dev, "--finetune.train.epochs=0",
                     "--finetune.train.max_steps=60", "--finetune.train.lr=3e-3",
                     "--finetune.train.warmup=0.1", "--finetune.classifier_dropout=0.0", "--finetune.crf=true")
    results = finetune(cfg, **QUIET)
    assert results["dev"]["f1"] > 0.9, results["dev"]

    model, _ = load_run(tmp_path / "run" / "finetune")
    labels = results["labels"]
    assert model.crf is not None and model.crf.transitions.abs().sum() > 0  # trained, and saved
    assert not model.crf.allowed[labels.index("O"), labels.index("I-LOC")]  # the constraints came back too
    dev_set = encode_sentences(read_conll(str(dev)), tokenizer, labels, max_len=48)
    again = TokenClassificationObjective(labels).evaluate(model, iterate_tagging_once(dev_set, 16))
    assert again["f1"] == pytest.approx(results["dev"]["f1"])


def test_crf_never_opens_an_entity_with_i_where_the_argmax_does(make_model):
    # Scores that favour I-LOC word by word: the per-token argmax opens entities with it;
    # Viterbi under the IOB2 constraints never does.
    from pretrainer.objectives.token_classification import _loss_and_predictions

    names = ["O", "B-LOC", "I-LOC"]
    tagger = TokenClassifier(make_model("bert"), num_labels=3, crf=True)
    tagger.crf.restrict_to_iob2(names)
    torch.manual_seed(0)
    logits = torch.randn(8, 12, 3) * 3
    logits[..., 2] += 2.0  # I-LOC favoured word by word
    labels = torch.zeros(8, 12, dtype=torch.long)
    labels[:, 0] = labels[:, -1] = -100  # [CLS] and [SEP]
    plain = logits.argmax(dim=-1)
    _, viterbi = _loss_and_predictions(tagger, logits, labels)
    ill_formed = lambda tags: any(  # noqa: E731
        t == 2 and (i == 1 or tags[i - 1] == 0) for i, t in enumerate(tags) if 1 <= i <= 10)
    assert any(ill_formed(row) for row in plain.tolist())
    assert not any(ill_formed(row) for row in viterbi.tolist())


def capitalised_names(n, seed):
    """Tags only capitalisation tells apart: "Kim" is a name, "kim" a word (an uncased
    tokenizer sees the two the same)."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 5)):
            name = rng.random() < 0.5
            word = rng.choice(["kim", "joe", "paris", "zenith"])
            words.append(word.capitalize() if name else word)
            tags.append("B-PER" if name else "O")
        sentences.append((words, tags))
    return sentences


def test_case_features_recover_what_an_uncased_tokenizer_drops(tmp_path, tokenizer):
    train = write_conll(tmp_path / "train.txt", capitalised_names(300, seed=1))
    dev = write_conll(tmp_path / "dev.txt", capitalised_names(40, seed=2))
    f1 = {}
    for case_features in (False, True):
        cfg = ner_config(tmp_path, tokenizer, train, dev, "--finetune.train.epochs=0",
                         "--finetune.train.max_steps=60", "--finetune.train.lr=3e-3",
                         "--finetune.classifier_dropout=0.0",
                         f"--finetune.case_features={str(case_features).lower()}",
                         f'--finetune.dir="{tmp_path / f"run-{case_features}"}"')
        f1[case_features] = finetune(cfg, **QUIET)["dev"]["f1"]
    assert f1[True] > 0.95 and f1[False] < 0.7, f1
    from pretrainer.api import load_run

    model, _ = load_run(tmp_path / "run-True")  # the run rebuilds with its case vectors
    assert model.case_embeddings is not None and model.case_embeddings.weight.abs().sum() > 0


def test_case_features_are_refused_where_they_do_not_apply(tmp_path, tokenizer, make_model):
    cfg = load_config(None, ['--finetune.data.train="x.tsv"', "--finetune.case_features=true"])
    with pytest.raises(PretrainerError, match="finetune.case_features"):
        check_finetune_config(cfg)
    with pytest.raises(PretrainerError, match="BERT-style encoder"):
        TokenClassifier(make_model("gpt"), num_labels=3, case_features=True)


def build_tagger(ft, backbone, num_labels):
    """The tagger a fine-tuning run with `ft` trains: its method checked against the tokens task,
    then built on it."""
    task = TASKS.get("tokens")()
    method = TRANSFER_METHODS.get(ft.method)(dataclasses.replace(Config(), finetune=ft))
    method.check(task)
    return method.build(task, backbone, None, [f"tag{i}" for i in range(num_labels)], log=lambda *_: None)


@pytest.mark.parametrize("method", ["full", "freeze", "llrd", "lora"])
def test_tagger_for_each_transfer_method(make_model, method):
    ft = dataclasses.replace(Config().finetune, method=method, freeze_layers=1, layer_decay=0.5, case_features=True,
                             crf=True, crf_lr=0.05)
    model = build_tagger(ft, make_model("bert"), num_labels=3)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias", "case_embeddings.weight", "crf.transitions"} <= trainable
    # The CRF trains at its own rate, in a group of its own; every trainable tensor is in one group.
    groups = model.param_groups(0.01)
    assert groups[-1]["lr"] == 0.05 and set(map(id, groups[-1]["params"])) == set(map(id, model.crf.parameters()))
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    if method == "freeze":
        assert not any(name.startswith("backbone.embeddings.") for name in trainable)
    if method == "lora":
        assert all(name.startswith(("head.", "case_embeddings.", "crf.")) or "lora_" in name for name in trainable)
    if method == "llrd":
        scales = [g["lr_scale"] for g in groups if "lr_scale" in g]
        # The head trains at the full rate, the embeddings (depth 0) at decay ** (n_layers + 1).
        assert max(scales) == 1.0 and min(scales) == pytest.approx(0.5 ** (model.backbone.n_layers + 1))


@pytest.mark.parametrize("method", ["probe", "cloze", "soft_prompt"])
def test_methods_without_a_tagger_variant_are_refused(make_model, method):

    cfg = load_config(None, ['--finetune.data.train="x.conll"', '--finetune.task="tokens"', f'--finetune.method="{method}"'])
    with pytest.raises(PretrainerError, match="finetune.method"):
        check_finetune_config(cfg)
    with pytest.raises(PretrainerError, match="choose full, freeze, llrd, lora"):
        build_tagger(cfg.finetune, make_model("bert"), num_labels=3)
