"""The API end to end on tiny data: causal LM + generate, evaluate, pair classification."""

import json
import random

import pytest

from pretrainer.api import evaluate, generate, pretrain
from pretrainer.cli.main import main
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.transfer.finetune import finetune

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()
QUIET = dict(log=lambda *_: None)


def corpus(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choices(WORDS, k=40)) for _ in range(80)))
    return path


def gpt_config(tmp_path, *extra):
    return load_config(None, [
        f'--run.dir="{tmp_path / "gpt"}"', f'--data.train="{corpus(tmp_path)}"', '--data.txt_documents="blank"',
        f'--data.cache_dir="{tmp_path / "cache"}"', '--tokenizer.kind="bytebpe"', "--tokenizer.vocab_size=300",
        "--tokenizer.min_frequency=1", '--model.name="gpt"', "--model.n_layers=1", "--model.d_model=32",
        "--model.n_heads=2", "--model.max_len=64", '--objective.name="clm"', "--train.batch_size=4",
        "--train.seq_len=32", "--train.max_steps=4", "--train.eval_every=0", "--train.save_every=0",
        "--impl.progress=false", *extra])


def test_no_held_out_data_means_no_eval_metric(tmp_path):
    """With nothing held out, an evaluation over nothing read loss 0 / perplexity 1; now pre-training
    says there is no held-out data and records no eval, and `evaluate` refuses."""
    cfg = gpt_config(tmp_path, "--data.holdout=0.0", "--train.eval_every=2")
    logged = []
    result = pretrain(cfg, log=logged.append)
    assert result.step == 4 and result.eval_history == []
    assert any("no held-out data" in line for line in logged)
    records = [json.loads(line) for line in (tmp_path / "gpt" / "metrics.jsonl").read_text().splitlines()]
    assert records and not any(r["split"] == "eval" for r in records)
    with pytest.raises(PretrainerError, match="no held-out data"):
        evaluate(cfg, **QUIET)


def test_causal_lm_generate_and_evaluate(tmp_path, capsys):
    cfg = gpt_config(tmp_path)
    result = pretrain(cfg, **QUIET)
    assert result.step == 4
    assert result.eval_history and result.eval_history[-1]["ppl"] > 1.0

    metrics = evaluate(cfg, **QUIET)
    assert metrics["ppl"] == pytest.approx(result.eval_history[-1]["ppl"], rel=1e-5)

    greedy = generate(cfg.run.dir, "to be", max_new_tokens=8, greedy=True)
    assert greedy == generate(cfg.run.dir, "to be", max_new_tokens=8, greedy=True)
    assert greedy[0].startswith("to be")
    sampled = generate(cfg.run.dir, "to be", max_new_tokens=8, top_k=5, top_p=0.9, temperature=0.8,
                       num_samples=2, seed=1)
    assert len(sampled) == 2

    assert main(["generate", cfg.run.dir, "--prompt", "to be", "--max-new-tokens", "4", "--greedy"]) == 0
    assert "to be" in capsys.readouterr().out


def test_generate_refuses_encoder_runs(tmp_path):
    cfg = gpt_config(tmp_path, '--model.name="bert"', '--objective.name="mlm"', '--tokenizer.kind="wordpiece"')
    pretrain(cfg, **QUIET)
    with pytest.raises(PretrainerError, match="cannot generate"):
        generate(cfg.run.dir, "to be")


def test_pair_classification_finetune(tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        a, b = rng.choices(WORDS, k=4), rng.choices(WORDS, k=4)
        same = rng.random() < 0.5
        rows.append({"premise": " ".join(a), "hypothesis": " ".join(a if same else b),
                     "label": "same" if same else "different"})
    train = tmp_path / "pairs.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pretrain(cfg := gpt_config(tmp_path, '--model.name="bert"', '--objective.name="mlm"',
                               '--tokenizer.kind="wordpiece"'), **QUIET)
    ft = load_config(None, [
        f'--finetune.init="{cfg.run.dir}"', f'--finetune.dir="{tmp_path / "ft"}"',
        f'--finetune.data.train="{train}"', f'--finetune.data.dev="{train}"',
        '--finetune.data.text_field="premise"', '--finetune.data.text_pair_field="hypothesis"',
        "--finetune.train.epochs=1.0", "--finetune.train.batch_size=16", "--finetune.max_len=64",
        "--impl.progress=false"])
    results = finetune(ft, **QUIET)
    assert results["labels"] == ["different", "same"]
    assert results["n_labels"] == 64
    assert 0.0 <= results["dev"]["accuracy"] <= 1.0
    saved = json.loads((tmp_path / "ft" / "results.json").read_text())
    assert saved["dev"]["accuracy"] == results["dev"]["accuracy"]


def test_span_corruption_pretrain_evaluate_and_generate(tmp_path, capsys):
    cfg = gpt_config(tmp_path, '--model.name="t5"', '--objective.name="span_corruption"',
                     '--tokenizer.kind="wordpiece"', "--tokenizer.vocab_size=80", "--model.d_ff=64",
                     "--train.max_steps=6", "--train.lr=3e-3")
    result = pretrain(cfg, **QUIET)
    assert result.step == 6 and 0 <= result.eval_history[-1]["span_acc"] <= 1
    assert evaluate(cfg, **QUIET)["span_loss"] == pytest.approx(result.eval_history[-1]["span_loss"], rel=1e-5)
    saved = load_config(tmp_path / "gpt" / "config.toml")
    assert saved.tokenizer.sentinels == 100  # added for the objective, and recorded with the run
    greedy = generate(cfg.run.dir, "to be or", max_new_tokens=6, greedy=True)
    assert greedy == generate(cfg.run.dir, "to be or", max_new_tokens=6, greedy=True) and len(greedy) == 1
    assert len(generate(cfg.run.dir, "to be or", max_new_tokens=6, num_beams=3)) == 1
    assert main(["generate", cfg.run.dir, "--prompt", "to be", "--max-new-tokens", "4", "--num-beams", "2"]) == 0
    # The encoder fine-tunes as a classifier through the ordinary finetune run (mean pooling,
    # decoder frozen): the label is whether the text says "question".
    rng = random.Random(1)
    rows = [{"text": " ".join(rng.choices(WORDS[:7], k=5) + (["question"] if i % 2 else [])), "label": str(i % 2)}
            for i in range(64)]
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ft = load_config(None, [
        f'--finetune.init="{cfg.run.dir}"', f'--finetune.dir="{tmp_path / "ft"}"', f'--finetune.data.train="{labeled}"',
        f'--finetune.data.dev="{labeled}"', "--finetune.train.epochs=20.0", "--finetune.train.batch_size=16",
        "--finetune.train.lr=3e-3", '--finetune.pooling="mean"', "--finetune.max_len=32", "--impl.progress=false"])
    results = finetune(ft, **QUIET)
    assert results["trainable_params"] < results["total_params"]  # the decoder stays as pre-trained
    assert results["dev"]["accuracy"] >= 0.9
