"""Text-to-text fine-tuning (finetune.task = "generation"): ROUGE wiring, the pair encoding, a tiny
T5 fine-tuned for a few steps (loss falls, decoded text has no sentinels, the saved run re-scores
and predicts text), and the task's one-line errors."""

import json
import random

import pytest
import torch

from pretrainer.api import pretrain
from pretrainer.cli.main import main
from pretrainer.config import LabeledDataConfig, load_config
from pretrainer.data.readers import TextPairs, read_text_pairs
from pretrainer.data.text_pairs import Decoding, encode_text_pairs
from pretrainer.data.collators import IGNORE_INDEX
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.rouge import rouge_f1
from pretrainer.predict import predict_file
from pretrainer.registry import TASKS
from pretrainer.runs import load_run
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned
from pretrainer.transfer.tasks.generation import generate_texts

QUIET = dict(log=lambda *_: None)
WORDS = "alpha beta gamma delta echo fox golf hotel india juliet kilo lima mike".split()


def test_rouge_of_a_pair_computed_by_hand():
    # prediction: 7 words, reference: 6; shared unigrams the, cat, was, under, the, bed (6):
    # P 6/7, R 6/6 -> F1 12/13. Bigrams: 4 of the prediction's 6 and the reference's 5 -> F1 16/22.
    # The longest common subsequence is the 6 shared words, in order -> ROUGE-L = ROUGE-1.
    scores = rouge_f1(["The cat was found under the bed."], ["the cat was under the bed"])
    assert scores == pytest.approx({"rouge1": 12 / 13, "rouge2": 16 / 22, "rougeL": 12 / 13})
    # rouge-score's README example (rouge1 F 0.70588, rougeL F 0.58824).
    doc = rouge_f1(["The quick brown dog jumps on the log."], ["The quick brown fox jumps over the lazy dog"])
    assert doc["rouge1"] == pytest.approx(0.7058823529411765) and doc["rougeL"] == pytest.approx(0.5882352941176471)
    # The corpus score is the mean of the pairs' scores.
    both = rouge_f1(["the cat was found under the bed", "nothing alike"], ["the cat was under the bed", "zebra"])
    assert both["rouge1"] == pytest.approx(12 / 13 / 2)


class Pieces:
    """A tokenizer whose pieces are words: id = position in WORDS + 10; [PAD] 0, end token 3."""

    pad_id, eos_id = 0, 3

    def encode_batch(self, texts):
        return [[WORDS.index(w) + 10 for w in t.split()] for t in texts]


def test_pairs_encode_for_teacher_forcing():
    pairs = TextPairs(sources=["alpha beta gamma delta", "echo"], targets=["fox golf hotel", "india"], source="f",
                      line_numbers=[1, 2], ids=["a", None])
    data = encode_text_pairs(pairs, Pieces(), max_len=3, decoding=Decoding(max_target_len=3))
    assert data.input_ids == [[10, 11, 3], [14, 3]]  # the source keeps its head, then the end token
    assert data.target_ids == [[15, 16, 3], [18, 3]] and data.truncated_targets == 1 and data.truncated_sources == 1
    batch = data.batch([0, 1])
    assert batch["decoder_input_ids"].tolist() == [[0, 15, 16], [0, 18, 0]]  # shifted right behind [PAD]
    assert batch["labels"].tolist() == [[15, 16, 3], [18, 3, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    with pytest.raises(PretrainerError, match="f:1: the target is 4 tokens.*finetune.generation.max_target_len"):
        encode_text_pairs(pairs, Pieces(), max_len=3, decoding=Decoding(max_target_len=3), on_long_target="error")


def pair_rows(n: int, seed: int) -> list[dict]:
    """The target is the source's first two words: a copy a tiny model learns in a few dozen steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=8)
        rows.append({"id": f"{seed}-{i}", "text": " ".join(words), "target": " ".join(words[:2])})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A tiny T5 pre-trained 2 steps with span corruption (so its tokenizer has sentinels), and pairs."""
    tmp = tmp_path_factory.mktemp("t5")
    rng = random.Random(0)
    (tmp / "corpus.txt").write_text("\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(40)))
    cfg = load_config(None, [
        f'--run.dir="{tmp / "t5"}"', f'--data.train="{tmp / "corpus.txt"}"', '--data.txt_documents="blank"',
        f'--data.cache_dir="{tmp / "cache"}"', '--tokenizer.kind="wordpiece"', "--tokenizer.vocab_size=60",
        "--tokenizer.min_frequency=1", '--model.name="t5"', "--model.n_layers=1", "--model.d_model=32",
        "--model.n_heads=2", "--model.d_ff=64", "--model.max_len=32", "--model.dropout=0.0",
        '--objective.name="span_corruption"', "--train.batch_size=4", "--train.seq_len=24", "--train.max_steps=2",
        "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false"])
    pretrain(cfg, **QUIET)
    train = write_jsonl(tmp / "train.jsonl", pair_rows(48, seed=1))
    dev = write_jsonl(tmp / "dev.jsonl", pair_rows(12, seed=2))
    return tmp, train, dev


def generation_config(tmp, train, dev, *extra):
    return load_config(None, [
        f'--finetune.init="{tmp / "t5"}"', f'--finetune.dir="{tmp / "headlines"}"', '--finetune.task="generation"',
        f'--finetune.data.train="{train}"', f'--finetune.data.dev="{dev}"', f'--finetune.data.test="{dev}"',
        "--finetune.max_len=16", "--finetune.generation.max_target_len=10", "--finetune.train.epochs=0.0",
        "--finetune.train.max_steps=60", "--finetune.train.batch_size=8", "--finetune.train.lr=1e-2",
        "--finetune.train.warmup=0.0", "--finetune.train.log_every=1", "--finetune.keep_best=false",
        "--impl.progress=false", *extra])


def test_tiny_t5_learns_the_task_and_its_run_scores_and_predicts_text(tiny_t5, tmp_path):
    tmp, train, dev = tiny_t5
    cfg = generation_config(tmp, train, dev)
    results = finetune(cfg, **QUIET)
    run_dir = tmp / "headlines"
    losses = [json.loads(line)["metrics"]["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("split") == "train"]
    assert len(losses) >= 10 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5  # the loss falls
    assert results["task"] == "generation" and results["labels"] == []
    for split in ("dev", "test"):
        assert 0 <= results[split]["rougeL"] <= 1 and results[split]["generated"] == f"generated-{split}.jsonl"
    generated = [json.loads(line) for line in (run_dir / "generated-test.jsonl").read_text().splitlines()]
    assert [g["target"] for g in generated] == [r["target"] for r in pair_rows(12, seed=2)]
    assert [g["id"] for g in generated] == [r["id"] for r in pair_rows(12, seed=2)]
    texts = [g["generated"] for g in generated]
    # Decoded through the tokenizer: words, never a sentinel or another special token.
    assert any(texts) and not any(tok in t for t in texts for tok in ("<extra_id", "[PAD]", "[CLS]", "[SEP]"))
    assert set("".join(texts)) <= set("abcdefghijklmnopqrstuvwxyz #")
    # The saved run re-scores the same through `evaluate --finetuned`, and writes its generations.
    rescored = evaluate_finetuned(load_config(run_dir / "config.toml"), **QUIET)
    assert rescored["test"]["rougeL"] == pytest.approx(results["test"]["rougeL"], abs=1e-9)
    assert (run_dir / "evaluation-generated-test.jsonl").is_file()
    # `predict` answers with text: the same greedy decoding.
    out = tmp_path / "pred.jsonl"
    assert predict_file(run_dir, dev, out, progress=False) == 12
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == texts
    # The run is a T5 run: `generate` reads it.
    assert main(["generate", str(run_dir), "--prompt", "alpha beta gamma", "--greedy", "--max-new-tokens", "4"]) == 0


def test_sentinels_never_leak_into_generated_text(tiny_t5):
    """Even a decoder that prefers the sentinels above all writes none: they are suppressed."""
    tmp, train, dev = tiny_t5
    model, tokenizer = load_run(tmp / "t5")
    backbone = model.backbone
    with torch.no_grad():  # every sentinel's (tied) output row points along the decoder's mean state
        backbone.shared.weight[tokenizer.sentinel_ids] = 50.0
    data = TASKS.get("generation")().encoder(tokenizer, 16)(read_text_pairs(dev, LabeledDataConfig()), [])
    texts = generate_texts(backbone, data, batch_size=4)
    assert not any("<extra_id" in t for t in texts)
    raw = backbone.generate(data.batch(range(4))["input_ids"], 5, start_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    assert set(raw[:, 1:].flatten().tolist()) & set(tokenizer.sentinel_ids)  # unsuppressed, they would be written


def test_beam_search_scores_through_the_same_path(tiny_t5):
    tmp, train, dev = tiny_t5
    cfg = generation_config(tmp, train, dev, "--finetune.train.max_steps=3", "--finetune.generation.num_beams=3",
                            f'--finetune.dir="{tmp / "beams"}"', '--finetune.data.test=""')
    results = finetune(cfg, **QUIET)
    assert 0 <= results["dev"]["rouge1"] <= 1 and "test" not in results


@pytest.mark.parametrize("override,names", [
    ("--finetune.generation.max_target_len=40", ("finetune.generation.max_target_len", "max_len = 32")),
    ("--finetune.generation.on_long_target=error", ("train.jsonl:1", "finetune.generation.max_target_len")),
    ("--finetune.data.target_field=title", ("train.jsonl:1", "'title'")),
    ('--finetune.truncation="tail"', ("finetune.truncation",)),
])
def test_bad_settings_are_one_line_errors(tiny_t5, override, names):
    tmp, train, dev = tiny_t5
    extra = ("--finetune.generation.max_target_len=2",) if "on_long_target" in override else ()
    with pytest.raises(PretrainerError) as err:
        finetune(generation_config(tmp, train, dev, override, *extra, f'--finetune.dir="{tmp / "bad"}"'), **QUIET)
    assert "\n" not in str(err.value) and all(name in str(err.value) for name in names), str(err.value)
    assert not (tmp / "bad").exists()
