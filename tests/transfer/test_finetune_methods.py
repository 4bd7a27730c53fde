"""Partial fine-tuning, layer-wise rates, early stopping, the linear probe, and each method end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from pretrainer.api import load_run
from pretrainer.config import TrainConfig
from pretrainer.errors import PretrainerError
from pretrainer.models.heads import SequenceClassifier
from pretrainer.training.optim import build_optimizer
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.methods.probe import cached_features, fit_logistic_regression
from pretrainer.transfer.partial import count_parameters, freeze_bottom_layers
from pretrainer.transfer.select import BestWeights



def _classifier(make_model, **kw):
    torch.manual_seed(0)
    return SequenceClassifier(make_model("bert").train(), 2, pooling="mean", dropout=0.0, **kw)


def _batch(n=8, T=10, vocab=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, vocab, (n, T), generator=g),
            "attention_mask": torch.ones(n, T, dtype=torch.bool),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def _train(model, steps=3, **cfg):
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2, **cfg), torch.device("cpu"))
    for step in range(steps):
        batch = _batch(seed=step)
        optimizer.zero_grad()
        F.cross_entropy(model(batch), batch["labels"]).backward()
        optimizer.step()
    return optimizer


def test_frozen_bottom_layers_do_not_change_and_the_rest_does(make_model):
    model = _classifier(make_model)
    freeze_bottom_layers(model, 1)  # embeddings + block 0
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model)
    for name, p in model.named_parameters():
        if name.startswith(("backbone.embeddings.", "backbone.blocks.0.")):
            assert torch.equal(p, before[name]) and not p.requires_grad, name
        elif name.startswith(("backbone.blocks.1.", "head.")):  # (mean pooling leaves the pooler unused)
            assert not torch.equal(p, before[name]), name
    trainable, total = count_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters()  # mean pooling: pooler frozen
                            if not n.startswith(("backbone.embeddings.", "backbone.blocks.0.", "backbone.pooler.")))
    assert total == sum(p.numel() for p in model.parameters())


def test_freezing_every_layer_is_refused_with_the_key(make_model):
    with pytest.raises(PretrainerError, match="finetune.freeze_layers"):
        freeze_bottom_layers(_classifier(make_model), 2)  # the tiny model has 2 layers


def test_layer_decay_gives_each_depth_its_rate(make_model):
    model = _classifier(make_model, layer_decay=0.5)
    optimizer = _train(model, steps=1)
    lr_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lr_of[id(p)] = group["lr"]
    named = dict(model.named_parameters())
    # 2 layers: head depth 3, block 1 depth 2, block 0 depth 1, embeddings depth 0.
    assert lr_of[id(named["head.weight"])] == pytest.approx(1e-2)
    assert lr_of[id(named["backbone.blocks.1.attn.qkv.weight"])] == pytest.approx(1e-2 * 0.5)
    assert lr_of[id(named["backbone.blocks.0.mlp.fc.bias"])] == pytest.approx(1e-2 * 0.25)
    assert lr_of[id(named["backbone.embeddings.word_embeddings.weight"])] == pytest.approx(1e-2 * 0.125)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)  # the logged rate is the peak
    no_decay = [g for g in optimizer.param_groups if any(p is named["head.bias"] for p in g["params"])]
    assert no_decay[0]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(named) - 2  # all but the unread pooler


def test_best_weights_restores_the_best_evaluation_and_counts_patience(make_model):
    model = _classifier(make_model)
    scores = iter([0.5, 0.8, 0.7, 0.6])
    best = BestWeights(metric="accuracy")
    evaluate = best.wrap(lambda m: {"accuracy": next(scores)})
    stop = best.patience_spent(2)
    snapshots = []
    for _ in range(4):
        _train(model, steps=1)
        evaluate(model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    assert stop([]) and best.evaluation == 2 and best.score == 0.8
    assert best.restore(model)
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshots[1][k])


def test_best_weights_survive_a_resume_through_the_run_directory(make_model, tmp_path):
    model = _classifier(make_model)
    path = tmp_path / "best.safetensors"
    before = BestWeights(metric="accuracy", path=path)
    evaluate = before.wrap(lambda m: iter_scores.pop(0))
    iter_scores = [{"accuracy": 0.5}, {"accuracy": 0.8}]
    for _ in range(2):
        _train(model, steps=1)
        evaluate(model)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    # The process dies here; the resumed one trains on and scores lower, yet keeps the 0.8 weights.
    after = BestWeights(metric="accuracy", path=path, resume=True)
    assert after.score == 0.8
    _train(model, steps=1)
    after.wrap(lambda m: {"accuracy": 0.7})(model)
    assert after.restore(model) and after.evaluation == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, best_state[k])
    fresh = BestWeights(metric="accuracy", path=path, resume=False)  # a new run ignores an old file
    assert fresh.score is None
    after.discard()
    assert not path.exists()


def test_logistic_regression_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (90,), generator=g)
    x = torch.randn(90, 5, generator=g) * 0.1 + F.one_hot(y, 5).float() * 3
    head = fit_logistic_regression(x, y, 3, l2=1e-3)
    assert (head(x).argmax(-1) == y).all()


def test_features_are_cached_by_content(make_model, tmp_path):
    from pretrainer.data.labeled import EncodedDataset

    backbone = make_model("bert")
    data = EncodedDataset(input_ids=[[2, 7, 8, 3], [2, 9, 3]], token_type_ids=[[0] * 4, [0] * 3],
                          labels=[0, 1], label_names=["a", "b"], pad_id=0)
    calls = []
    backbone.register_forward_hook(lambda *_: calls.append(1))
    first = cached_features(backbone, data, "mean", 8, tmp_path)
    assert calls and first.shape == (2, 32)
    calls.clear()
    again = cached_features(backbone, data, "mean", 8, tmp_path)
    assert not calls and torch.equal(first, again)  # no forward pass: read from the cache
    with torch.no_grad():
        backbone.blocks[0].mlp.fc.bias.add_(1.0)
    changed = cached_features(backbone, data, "mean", 8, tmp_path)
    assert calls and not torch.equal(first, changed)  # new weights, new key


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory, tiny_transfer_task, good_task_rows):
    """A pre-trained tiny BERT and a labeled task whose label is whether 'good' appears."""
    tmp = tmp_path_factory.mktemp("task")
    rows = good_task_rows(seed=0)
    # A vocabulary large enough that the verbalizer words are single tokens.
    cfg = tiny_transfer_task(tmp, rows, "--tokenizer.vocab_size=120", "--model.n_layers=2",
                             "--finetune.train.epochs=2.0")
    return cfg, tmp


@pytest.mark.parametrize("method", ["full", "freeze", "llrd", "lora", "probe", "soft_prompt", "cloze",
                                    "cloze_zero_shot"])
def test_each_method_fine_tunes_end_to_end(tiny_task, method):
    import dataclasses

    cfg, tmp = tiny_task
    run_dir = tmp / f"ft-{method}"
    prompt = dataclasses.replace(cfg.finetune.prompt, verbalizer=["bad", "good"], soft_tokens=4)
    cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, method=method, dir=str(run_dir),
                                                                prompt=prompt))
    results = finetune(cfg, log=lambda *_: None)
    assert results["method"] == method and 0 <= results["dev"]["accuracy"] <= 1
    assert json.loads((run_dir / "results.json").read_text()) == results
    full = sum(p.numel() for p in load_run(cfg.finetune.init)[0].parameters())
    if method in ("full", "llrd", "cloze"):  # everything the loss reaches: all but the [CLS] pooler
        d = load_run(cfg.finetune.init)[0].d_model
        assert results["trainable_params"] == results["total_params"] - (d * d + d)
    elif method != "cloze_zero_shot":
        assert 0 < results["trainable_params"] < full
    if method == "cloze_zero_shot":
        assert results["steps"] == 0 and results["n_labels"] == 0 and results["trainable_params"] == 0
    if method in ("full", "freeze", "llrd", "lora", "probe"):
        # A LoRA run is merged and a probe's standardisation folded into its head: both load
        # as plain classifiers, with no adapter or probe code.
        model, _ = load_run(run_dir)
        assert isinstance(model, SequenceClassifier)
        assert not any("lora" in n for n in model.state_dict())
    if method.startswith("cloze"):
        model, _ = load_run(run_dir)  # the backbone with its MLM head, exportable for masked LM
        assert hasattr(model, "lm_logits") and not isinstance(model, SequenceClassifier)


def test_few_labels_by_count_and_early_stopping(tiny_task):
    import dataclasses

    cfg, tmp = tiny_task
    ft = dataclasses.replace(cfg.finetune, n_labels=10, patience=1, dir=str(tmp / "ft-few"),
                             train=dataclasses.replace(cfg.finetune.train, epochs=50.0, lr=1e-5, eval_every=1))
    logged = []
    results = finetune(dataclasses.replace(cfg, finetune=ft), log=logged.append)
    assert results["n_labels"] == 10
    # With a tiny lr the dev score stalls, so patience 1 ends the run long before 50 epochs (100 steps).
    assert results["steps"] < 100
    assert any("early stop" in str(line) for line in logged)


def test_min_steps_gives_a_small_subset_more_passes(tiny_task):
    import dataclasses

    cfg, tmp = tiny_task
    ft = dataclasses.replace(cfg.finetune, n_labels=8, dir=str(tmp / "ft-min-steps"),
                             train=dataclasses.replace(cfg.finetune.train, batch_size=4, epochs=1.0, min_steps=7))
    results = finetune(dataclasses.replace(cfg, finetune=ft), log=lambda *_: None)
    assert results["steps"] == 7  # one epoch of 8 labels is 2 steps; min_steps raises it to 7


def test_evaluation_sample_is_stratified_fixed_and_keeps_line_numbers():
    from pretrainer.data.readers import LabeledExamples
    from pretrainer.transfer.tasks.classification import evaluation_sample

    examples = LabeledExamples(texts=[f"t{i}" for i in range(100)], pairs=None,
                               labels=["a"] * 80 + ["b"] * 20, source="test.jsonl", line_numbers=list(range(1, 101)))
    sample = evaluation_sample(examples, 10)
    assert len(sample) == 10 and sample.labels.count("b") == 2  # the class balance is kept
    assert evaluation_sample(examples, 10).texts == sample.texts  # the same sample every time
    i = sample.texts.index(sample.texts[-1])
    assert sample.where(i) == f"test.jsonl:{int(sample.texts[-1][1:]) + 1}"
    assert evaluation_sample(examples, 0) is examples and evaluation_sample(examples, 500) is examples
