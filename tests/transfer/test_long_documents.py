"""Long documents in fine-tuning, evaluation and prediction: chunks encoded in one backbone call
pool to what encoding them one at a time gives; a chunked run trains, evaluates, and `predict`
answers as evaluation scored; settings that cannot apply are one-line errors naming the key."""

import dataclasses
import json
import random

import pytest
import torch

from pretrainer.cli.main import main
from pretrainer.config import TokenizerConfig, load_config
from pretrainer.data.long_documents import LongDocuments, encode_long_examples
from pretrainer.data.readers import LabeledExamples
from pretrainer.data.tokenizer import train_tokenizer
from pretrainer.errors import PretrainerError
from pretrainer.models import SequenceClassifier, build_model
from pretrainer.models.layers import pool_chunks
from pretrainer.predict import predict_file
from pretrainer.registry import TRANSFER_METHODS
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned, rebuild

QUIET = dict(log=lambda *_: None)
SENTENCES = ["the cat sat on a mat", "a dog ran under the tree", "good and bad reviews"]
FILLER = "bad fine poor great awful nice dull".split()


def long_rows(n: int, seed: int) -> list[dict]:
    """Reviews of 20-40 words whose label is whether "good" occurs, placed anywhere: past the
    first chunk as often as not, so a model must read the whole text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(FILLER, k=rng.randint(20, 40))
        if i % 2:
            words[rng.randrange(len(words))] = "good"
        rows.append({"text": " ".join(words), "label": str(i % 2)})
    return rows


@pytest.fixture(scope="module")
def wordpiece():
    return train_tokenizer(SENTENCES * 10, TokenizerConfig(kind="wordpiece", vocab_size=80, min_frequency=1))


@pytest.mark.parametrize("name,pooling", [("bert", "mean"), ("bert", "cls"), ("gpt", "cls")])
@pytest.mark.parametrize("chunk_pooling", ["mean", "max"])
def test_batched_chunks_pool_to_the_chunks_encoded_one_at_a_time(make_model, wordpiece, name, pooling,
                                                                 chunk_pooling):
    torch.manual_seed(0)
    backbone = make_model(name, vocab_size=wordpiece.vocab_size)
    model = SequenceClassifier(backbone, 2, pooling=pooling, dropout=0.0, chunk_pooling=chunk_pooling).eval()
    texts = [" ".join(["the cat sat on a mat"] * k) for k in (1, 7, 3)] + ["a dog"]
    examples = LabeledExamples(texts=texts, pairs=None, labels=["0"] * 4, source="t", line_numbers=[1, 2, 3, 4])
    long = LongDocuments(chunk_pooling=chunk_pooling, chunk_overlap=2, max_chunks=0)
    data = encode_long_examples(examples, wordpiece, ["0", "1"], 10, long)
    assert max(len(c) for c in data.chunk_lengths) > 2  # documents of several chunks, of unequal lengths

    batch = data.batch(range(4))
    with torch.no_grad():
        hidden = backbone(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        batched = pool_chunks(backbone.pooled(hidden, batch["attention_mask"], pooling), batch["chunk_doc"],
                              chunk_pooling)  # (4, C)
        logits = model(batch)
        alone = []
        for doc in range(4):
            one = data.batch([doc])  # this document's chunks, each then encoded by itself: no padding
            vectors = []
            for row, mask in zip(one["input_ids"], one["attention_mask"]):
                x = row[mask].unsqueeze(0)
                h = backbone(x, torch.ones_like(x, dtype=torch.bool), torch.zeros_like(x))
                vectors.append(backbone.pooled(h, torch.ones_like(x, dtype=torch.bool), pooling)[0])
            stacked = torch.stack(vectors)
            alone.append(stacked.mean(0) if chunk_pooling == "mean" else stacked.max(0).values)
        alone = torch.stack(alone)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model.head(alone), atol=1e-5, rtol=1e-5)


def test_chunk_pooling_gradients_reach_every_chunk():
    vectors = torch.randn(5, 4, requires_grad=True)
    owner = torch.tensor([0, 0, 1, 1, 1])
    pool_chunks(vectors, owner, "mean").sum().backward()
    torch.testing.assert_close(vectors.grad, torch.tensor([[0.5] * 4] * 2 + [[1 / 3] * 4] * 3))


@pytest.fixture(scope="module")
def long_task(tmp_path_factory, tiny_transfer_task):
    """A tiny pre-trained BERT and long reviews: max_len 10 reads 8 pieces a chunk."""
    tmp = tmp_path_factory.mktemp("long")
    cfg = tiny_transfer_task(tmp, long_rows(40, seed=0), "--tokenizer.vocab_size=120", "--finetune.max_len=10",
                             "--finetune.chunk_pooling=mean", "--finetune.chunk_overlap=2",
                             "--finetune.max_chunks=4", "--finetune.train.batch_size=8")
    return cfg, tmp


@pytest.fixture(scope="module")
def chunked_run(long_task):
    cfg, tmp = long_task
    run_dir = tmp / "full"
    results = finetune(dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, dir=str(run_dir))), **QUIET)
    return run_dir, results


def test_chunked_fine_tune_trains_evaluates_and_predict_reproduces_evaluate(long_task, chunked_run):
    cfg, tmp = long_task
    run_dir, results = chunked_run

    cost = results["encoded"]["dev"]
    assert results["encoded"]["chunk_pooling"] == "mean"
    assert 1 < cost["chunks_per_document"] <= 4 and cost["most_chunks"] == 4
    assert cost["tokens_per_document"] > 10  # more than one input's worth per review
    assert results["steps"] > 0 and 0 <= results["dev"]["accuracy"] <= 1

    # The run remembers how it reads long texts: a config without those keys scores it the same.
    plain = dataclasses.replace(cfg, finetune=dataclasses.replace(
        cfg.finetune, dir=str(run_dir), chunk_pooling="none", chunk_overlap=0, max_chunks=8))
    scored = evaluate_finetuned(plain, **QUIET)["dev"]
    assert scored["accuracy"] == pytest.approx(results["dev"]["accuracy"], abs=1e-9)
    assert scored["loss"] == pytest.approx(results["dev"]["loss"], abs=1e-6)
    assert scored["encoded"]["chunks_per_document"] == cost["chunks_per_document"]
    # ... and so does `pretrainer evaluate RUN_DIR --finetuned`, from the run's directory alone.
    assert main(["evaluate", str(run_dir), "--finetuned"]) == 0
    from_cli = json.loads((run_dir / "evaluation.json").read_text())["dev"]
    assert from_cli["accuracy"] == pytest.approx(results["dev"]["accuracy"], abs=1e-9)
    assert from_cli["encoded"]["chunk_pooling"] == "mean"

    # predict: the same logits, example by example, as the evaluation batches give.
    model, tokenizer, task, method = rebuild(run_dir, results["labels"], plain, QUIET["log"])
    encode = method.encoder(task, tokenizer, method.input_length(model.backbone))
    dataset = task.read_evaluation_file(cfg.finetune.data.dev, cfg.finetune.data, encode, results["labels"])
    with torch.no_grad():
        expected = torch.softmax(model(dataset.batch(range(len(dataset)))), -1)
    out = tmp / "predictions.jsonl"
    predict_file(run_dir, cfg.finetune.data.dev, out, batch_size=7, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    got = torch.tensor([[row["probabilities"][name] for name in results["labels"]] for row in rows])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    gold = [json.loads(line)["label"] for line in open(cfg.finetune.data.dev)]
    accuracy = sum(row["label"] == g for row, g in zip(rows, gold)) / len(gold)
    assert accuracy == pytest.approx(results["dev"]["accuracy"])


def test_an_int8_chunked_run_predicts_and_scores_through_chunks_and_onnx_refuses(long_task, chunked_run):
    from pretrainer.compress import quantize

    cfg, tmp = long_task
    run_dir, results = chunked_run
    out = tmp / "int8"
    quantized = quantize(load_config(None, [f'--quantize.init="{run_dir}"', f'--quantize.dir="{out}"',
                                            "--quantize.check_examples=8"]), **QUIET)
    assert quantized["dev"]["accuracy"] == pytest.approx(results["dev"]["accuracy"], abs=0.1)
    predict_file(out, cfg.finetune.data.dev, tmp / "int8.jsonl", progress=False)
    gold = [json.loads(line)["label"] for line in open(cfg.finetune.data.dev)]
    rows = [json.loads(line) for line in (tmp / "int8.jsonl").read_text().splitlines()]
    # predict and quantize's own scoring read the reviews the same way, through the same forward.
    accuracy = sum(r["label"] == g for r, g in zip(rows, gold)) / len(gold)
    assert accuracy == pytest.approx(quantized["dev"]["accuracy"])
    with pytest.raises(PretrainerError, match=r"quantize\.format") as e:
        quantize(load_config(None, [f'--quantize.init="{run_dir}"', f'--quantize.dir="{tmp / "onnx"}"',
                                    "--quantize.format=onnx"]), **QUIET)
    assert "\n" not in str(e.value) and not (tmp / "onnx").exists()


CHUNKING_METHODS = [m for m in TRANSFER_METHODS if "classification" in TRANSFER_METHODS.get(m).tasks
                    and TRANSFER_METHODS.get(m).long_documents]


@pytest.mark.parametrize("method", CHUNKING_METHODS)
@pytest.mark.parametrize("how", [{"chunk_pooling": "max"}, {"chunk_pooling": "none", "truncation": "head_tail"}])
def test_every_method_reads_long_documents_and_its_run_scores_the_same(long_task, method, how):
    cfg, tmp = long_task
    run_dir = tmp / f"{method}-{how['chunk_pooling']}"
    prompt = dataclasses.replace(cfg.finetune.prompt, soft_tokens=4)
    ft = dataclasses.replace(cfg.finetune, method=method, dir=str(run_dir), prompt=prompt, **how)
    results = finetune(dataclasses.replace(cfg, finetune=ft), **QUIET)
    expected_chunks = 1 if how["chunk_pooling"] == "none" else results["encoded"]["dev"]["chunks_per_document"]
    assert results["encoded"]["dev"]["chunks_per_document"] == expected_chunks
    if not TRANSFER_METHODS.get(method).rescorable:  # kNN is scored once, as it runs
        return
    plain = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, dir=str(run_dir)))
    scored = evaluate_finetuned(plain, **QUIET)["dev"]
    assert scored["accuracy"] == pytest.approx(results["dev"]["accuracy"], abs=1e-9)
    assert scored["loss"] == pytest.approx(results["dev"]["loss"], abs=1e-5)


def test_head_tail_run_predicts_what_it_evaluated(long_task):
    cfg, tmp = long_task
    run_dir = tmp / "head-tail-predict"
    ft = dataclasses.replace(cfg.finetune, dir=str(run_dir), chunk_pooling="none", truncation="head_tail",
                             head_tokens=3)
    results = finetune(dataclasses.replace(cfg, finetune=ft), **QUIET)
    assert results["encoded"]["dev"]["pieces_kept_per_document"] == 8  # every review is longer than 8 pieces
    out = tmp / "head-tail.jsonl"
    predict_file(run_dir, cfg.finetune.data.dev, out, progress=False)
    gold = [json.loads(line)["label"] for line in open(cfg.finetune.data.dev)]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["label"] == g for r, g in zip(rows, gold)) / len(gold) == pytest.approx(results["dev"]["accuracy"])


@pytest.mark.parametrize("overrides,key", [
    (["--finetune.head_tokens=-1"], "finetune.head_tokens"),
    (["--finetune.truncation=head_tail", "--finetune.head_tokens=126", "--finetune.max_len=128"],
     "finetune.head_tokens"),
    (["--finetune.truncation=head_tail", "--finetune.head_tokens=200", "--finetune.max_len=128"],
     "finetune.head_tokens"),
    (["--finetune.chunk_pooling=mean", "--finetune.chunk_overlap=8", "--finetune.max_len=10"],
     "finetune.chunk_overlap"),
    (["--finetune.truncation=middle"], "finetune.truncation"),
    (["--finetune.chunk_pooling=sum"], "finetune.chunk_pooling"),
    (["--finetune.max_chunks=-2"], "finetune.max_chunks"),
])
def test_bad_long_document_keys_are_one_line_errors(overrides, key):
    with pytest.raises(PretrainerError, match=key.replace(".", r"\.")) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("task,method,key", [("tokens", "full", "finetune.chunk_pooling"),
                                             ("classification", "cloze", "finetune.chunk_pooling"),
                                             ("classification", "cloze_zero_shot", "finetune.chunk_pooling")])
def test_chunking_where_it_cannot_apply_is_refused_naming_the_key(long_task, task, method, key):
    cfg, tmp = long_task
    ft = dataclasses.replace(cfg.finetune, task=task, method=method, dir=str(tmp / "refused"),
                             data=dataclasses.replace(cfg.finetune.data, format="conll" if task == "tokens" else "auto"))
    with pytest.raises(PretrainerError, match=key.replace(".", r"\.")) as e:
        finetune(dataclasses.replace(cfg, finetune=ft), **QUIET)
    assert "\n" not in str(e.value)
    assert not (tmp / "refused").exists()


def test_a_tagger_refuses_tail_truncation(long_task):
    cfg, tmp = long_task
    ft = dataclasses.replace(cfg.finetune, task="tokens", chunk_pooling="none", truncation="tail",
                             dir=str(tmp / "refused-tagger"), data=dataclasses.replace(cfg.finetune.data, format="conll"))
    with pytest.raises(PretrainerError, match=r"finetune\.truncation"):
        finetune(dataclasses.replace(cfg, finetune=ft), **QUIET)
