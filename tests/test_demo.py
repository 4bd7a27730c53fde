"""The demo's orchestration on tiny synthetic data (the real run is `make demo`)."""

import json
import random


import pretrainer.cli.demo as demo_module
import pretrainer.data.sources as sources

POSITIVE = "great wonderful moving funny brilliant charming".split()
NEGATIVE = "dull boring awful tedious flat lifeless".split()
FILLER = "the film plot actors story scenes director a an of and".split()


def fake_reviews():
    rng = random.Random(0)
    out = []
    for i in range(200):
        label = "fresh" if i % 2 else "rotten"
        words = rng.choices(FILLER, k=6) + rng.choices(POSITIVE if label == "fresh" else NEGATIVE, k=2)
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def fake_news():
    rng = random.Random(1)
    return [" ".join(rng.choices(FILLER + POSITIVE + NEGATIVE, k=60)) for _ in range(50)]


def test_demo_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "rotten_tomatoes", fake_reviews)
    monkeypatch.setattr(sources, "news_articles", fake_news)
    tiny = {**demo_module.DEMO,
            "data": {**demo_module.DEMO["data"], "cache_dir": str(tmp_path / "cache")},
            "tokenizer": {"kind": "wordpiece", "vocab_size": 100, "min_frequency": 1},
            "model": {"name": "bert", "n_layers": 1, "d_model": 32, "n_heads": 2, "max_len": 32},
            "train": {**demo_module.DEMO["train"], "budget": "", "max_steps": 6, "seq_len": 32,
                      "batch_size": 4, "save_every": 3},
            "impl": {"progress": False, "threads": 1},
            "finetune": {**demo_module.DEMO["finetune"], "max_len": 32,  # the tiny model's position table
                         "train": {**demo_module.DEMO["finetune"]["train"], "epochs": 1.0, "min_steps": 0,
                                   "batch_size": 16}}}
    monkeypatch.setattr(demo_module, "DEMO", tiny)
    monkeypatch.setattr(demo_module, "DEMO_WORD_VECTORS", {
        **demo_module.DEMO_WORD_VECTORS,
        "train": {**demo_module.DEMO_WORD_VECTORS["train"], "budget": "", "max_steps": 4, "seq_len": 16,
                  "batch_size": 8}})
    # Stand-in for the MiniLM package: any run directory is a valid init.
    monkeypatch.setattr(demo_module, "MINILM", str(tmp_path / "demo" / "pretrain"))
    lines = []
    rows = demo_module.demo(tmp_path / "demo", log=lines.append)

    assert [(r["init"], r["fraction"]) for r in rows] == [
        ("pre-trained", 0.1), ("pre-trained", 1.0), ("scratch", 0.1), ("scratch", 1.0),
        ("MiniLM", 0.1)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # The held-out reviews are a test set only: nothing is selected on them.
    result = json.loads((tmp_path / "demo" / "finetune" / "pre-trained-10pct" / "results.json").read_text())
    assert "test" in result and "dev" not in result
    # The MiniLM row starts from its weights, not from scratch after the scratch rows.
    result = json.loads((tmp_path / "demo" / "finetune" / "minilm-10pct" / "results.json").read_text())
    assert not result["init"].startswith("scratch")
    for name in ("results.md", "results.json", "label_efficiency.png", "pretraining_loss.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0
    assert (tmp_path / "demo" / "pretrain" / "model.safetensors").exists()
    # The BERT started from the word vectors and reads their tokenizer.
    assert (tmp_path / "demo" / "word_vectors" / "model.safetensors").exists()
    assert ((tmp_path / "demo" / "pretrain" / "tokenizer.json").read_text()
            == (tmp_path / "demo" / "word_vectors" / "tokenizer.json").read_text())
    assert any("Done in" in line for line in lines)

    # A second run reuses the finished pre-training run instead of starting over.
    lines.clear()
    demo_module.demo(tmp_path / "demo", log=lines.append)
    assert sum("reusing the finished pre-training run" in line for line in lines) == 2
