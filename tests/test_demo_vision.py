"""`pretrainer demo vision` on a tiny budget (the real run is `make demo-vision`), and `predict`
on the image runs it leaves: a classifier's labels and probabilities, an encoder's vectors."""

import json

import numpy as np
import pytest

import pretrainer.cli.demo_vision as demo_module
from pretrainer.cli.main import main
from pretrainer.errors import PretrainerError

TINY = {**demo_module.VISION_DEMO,
        "model": {"name": "resnet", "widths": [8, 16], "blocks": [1, 1], "groups": 4},
        "train": {**demo_module.VISION_DEMO["train"], "max_steps": 3, "batch_size": 32, "save_every": 0},
        "impl": {"progress": False, "threads": 1},
        "finetune": {**demo_module.VISION_DEMO["finetune"],
                     "train": {**demo_module.VISION_DEMO["finetune"]["train"], "epochs": 0.1, "min_steps": 2,
                               "batch_size": 64}}}


def test_vision_demo_runs_end_to_end_and_predicts(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo_module, "FRACTIONS", (0.021, 1.0))
    lines = []
    out = tmp_path / "demo"
    rows = demo_module.demo_vision(out, log=lines.append, preset=TINY)
    starts = [name for name, _ in demo_module.ROWS] + ["pixels, logistic regression"]
    assert [(r["start"], r["fraction"]) for r in rows] == [(s, f) for f in demo_module.FRACTIONS for s in starts]
    labels = {r["fraction"]: r["labels"] for r in rows}
    assert labels == {0.021: 30, 1.0: 1438}  # 3 a class, all
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # Raw-pixel logistic regression on all 1,438 labels is a strong baseline on these digits.
    assert rows[-1]["accuracy"] > 0.9
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == len(rows) and (out / "results.md").read_text().count("\n|") == len(rows) + 1
    assert any("Done in" in line for line in lines)

    # predict: the fine-tuned classifier answers each test digit with a label and probabilities.
    npz = out / "data" / "digits.npz"
    assert main(["predict", str(out / "finetune" / "simclr-full-1"), f"{npz}#test"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with np.load(npz) as d:
        assert len(answers) == len(d["y_test"])
    assert answers[0]["id"].endswith("[x_test][0]") and set(answers[0]["probabilities"]) == {str(i) for i in range(10)}
    assert answers[0]["label"] == max(answers[0]["probabilities"], key=answers[0]["probabilities"].get)
    assert abs(sum(answers[0]["probabilities"].values()) - 1) < 1e-4
    # An image folder: each file converted to the run's 8 x 8 grayscale, its path the id.
    from PIL import Image
    folder = tmp_path / "pictures"
    folder.mkdir()
    with np.load(npz) as d:
        Image.fromarray(np.repeat(d["x_test"][0][..., None], 3, axis=2)).resize((16, 16)).save(folder / "a.png")
        Image.fromarray(d["x_test"][1]).save(folder / "b.png")
    assert main(["predict", str(out / "finetune" / "simclr-full-1"), str(folder)]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["id"] for a in answers] == [str(folder / "a.png"), str(folder / "b.png")]
    # The pre-training run is an encoder: its pooled features, one vector per image.
    vectors = out / "vectors.jsonl"
    assert main(["predict", str(out / "pretrain"), str(npz), "--output", str(vectors)]) == 0
    rows = [json.loads(line) for line in vectors.read_text().splitlines()]
    assert len(rows) == 1438 and len(rows[0]["vector"]) == TINY["model"]["widths"][-1]

    # A second run reuses the finished pre-training run.
    lines.clear()
    monkeypatch.setattr(demo_module, "FRACTIONS", (1.0,))
    demo_module.demo_vision(out, log=lines.append, preset=TINY)
    assert any("reusing the finished pre-training run" in line for line in lines)


def test_vision_demo_refuses_other_digits(monkeypatch):
    monkeypatch.setattr(demo_module, "DIGITS_SHA256", "0" * 64)
    with pytest.raises(PretrainerError, match="not the pinned"):
        demo_module.load_digits()
