"""`pretrainer predict`: every model kind (classifier, tagger, generator, encoder) in every form
(fp32, pruned, int8, ONNX), from txt, jsonl and csv, equal to what the model itself computes."""

import json

import pytest
import torch

from pretrainer import api
from pretrainer.cli.main import main
from pretrainer.compression.prune import prune_heads, prune_neurons
from pretrainer.config import load_config
from pretrainer.data.conll import encode_words
from pretrainer.errors import PretrainerError
from pretrainer.models import SequenceClassifier, TokenClassifier, build_model
from pretrainer.objectives.heads import pretraining_model
from pretrainer.predict import load_predictor, predict_file

TEXTS = ["good fine great", "bad awful dull poor", "kim walked the paris", "nice"]
LABELS = ["neg", "pos", "mixed"]
TAGS = ["O", "B-PER", "B-LOC"]


def perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape) * 0.2)
    return model.eval()


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def quantized(run, fmt, tmp_path):
    from pretrainer.compress import quantize

    out = tmp_path / f"{run.name}-{fmt}"
    quantize(load_config(None, [f'--quantize.init="{run}"', f'--quantize.dir="{out}"', f"--quantize.format={fmt}",
                                "--quantize.check_examples=8"]), log=lambda *_: None)
    return out


@pytest.fixture
def classifier_run(tiny_config, wordpiece_tokenizer, write_run, tmp_path):
    torch.manual_seed(0)
    backbone = build_model(tiny_config("bert", n_heads=4), wordpiece_tokenizer.vocab_size)
    model = perturbed(SequenceClassifier(backbone, 3, pooling="mean", dropout=0.0))
    return model, write_run(tmp_path / "classifier", model, wordpiece_tokenizer, LABELS)


def expected_probs(model, tokenizer, texts):
    ids, types = tokenizer.encode_for_classification(texts, max_len=24)
    out = []
    with torch.no_grad():
        for row, tt in zip(ids, types):  # one at a time: no padding at all
            x = torch.tensor([row])
            logits = model({"input_ids": x, "attention_mask": torch.ones_like(x).bool(),
                            "token_type_ids": torch.tensor([tt])})
            out.append(torch.softmax(logits, -1)[0])
    return torch.stack(out)


def test_classifier_from_txt_jsonl_and_csv(classifier_run, wordpiece_tokenizer, tmp_path):
    model, run = classifier_run
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n\n")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "review": t}) + "\n" for i, t in enumerate(TEXTS)))
    (tmp_path / "in.csv").write_text("text,other\n" + "".join(f'"{t}",x\n' for t in TEXTS))
    expected = expected_probs(model, wordpiece_tokenizer, TEXTS)
    for name, kw in (("in.txt", {}), ("in.jsonl", {"text_field": "review"}), ("in.csv", {})):
        n = predict_file(run, tmp_path / name, tmp_path / f"{name}.out", batch_size=3, progress=False, **kw)
        out = read_lines(tmp_path / f"{name}.out")
        assert n == len(out) == len(TEXTS)
        for row, probs in zip(out, expected):
            assert set(row["probabilities"]) == set(LABELS)
            got = torch.tensor([row["probabilities"][lab] for lab in LABELS])
            torch.testing.assert_close(got, probs, atol=1e-5, rtol=0)  # padding in the batch changes nothing
            assert row["label"] == LABELS[int(probs.argmax())]
    assert [row["id"] for row in read_lines(tmp_path / "in.jsonl.out")] == [0, 1, 2, 3]


def test_pruned_int8_and_onnx_classifiers_predict(classifier_run, wordpiece_tokenizer, write_run, tmp_path):
    pytest.importorskip("onnxruntime")
    model, run = classifier_run
    prune_heads(model, {0: [0, 2], 1: [1]})
    prune_neurons(model, {0: list(range(30))})
    pruned = write_run(tmp_path / "pruned", model, wordpiece_tokenizer, LABELS)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS * 8) + "\n")
    reference = None
    for path in (pruned, quantized(pruned, "torch", tmp_path), quantized(pruned, "onnx", tmp_path)):
        predict_file(path, tmp_path / "in.txt", tmp_path / "out.jsonl", progress=False)
        probs = torch.tensor([[row["probabilities"][lab] for lab in LABELS] for row in read_lines(tmp_path / "out.jsonl")])
        if reference is None:
            reference = probs
            torch.testing.assert_close(probs[:4], expected_probs(model, wordpiece_tokenizer, TEXTS), atol=1e-5, rtol=0)
        assert (probs - reference).abs().max() < 0.05


def test_tagger_tags_every_word(tiny_config, wordpiece_tokenizer, write_run, tmp_path):
    torch.manual_seed(0)
    model = perturbed(TokenClassifier(build_model(tiny_config("bert"), wordpiece_tokenizer.vocab_size), 3,
                                      dropout=0.0, case_features=True))
    run = write_run(tmp_path / "tagger", model, wordpiece_tokenizer, TAGS)
    (tmp_path / "in.jsonl").write_text(json.dumps({"tokens": ["Kim", "walked", "Paris"]}) + "\n"
                                       + json.dumps({"text": "the good  nice"}) + "\n" + json.dumps({"text": ""}) + "\n")
    predict_file(run, tmp_path / "in.jsonl", tmp_path / "out.jsonl", progress=False)
    out = read_lines(tmp_path / "out.jsonl")
    assert [row["words"] for row in out] == [["Kim", "walked", "Paris"], ["the", "good", "nice"], []]
    for row in out[:2]:
        ids, label_word, case_ids = encode_words(wordpiece_tokenizer, [row["words"]], 24)
        x = torch.tensor(ids)
        with torch.no_grad():
            logits = model({"input_ids": x, "attention_mask": torch.ones_like(x).bool(), "case_ids": torch.tensor(case_ids)})
        firsts = [t for t, w in enumerate(label_word[0]) if w >= 0]
        assert row["tags"] == [TAGS[int(logits[0, t].argmax())] for t in firsts]
    pytest.importorskip("onnxruntime")
    for fmt in ("torch", "onnx"):
        predict_file(quantized(run, fmt, tmp_path), tmp_path / "in.jsonl", tmp_path / f"{fmt}.jsonl", progress=False)
        assert [len(r["tags"]) for r in read_lines(tmp_path / f"{fmt}.jsonl")] == [3, 3, 0]


def test_crf_tagger_decodes_and_onnx_refuses_it(tiny_config, wordpiece_tokenizer, write_run, tmp_path):
    torch.manual_seed(0)
    model = perturbed(TokenClassifier(build_model(tiny_config("bert"), wordpiece_tokenizer.vocab_size), 3,
                                      dropout=0.0, crf=True))
    run = write_run(tmp_path / "crf", model, wordpiece_tokenizer, TAGS)
    (tmp_path / "in.txt").write_text("kim walked paris\nthe good\n")
    predict_file(run, tmp_path / "in.txt", tmp_path / "out.jsonl", progress=False)
    assert [len(r["tags"]) for r in read_lines(tmp_path / "out.jsonl")] == [3, 2]
    pytest.importorskip("onnxruntime")
    with pytest.raises(PretrainerError, match="CRF"):
        quantized(run, "onnx", tmp_path)


def test_generator_continues_like_generate(tiny_config, bytebpe_tokenizer, write_run, tmp_path):
    torch.manual_seed(0)
    model = pretraining_model(perturbed(build_model(tiny_config("gpt", max_len=32), bytebpe_tokenizer.vocab_size)), [])
    run = write_run(tmp_path / "gpt", model, bytebpe_tokenizer)
    prompts = ["good fine", "the paris"]
    (tmp_path / "in.txt").write_text("\n".join(prompts) + "\n")
    predict_file(run, tmp_path / "in.txt", tmp_path / "out.jsonl", progress=False, max_new_tokens=6)
    expected = [api.generate(run, p, max_new_tokens=6, greedy=True)[0] for p in prompts]  # prompt + continuation
    assert [p + row["text"] for p, row in zip(prompts, read_lines(tmp_path / "out.jsonl"))] == expected
    pytest.importorskip("onnxruntime")
    predict_file(quantized(run, "onnx", tmp_path), tmp_path / "in.txt", tmp_path / "onnx.jsonl", progress=False,
                 max_new_tokens=6)
    assert len(read_lines(tmp_path / "onnx.jsonl")) == 2
    predict_file(quantized(run, "torch", tmp_path), tmp_path / "in.txt", tmp_path / "int8.jsonl", progress=False,
                 max_new_tokens=6)
    assert all(isinstance(r["text"], str) for r in read_lines(tmp_path / "int8.jsonl"))


def test_encoder_vectors(tiny_config, wordpiece_tokenizer, write_run, tmp_path):
    torch.manual_seed(0)
    model = pretraining_model(perturbed(build_model(tiny_config("bert"), wordpiece_tokenizer.vocab_size)),
                              ["mlm_head"])
    run = write_run(tmp_path / "encoder", model, wordpiece_tokenizer)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    predict_file(run, tmp_path / "in.txt", tmp_path / "out.jsonl", progress=False)
    vectors = torch.tensor([row["vector"] for row in read_lines(tmp_path / "out.jsonl")])
    ids, _ = wordpiece_tokenizer.encode_for_classification(TEXTS, max_len=24)
    with torch.no_grad():
        expected = torch.stack([model(torch.tensor([r]))[0].mean(0) for r in ids])
    torch.testing.assert_close(vectors, expected, atol=1e-5, rtol=0)
    predict_file(run, tmp_path / "in.txt", tmp_path / "cls.jsonl", progress=False, pooling="cls")
    with torch.no_grad():
        cls = torch.stack([model.pooled(model(torch.tensor([r])), None, "cls")[0] for r in ids])
    torch.testing.assert_close(torch.tensor([r["vector"] for r in read_lines(tmp_path / "cls.jsonl")]), cls,
                               atol=1e-5, rtol=0)
    pytest.importorskip("onnxruntime")
    from pretrainer.compress import quantize

    out = tmp_path / "encoder-onnx32"
    quantize(load_config(None, [f'--quantize.init="{run}"', f'--quantize.dir="{out}"', "--quantize.format=onnx",
                                "--quantize.int8=false"]), log=lambda *_: None)
    predict_file(out, tmp_path / "in.txt", tmp_path / "onnx.jsonl", progress=False)
    torch.testing.assert_close(torch.tensor([r["vector"] for r in read_lines(tmp_path / "onnx.jsonl")]), expected,
                               atol=1e-5, rtol=0)


def test_cli_streams_to_stdout_with_a_progress_bar(classifier_run, tmp_path, capsys):
    _, run = classifier_run
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["predict", str(run), str(tmp_path / "in.txt"), "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert [json.loads(line)["label"] in LABELS for line in captured.out.splitlines()] == [True] * 4
    assert "predict (classifier, fp32)" in captured.err and "4/4" in captured.err
    assert main(["predict", str(run), str(tmp_path / "missing.txt")]) == 2
    assert main(["predict", str(tmp_path), str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'missing.txt'}: file not found",
                   f"error: {tmp_path}: not a run directory (no model.json)"]


def test_predictor_loads_each_form(classifier_run):
    _, run = classifier_run
    p = load_predictor(run)
    assert (p.kind, p.backend, p.labels, p.max_len) == ("classifier", "fp32", LABELS, 24)
