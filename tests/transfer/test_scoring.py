"""`pretrainer evaluate --finetuned`: a finished classifier or tagger scored on labeled files."""

import dataclasses
import json
import random

import pytest

from pretrainer.cli.main import main
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_transfer_task, good_task_rows):
    """A tiny BERT fine-tuned (full) to tell whether 'good' appears, with its dev rows."""
    tmp = tmp_path_factory.mktemp("scoring")
    rows = good_task_rows(seed=1)
    cfg = tiny_transfer_task(tmp, rows, "--tokenizer.vocab_size=120", "--finetune.train.epochs=10.0",
                             "--finetune.train.lr=3e-3", "--finetune.classifier_dropout=0.0",
                             f'--finetune.dir="{tmp / "ft"}"')
    return cfg, finetune(cfg, **QUIET), rows, tmp


def with_files(cfg, dev="", test=""):
    data = dataclasses.replace(cfg.finetune.data, dev=str(dev), test=str(test))
    return dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, data=data))


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ENTITIES = [(["kim"], ["B-PER"]), (["paris"], ["B-LOC"]), (["new", "delhi"], ["B-LOC", "I-LOC"]),
            (["zenith"], ["B-ORG"]), (["joe"], ["B-PER"])]


def tagged_sentences(n, seed):
    """Filler words, then an entity whose tags depend only on its words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words, tags = rng.choice(ENTITIES)
        filler = rng.choices("the a of walked towards quickly".split(), k=rng.randint(1, 4))
        sentences.append((filler + words, ["O"] * len(filler) + tags))
    return sentences


def write_conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(words, tags)) for words, tags in sentences))
    return path


def test_a_classifier_scores_as_it_did_after_fine_tuning(classifier_run):
    cfg, results, _, tmp = classifier_run
    scored = evaluate_finetuned(cfg, **QUIET)
    for key in ("accuracy", "macro_f1", "loss"):
        assert scored["dev"][key] == pytest.approx(results["dev"][key])
    assert scored["labels"] == results["labels"] and scored["dev"]["n_examples"] == 60
    assert json.loads((tmp / "ft" / "evaluation.json").read_text()) == scored


@pytest.mark.parametrize("method", ["probe", "lora", "soft_prompt", "cloze", "cloze_zero_shot"])
def test_every_method_s_run_scores_as_it_did_after_fine_tuning(classifier_run, method):
    # Each is rebuilt as its method used it: the probe's standardisation folded into a head,
    # LoRA merged, the soft prompt around its init, cloze with its template, verbalizer and
    # (zero-shot) calibration.
    cfg, _, _, tmp = classifier_run
    prompt = dataclasses.replace(cfg.finetune.prompt, verbalizer=["bad", "good"], soft_tokens=4)
    run_cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, method=method, prompt=prompt,
                                                                    dir=str(tmp / method)))
    results = finetune(run_cfg, **QUIET)
    # Scored with a config that knows nothing of the method: the run's own config.toml says it.
    plain = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, dir=str(tmp / method)))
    scored = evaluate_finetuned(plain, **QUIET)
    assert scored["dev"]["accuracy"] == pytest.approx(results["dev"]["accuracy"])
    assert scored["dev"]["macro_f1"] == pytest.approx(results["dev"]["macro_f1"])


def test_a_file_with_one_label_is_scored_with_the_run_s_label_order(classifier_run):
    # Inferring the labels from a file holding only "1" would call it label 0 and score every
    # right answer as wrong; the run's own label names keep the outputs' meaning.
    cfg, _, rows, tmp = classifier_run
    scores = {}
    for label in ("0", "1"):
        path = write_rows(tmp / f"only-{label}.jsonl", [r for r in rows if r["label"] == label])
        scores[label] = evaluate_finetuned(with_files(cfg, test=path), **QUIET)["test"]
    whole = evaluate_finetuned(cfg, **QUIET)["dev"]
    right = sum(scores[label]["accuracy"] * scores[label]["n_examples"] for label in scores)
    assert right == pytest.approx(whole["accuracy"] * whole["n_examples"])
    assert whole["accuracy"] > 0.6, whole  # the model learned something, so the check above has teeth


def test_bad_files_and_runs_get_one_line_errors(classifier_run):
    cfg, _, rows, tmp = classifier_run
    with pytest.raises(PretrainerError, match="finetune.data.dev' and 'finetune.data.test' are both empty"):
        evaluate_finetuned(with_files(cfg), **QUIET)
    unknown = write_rows(tmp / "unknown.jsonl", rows[:3] + [{"text": "good", "label": "maybe"}])
    with pytest.raises(PretrainerError, match=r"unknown\.jsonl:4.*'maybe'"):
        evaluate_finetuned(with_files(cfg, test=unknown), **QUIET)
    # A pre-training run has no task head, nor label names.
    pretraining = dataclasses.replace(cfg.finetune, dir=cfg.finetune.init)
    with pytest.raises(PretrainerError, match="no label names .* not a finished fine-tuning run"):
        evaluate_finetuned(dataclasses.replace(cfg, finetune=pretraining), **QUIET)


def test_the_cli_scores_a_tagger_on_an_overridden_test_file(tmp_path, capsys):
    from pretrainer.config import TokenizerConfig
    from pretrainer.data.tokenizer import train_tokenizer

    texts = [" ".join(words) for words, _ in tagged_sentences(200, seed=0)]
    train_tokenizer(texts, TokenizerConfig(kind="wordpiece", vocab_size=70, min_frequency=1)).save(tmp_path / "tok")
    train = write_conll(tmp_path / "train.txt", tagged_sentences(200, seed=1))
    dev = write_conll(tmp_path / "dev.txt", tagged_sentences(30, seed=2))
    config = tmp_path / "ner.toml"
    config.write_text(f"""
[run]
dir = "{tmp_path / 'run'}"
[tokenizer]
path = "{tmp_path / 'tok'}"
[model]
name = "bert"
n_layers = 2
d_model = 32
n_heads = 2
max_len = 64
[finetune]
task = "tokens"
crf = true
max_len = 48
classifier_dropout = 0.0
[finetune.data]
format = "conll"
train = "{train}"
dev = "{dev}"
[finetune.train]
epochs = 0
max_steps = 40
lr = 3e-3
batch_size = 16
log_every = 0
[impl]
progress = false
threads = 1
""")
    results = finetune(load_config(str(config), []), **QUIET)
    assert results["dev"]["f1"] > 0.8  # learned: the scores below mean something

    # Only people, none of the other entity types: the file's own tag set would be smaller.
    people = [(["the", name], ["O", "B-PER"]) for name in ("kim", "joe")] * 5
    test = write_conll(tmp_path / "people.txt", people)
    assert main(["evaluate", str(config), "--finetuned", f'--finetune.data.test="{test}"']) == 0
    out = capsys.readouterr().out
    assert "dev (" in out and "test (" in out and "entity F1" in out
    scored = json.loads((tmp_path / "run" / "finetune" / "evaluation.json").read_text())
    assert scored["dev"]["f1"] == pytest.approx(results["dev"]["f1"])
    assert set(scored["test"]["per_type"]) == {"PER"} and scored["test"]["file"] == str(test)
