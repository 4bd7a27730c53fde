"""The contract every registered transfer method keeps on every task it supports.

A new method gets these checks by registering: on tiny data the run completes, writes
results.json with the task's dev metric, its saved run re-scores the same through
`evaluate_finetuned`, and fitting changes exactly the parameters the method left trainable.
"""

import dataclasses
import json
import random

import pytest
import torch

from pretrainer.errors import PretrainerError
from pretrainer.registry import TASKS, TRANSFER_METHODS
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned

QUIET = dict(log=lambda *_: None)
CASES = [(method, task) for method in TRANSFER_METHODS for task in TRANSFER_METHODS.get(method).tasks]


def tagged_rows(words, n, seed):
    """CoNLL sentences whose tags depend only on the word: "good" opens a POS entity, "bad" a NEG one."""
    rng = random.Random(seed)
    tags = {"good": "B-POS", "bad": "B-NEG"}
    sentences = ["\n".join(f"{w}\t{tags.get(w, 'O')}" for w in rng.choices(words, k=rng.randint(3, 6)))
                 for _ in range(n)]
    return "\n\n".join(sentences) + "\n"


@pytest.fixture(scope="module")
def tiny_start(tmp_path_factory, tiny_transfer_task, good_task_rows, task_words):
    """A pre-trained tiny BERT (2 layers) and, per task, the finetune changes that point at its data."""
    tmp = tmp_path_factory.mktemp("contract")
    cfg = tiny_transfer_task(tmp, good_task_rows(seed=0), "--tokenizer.vocab_size=120", "--model.n_layers=2")
    (tmp / "tagged.conll").write_text(tagged_rows(task_words, 40, seed=0))
    tagged = dataclasses.replace(cfg.finetune.data, train=str(tmp / "tagged.conll"), dev=str(tmp / "tagged.conll"))
    images = _tiny_image_run(tmp)
    pairs = _tiny_t5_run(tmp, task_words)
    data = {"classification": {}, "tokens": {"task": "tokens", "data": tagged},
            "image_classification": {"task": "image_classification", "init": images["init"],
                                     "data": dataclasses.replace(cfg.finetune.data, **images["data"])},
            "generation": {"task": "generation", "init": pairs["init"],
                           "data": dataclasses.replace(cfg.finetune.data, **pairs["data"])}}
    assert set(data) == set(TASKS), "a new task needs its tiny data here"
    return cfg, data, tmp


def _tiny_image_run(tmp) -> dict:
    """A tiny resnet autoencoder run (2 steps) and labeled 8 x 8 images of two classes (a bright
    top or bottom half): the image task's init and data."""
    import numpy as np

    from pretrainer.api import pretrain
    from pretrainer.config import load_config

    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, size=(40, 8, 8), dtype=np.uint8)
    labels = np.arange(40) % 2
    images[labels == 0, :4] += 150
    images[labels == 1, 4:] += 150
    np.savez(tmp / "images.npz", x_train=images, y_train=labels)
    pretrain(load_config(None, ["--data.name=images", f'--data.train=["{tmp / "images.npz"}"]',
                                f'--data.cache_dir="{tmp / "cache"}"', "--model.name=resnet", "--model.widths=[8, 16]",
                                "--model.blocks=[1, 1]", "--model.groups=4", "--objective.name=autoencoder",
                                f'--run.dir="{tmp / "image-run"}"', "--train.batch_size=8", "--train.max_steps=2",
                                "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false"]), **QUIET)
    return {"init": str(tmp / "image-run"), "data": {"train": str(tmp / "images.npz"),
                                                     "dev": str(tmp / "images.npz")}}


def _tiny_t5_run(tmp, words) -> dict:
    """A tiny T5 pre-trained 2 steps with span corruption, and pairs whose target is the source's
    first two words: the generation task's init and data."""
    from pretrainer.api import pretrain
    from pretrainer.config import load_config

    rng = random.Random(0)
    (tmp / "t5-corpus.txt").write_text("\n".join(" ".join(rng.choices(words, k=20)) for _ in range(40)))
    sources = [" ".join(rng.choices(words, k=6)) for _ in range(24)]
    (tmp / "pairs.jsonl").write_text("".join(json.dumps({"text": s, "target": " ".join(s.split()[:2])}) + "\n"
                                             for s in sources))
    pretrain(load_config(None, [f'--data.train="{tmp / "t5-corpus.txt"}"', f'--data.cache_dir="{tmp / "cache"}"',
                                "--tokenizer.vocab_size=80", "--tokenizer.min_frequency=1", "--model.name=t5",
                                "--model.n_layers=1", "--model.d_model=16", "--model.n_heads=2", "--model.d_ff=32",
                                "--model.max_len=32", "--objective.name=span_corruption", f'--run.dir="{tmp / "t5"}"',
                                "--train.batch_size=4", "--train.seq_len=16", "--train.max_steps=2",
                                "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false"]), **QUIET)
    return {"init": str(tmp / "t5"), "data": {"train": str(tmp / "pairs.jsonl"), "dev": str(tmp / "pairs.jsonl")}}


def watch_fit(monkeypatch, method_class) -> dict:
    """Wrap `method_class.fit` to record the parameters before and after, and which were trainable."""
    seen = {}
    original = method_class.fit

    def fit(self, task, model, splits, run_dir, resume, log):
        seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}
        seen["numel"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        seen["before"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        fitted = original(self, task, model, splits, run_dir, resume, log)
        seen["after"] = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
        return fitted

    monkeypatch.setattr(method_class, "fit", fit)
    return seen


def flat(metrics: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("method,task", CASES)
def test_method_contract(tiny_start, monkeypatch, method, task):
    cfg, data, tmp = tiny_start
    run_dir = tmp / f"{method}-{task}"
    prompt = dataclasses.replace(cfg.finetune.prompt, verbalizer=["bad", "good"], soft_tokens=4)
    ft = dataclasses.replace(cfg.finetune, method=method, dir=str(run_dir), prompt=prompt, **data[task])
    run_cfg = dataclasses.replace(cfg, finetune=ft)
    seen = watch_fit(monkeypatch, TRANSFER_METHODS.get(method))

    results = finetune(run_cfg, **QUIET)

    # results.json: the returned record, with the task's dev metric.
    metric = TASKS.get(task).metric
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert results["method"] == method and 0 <= results["dev"][metric] <= 1
    assert results["trainable_params"] == seen["numel"]

    # Only what the method left trainable changed; and something did, when anything was trainable.
    changed = {n for n in seen["before"] if not torch.equal(seen["before"][n], seen["after"][n])}
    assert changed <= seen["trainable"], sorted(changed - seen["trainable"])
    assert bool(changed) == bool(seen["trainable"])

    # The saved run, rebuilt by its method from config.toml alone, scores as the run did.
    plain = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, dir=str(run_dir),
                                                                  data=ft.data, task=ft.task))
    if not TRANSFER_METHODS.get(method).rescorable:  # knn: a one-line refusal instead
        with pytest.raises(PretrainerError, match="evaluate --finetuned"):
            evaluate_finetuned(plain, **QUIET)
        return
    scored = flat(evaluate_finetuned(plain, **QUIET)["dev"])
    expected = flat(results["dev"])
    assert expected and {k: scored[k] for k in expected} == pytest.approx(expected, abs=1e-6)


def test_every_method_runs_on_some_task():
    assert all(set(TRANSFER_METHODS.get(m).tasks) <= set(TASKS) for m in TRANSFER_METHODS)
    assert {m for m, _ in CASES} == set(TRANSFER_METHODS)


def test_unknown_method_or_task_is_one_line_naming_the_key(tiny_start):
    # A config built in code (the curve's methods, say) never went through the config loader.
    cfg, _, tmp = tiny_start
    for key, value in (("method", "adapters"), ("task", "regression")):
        bad = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, **{key: value}, dir=str(tmp / "x")))
        with pytest.raises(PretrainerError, match=f"config key 'finetune.{key}' must be one of .*; got {value!r}") as err:
            finetune(bad, **QUIET)
        assert "\n" not in str(err.value)


def test_fine_tuning_into_the_init_run_is_refused(tiny_start):
    cfg, _, _ = tiny_start
    into_init = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, dir=cfg.finetune.init))
    with pytest.raises(PretrainerError, match="finetune.dir.*is the init run itself"):
        finetune(into_init, **QUIET)
