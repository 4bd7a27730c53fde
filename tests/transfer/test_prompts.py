"""Cloze (PET-style) and soft-prompt classification on a tiny BERT and a tiny WordPiece tokenizer."""

from __future__ import annotations

import pytest
import torch

from pretrainer.config import TokenizerConfig
from pretrainer.data.labeled import ClassificationLoader, collate, encode_examples, iterate_once
from pretrainer.data.readers import LabeledExamples
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.models.encoder import BertConfig, BertModel
from pretrainer.objectives.classification import ClassificationObjective
from pretrainer.transfer.prompts import (ClozeClassifier, SoftPromptClassifier, content_free_batch,
                                         encode_cloze_examples, verbalizer_token_ids)

TEMPLATE = "{text} it was {mask} ."
LABELS = ["neg", "pos"]
VERBALIZER = ["terrible", "great"]
CORPUS = ["the movie was great and the plot was good",
          "the film was terrible and the acting was bad",
          "it was a long night at the river",
          "a small bird sang over the green tree"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, TokenizerConfig(kind="wordpiece", vocab_size=150, min_frequency=1))


def make_backbone(tokenizer, max_len: int = 32) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, n_layers=2, d_model=32, n_heads=2, max_len=max_len,
                     dropout=0.0, attn_dropout=0.0)
    return BertModel(cfg).eval()


def examples(texts, labels, pairs=None) -> LabeledExamples:
    return LabeledExamples(texts=list(texts), pairs=pairs, labels=list(labels), source="toy.tsv",
                           line_numbers=list(range(1, len(labels) + 1)))


TOY = examples(["the plot was good", "the movie was bad", "a green tree", "the acting was terrible"],
               ["pos", "neg", "pos", "neg"])


def cloze_model(tokenizer, backbone=None) -> ClozeClassifier:
    ids = verbalizer_token_ids(tokenizer, VERBALIZER, LABELS)
    return ClozeClassifier(backbone or make_backbone(tokenizer), ids, tokenizer.mask_id)


def test_cloze_encoding_fills_the_template(tokenizer):
    data = encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, max_len=32)
    ids = data.input_ids[0]
    assert ids == [tokenizer.cls_id, *tokenizer.encode_batch(["the plot was good it was"])[0],
                   tokenizer.mask_id, *tokenizer.encode_batch(["."])[0], tokenizer.sep_id]
    assert data.labels == [1, 0, 1, 0]
    assert all(len(t) == len(i) and not any(t) for t, i in zip(data.token_type_ids, data.input_ids))


def test_mask_survives_truncation_of_a_long_text(tokenizer):
    long_text = " ".join(["the movie was great and the plot was good"] * 10)
    for template in (TEMPLATE, "{mask} : {text}"):
        data = encode_cloze_examples(examples([long_text], ["pos"]), tokenizer, LABELS, template, max_len=16)
        ids = data.input_ids[0]
        assert len(ids) == 16 and ids.count(tokenizer.mask_id) == 1
        assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
    tail = tokenizer.encode_batch(["it was"])[0] + [tokenizer.mask_id] + tokenizer.encode_batch(["."])[0]
    data = encode_cloze_examples(examples([long_text], ["pos"]), tokenizer, LABELS, TEMPLATE, max_len=16)
    assert data.input_ids[0][-len(tail) - 1:-1] == tail


def test_a_literal_mask_in_the_text_does_not_add_a_second_mask(tokenizer):
    data = encode_cloze_examples(examples(["the [MASK] was good"], ["pos"]), tokenizer, LABELS, TEMPLATE, 32)
    assert data.input_ids[0].count(tokenizer.mask_id) == 1


def test_pairs_fill_the_pair_slot_and_templates_are_checked(tokenizer):
    pairs = examples(["the plot was good"], ["pos"], pairs=["the movie was great"])
    data = encode_cloze_examples(pairs, tokenizer, LABELS, "{text} ? {mask} , {pair}", max_len=32)
    assert data.input_ids[0].count(tokenizer.mask_id) == 1
    with pytest.raises(PretrainerError, match="finetune.prompt.template"):
        encode_cloze_examples(pairs, tokenizer, LABELS, TEMPLATE, max_len=32)
    with pytest.raises(PretrainerError, match="finetune.prompt.template"):
        encode_cloze_examples(TOY, tokenizer, LABELS, "{text} it was good .", max_len=32)
    with pytest.raises(PretrainerError, match="finetune.max_len"):
        encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, max_len=6)


def test_verbalizer_words_must_be_single_tokens(tokenizer):
    ids = verbalizer_token_ids(tokenizer, ["Terrible", "GREAT"], LABELS)  # lowercased like any text
    assert ids == [tokenizer.token_to_id("terrible"), tokenizer.token_to_id("great")]
    assert len(tokenizer.encode_batch(["greater"])[0]) == 2
    with pytest.raises(PretrainerError, match=r"finetune\.prompt\.verbalizer.*'greater'.*\['great', '##er'\]"):
        verbalizer_token_ids(tokenizer, ["terrible", "greater"], LABELS)
    with pytest.raises(PretrainerError, match=r"finetune\.prompt\.verbalizer.*\[UNK\]"):
        verbalizer_token_ids(tokenizer, ["terrible", "zzz"], LABELS)
    with pytest.raises(PretrainerError, match="finetune.prompt.verbalizer.*3 words for 2 labels"):
        verbalizer_token_ids(tokenizer, ["terrible", "great", "good"], LABELS)
    with pytest.raises(PretrainerError, match="finetune.prompt.verbalizer"):
        verbalizer_token_ids(tokenizer, ["great", "great"], LABELS)


def test_cloze_logits_are_the_mlm_logits_of_the_verbalizer_at_the_mask(tokenizer):
    model = cloze_model(tokenizer)
    batch = collate(encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, 32), range(len(TOY)))
    logits = model(batch)
    assert logits.shape == (len(TOY), 2)
    backbone = model.backbone
    hidden = backbone(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    ids = verbalizer_token_ids(tokenizer, VERBALIZER, LABELS)
    for row in range(len(TOY)):
        position = int((batch["input_ids"][row] == tokenizer.mask_id).nonzero())
        expected = backbone.lm_logits(hidden[row, position])[ids]
        torch.testing.assert_close(logits[row], expected)


def test_cloze_predicts_the_verbalizer_with_the_highest_mlm_score(tokenizer):
    model = cloze_model(tokenizer)
    data = encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, 32)
    great, terrible = tokenizer.token_to_id("great"), tokenizer.token_to_id("terrible")
    objective = ClassificationObjective(len(LABELS))
    with torch.no_grad():
        model.backbone.mlm_head.bias[great] = 100.0
    assert model(collate(data, range(len(TOY)))).argmax(-1).tolist() == [1] * len(TOY)
    assert objective.evaluate(model, iterate_once(data, 3))["accuracy"] == pytest.approx(0.5)  # zero-shot
    with torch.no_grad():
        model.backbone.mlm_head.bias[terrible] = 200.0
    assert model(collate(data, range(len(TOY)))).argmax(-1).tolist() == [0] * len(TOY)


def test_calibration_undoes_a_head_that_prefers_one_word(tokenizer):
    model = cloze_model(tokenizer)
    batch = collate(encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, 32), range(len(TOY)))
    with torch.no_grad():
        model.backbone.mlm_head.bias[tokenizer.token_to_id("great")] = 100.0  # "great" wins everywhere
    raw = model(batch)
    empty = content_free_batch(tokenizer, LABELS, TEMPLATE, has_pairs=False)
    assert empty["input_ids"][0].tolist() == [tokenizer.cls_id, *tokenizer.encode_batch(["it was"])[0],
                                              tokenizer.mask_id, *tokenizer.encode_batch(["."])[0], tokenizer.sep_id]
    bias = model.calibrate(empty)
    # The content-free input now scores both labels alike, and every row moves by the same bias.
    torch.testing.assert_close(model(empty).softmax(-1)[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(model(batch), raw - bias)
    assert float(bias[1] - bias[0]) > 50  # the bias removed is the head's preference for "great"
    assert "label_bias" not in model.state_dict()


def test_cloze_rejects_rows_without_a_mask(tokenizer):
    model = cloze_model(tokenizer)
    plain = encode_examples(TOY, tokenizer, LABELS, max_len=32)
    with pytest.raises(ValueError, match=r"exactly one \[MASK\]"):
        model(collate(plain, range(len(TOY))))


def train_steps(model, objective, optimizer, batches, steps: int) -> None:
    for _ in range(steps):
        loss = objective(model, next(batches))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_few_shot_cloze_fine_tuning_lowers_the_loss(tokenizer):
    model = cloze_model(tokenizer).train()
    data = encode_cloze_examples(TOY, tokenizer, LABELS, TEMPLATE, 32)
    objective = ClassificationObjective(len(LABELS))
    before = objective.evaluate(model, iterate_once(data, 4))["loss"]
    optimizer = torch.optim.AdamW(model.param_groups(0.01), lr=3e-3)
    train_steps(model, objective, optimizer, ClassificationLoader(data, batch_size=4, seed=0), 30)
    after = objective.evaluate(model, iterate_once(data, 4))["loss"]
    assert after < 0.5 * before


def test_inputs_embeds_matches_input_ids(tokenizer):
    backbone = make_backbone(tokenizer)
    batch = collate(encode_examples(TOY, tokenizer, LABELS, 32), range(len(TOY)))
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    embeds = backbone.embeddings.word_embeddings(ids)
    torch.testing.assert_close(backbone(None, mask, types, inputs_embeds=embeds), backbone(ids, mask, types))
    with pytest.raises(ValueError, match="exactly one"):
        backbone(ids, mask, types, inputs_embeds=embeds)


def test_soft_prompt_trains_only_the_prompt_and_the_head(tokenizer):
    model = SoftPromptClassifier(make_backbone(tokenizer), len(LABELS), soft_tokens=4, dropout=0.0).train()
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt", "head.weight", "head.bias"}
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    prompt, head = model.prompt.detach().clone(), model.head.weight.detach().clone()
    data = encode_examples(TOY, tokenizer, LABELS, max_len=16)
    objective = ClassificationObjective(len(LABELS))
    optimizer = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    train_steps(model, objective, optimizer, ClassificationLoader(data, batch_size=2, seed=0), 3)
    assert all(torch.equal(v, frozen[k]) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(model.prompt, prompt) and not torch.equal(model.head.weight, head)
    assert model.layer_id("prompt") == 0 and model.layer_id("head.weight") == 3


def test_soft_prompt_logits_do_not_depend_on_padding(tokenizer):
    for pooling in ("mean", "cls"):
        model = SoftPromptClassifier(make_backbone(tokenizer), len(LABELS), soft_tokens=3, pooling=pooling)
        model.eval()
        data = encode_examples(TOY, tokenizer, LABELS, max_len=16)
        lengths = [len(ids) for ids in data.input_ids]
        short = lengths.index(min(lengths))
        padded = model(collate(data, range(len(TOY))))  # the short row is padded to the longest
        alone = model(collate(data, [short]))
        torch.testing.assert_close(padded[short], alone[0])


def test_soft_prompt_must_fit_the_position_embeddings(tokenizer):
    model = SoftPromptClassifier(make_backbone(tokenizer, max_len=16), len(LABELS), soft_tokens=8)
    assert model.max_input_len == 8
    long = encode_examples(examples(["the movie was great and the plot was good"], ["pos"]), tokenizer,
                           LABELS, max_len=16)
    with pytest.raises(PretrainerError, match="finetune.max_len.*at most 8"):
        model(collate(long, [0]))
    with pytest.raises(PretrainerError, match="finetune.prompt.soft_tokens"):
        SoftPromptClassifier(make_backbone(tokenizer, max_len=16), len(LABELS), soft_tokens=14)
