"""Structured pruning: removing a head or a neuron equals masking it, importances pick what goes,
the pruned model saves, loads, fine-tunes and exports (transformers loads it), refusals are one line."""

import copy
import json
import re

import pytest
import torch

from pretrainer.compression.prune import (Importance, apply_plan, drop_layers, measure_importance, plan_pruning,
                                          prune_heads, prune_neurons)
from pretrainer.config import load_config
from pretrainer.errors import PretrainerError
from pretrainer.io import save_weights
from pretrainer.models import SequenceClassifier, build_model
from pretrainer.runs import load_run, write_run_header


def classifier(tiny_config, n_heads=4, n_layers=3, vocab=61, pooling="cls"):
    torch.manual_seed(0)
    backbone = build_model(tiny_config("bert", n_heads=n_heads, n_layers=n_layers, d_ff=48), vocab)
    model = SequenceClassifier(backbone, 3, pooling=pooling, dropout=0.0).eval()
    with torch.no_grad():  # non-trivial biases, so a misplaced row or column shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape) * 0.1)
    return model


def batch(n=4, T=12, vocab=61, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, T), generator=g)
    mask = torch.ones(n, T, dtype=torch.bool)
    mask[1, T // 2:] = False  # one padded row: the masked attention path
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 3, (n,), generator=g)}


def masked_output(model, heads: dict, neurons: dict, layers=()):
    """The model's output with the given heads' outputs and neurons' activations set to zero
    (hooks written here, independent of the pruning code) and `layers` skipped."""
    handles = []
    for i, block in enumerate(model.backbone.blocks):
        D = block.attn.head_dim

        def zero_heads(module, args, hs=heads.get(i, []), D=D):
            x = args[0].clone()
            for h in hs:
                x[..., h * D:(h + 1) * D] = 0
            return (x,)

        def zero_neurons(module, args, js=neurons.get(i, [])):
            x = args[0].clone()
            x[..., js] = 0
            return (x,)

        handles.append(block.attn.proj.register_forward_pre_hook(zero_heads))
        handles.append(block.mlp.proj.register_forward_pre_hook(zero_neurons))
        if i in layers:
            handles.append(block.register_forward_hook(lambda m, args, out: args[0]))
    try:
        with torch.no_grad():
            return model(batch())
    finally:
        for h in handles:
            h.remove()


def test_pruning_heads_and_neurons_equals_masking_them(tiny_config):
    model = classifier(tiny_config)
    heads, neurons = {0: [1], 1: [0, 3], 2: [2]}, {0: [5, 7], 2: list(range(20))}
    expected = masked_output(model, heads, neurons)
    pruned = copy.deepcopy(model)
    prune_heads(pruned, heads)
    prune_neurons(pruned, neurons)
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch()), expected, atol=1e-6, rtol=0)
    blocks = pruned.backbone.blocks
    assert [b.attn.n_heads for b in blocks] == [3, 2, 3]
    assert blocks[1].attn.qkv.weight.shape == (3 * 2 * 8, 32) and blocks[1].attn.proj.weight.shape == (32, 16)
    assert [b.mlp.fc.out_features for b in blocks] == [46, 48, 28]
    assert pruned.config.pruned_heads == [[1], [0, 3], [2]] and pruned.config.ffn_sizes == [46, 48, 28]
    # a second round names positions in the pruned layer; the config keeps original indices
    prune_heads(pruned, {1: [1]})  # position 1 of heads [1, 2] is head 2
    assert pruned.config.pruned_heads[1] == [0, 2, 3]
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch()), masked_output(model, {**heads, 1: [0, 2, 3]}, neurons),
                                   atol=1e-6, rtol=0)
    # dropping a layer equals skipping it
    drop_layers(pruned, [0])
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch()), masked_output(model, {**heads, 1: [0, 2, 3]}, neurons, [0]),
                                   atol=1e-6, rtol=0)
    assert pruned.config.n_layers == 2 and pruned.config.pruned_heads == [[0, 2, 3], [2]]


def test_uniform_widths_become_d_ff(tiny_config):
    model = classifier(tiny_config)
    prune_neurons(model, {i: list(range(8)) for i in range(3)})
    assert model.config.d_ff == 40 and model.config.ffn_sizes == []


def test_pruned_model_round_trips_through_a_run_directory(tiny_config, tmp_path, wordpiece_tokenizer):
    model = classifier(tiny_config, vocab=wordpiece_tokenizer.vocab_size)
    apply_plan(model, plan_pruning(_importance(model), heads_fraction=0.5, ffn_fraction=0.3, layers=1,
                                   scope="global"))
    write_run_header(tmp_path / "run", None, model, wordpiece_tokenizer)
    save_weights(model, tmp_path / "run" / "model.safetensors")
    spec = json.loads((tmp_path / "run" / "model.json").read_text())
    assert spec["config"]["n_layers"] == 2 and spec["config"]["pruned_heads"] and spec["config"]["ffn_sizes"]
    loaded, _ = load_run(tmp_path / "run")
    b = batch(vocab=wordpiece_tokenizer.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(b), model(b), atol=0, rtol=0)
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in model.parameters())


def _importance(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = model.backbone.blocks
    return Importance(heads=[torch.rand(b.attn.n_heads, generator=g) for b in blocks],
                      neurons=[torch.rand(b.mlp.fc.out_features, generator=g) for b in blocks],
                      layers=torch.rand(len(blocks), generator=g), batches=1)


def test_plan_takes_the_least_important():
    imp = Importance(heads=[torch.tensor([4., 3, 2, 1]), torch.tensor([1., 2, 3, 4]), torch.tensor([9., 9, 0, 9])],
                     neurons=[torch.arange(48.)] * 3, layers=torch.tensor([0.5, 0.1, 0.9]), batches=1)
    plan = plan_pruning(imp, heads_fraction=0.5, ffn_fraction=0.25, layers=1)
    assert plan.layers == [1]  # skipping block 1 costs least
    assert plan.heads == {0: [2, 3], 2: [0, 2]}  # per layer: the two lowest (ties: the first)
    assert plan.neurons == {0: list(range(12)), 2: list(range(12))}
    plan = plan_pruning(imp, heads_fraction=0.25, scope="global")  # 3 of 12, ranked across layers
    assert sum(map(len, plan.heads.values())) == 3 and 2 in plan.heads[2]


def test_importance_is_measured_without_touching_the_weights(tiny_config):
    model = classifier(tiny_config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = lambda m, b: torch.nn.functional.cross_entropy(m(b), b["labels"])  # noqa: E731
    imp = measure_importance(model, iter([batch(seed=s) for s in range(3)]), loss, n_batches=2)
    assert imp.batches == 2 and [len(h) for h in imp.heads] == [4, 4, 4]
    assert all((h >= 0).all() and h.sum() > 0 for h in imp.heads + imp.neurons)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    # a head whose removal is exactly free (its value and output weights zero) scores zero
    with torch.no_grad():
        attn = model.backbone.blocks[0].attn
        attn.qkv.weight[2 * 32 + 8:2 * 32 + 16] = 0
        attn.qkv.bias[2 * 32 + 8:2 * 32 + 16] = 0
    imp = measure_importance(model, iter([batch(seed=s) for s in range(2)]), loss, n_batches=2)
    assert imp.heads[0][1] == 0 and imp.heads[0].min() == imp.heads[0][1]


def test_refusals_are_one_line(tiny_config, make_model):
    model = classifier(tiny_config)
    imp = _importance(model)
    for kwargs, text in [(dict(heads_fraction=1.0), "asks to remove 12 attention heads of 12, but at most 9 can go"),
                         (dict(ffn_fraction=1.5), "MLP neurons"),
                         (dict(layers=3), "'prune.layers' = 3: the encoder has 3 layers"),
                         (dict(heads_fraction=-0.1), "must be in [0, 1)")]:
        with pytest.raises(PretrainerError, match=re.escape(text)) as e:
            plan_pruning(imp, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(PretrainerError, match=r"layer 0 has 4 attention heads; cannot remove attention heads \[7\]"):
        prune_heads(model, {0: [7]})
    with pytest.raises(PretrainerError, match="leaves none"):
        prune_heads(model, {0: [0, 1, 2, 3]})
    with pytest.raises(PretrainerError, match="BERT-family encoder; this model is a GPT"):
        prune_heads(make_model("gpt"), {0: [0]})


# ---------------------------------------------------------------- Hugging Face export

transformers = pytest.importorskip("transformers")


def test_pruned_classifier_exports_to_transformers(tiny_config, tmp_path, wordpiece_tokenizer):
    from pretrainer.interop.hf_export import export_hf

    model = classifier(tiny_config, vocab=wordpiece_tokenizer.vocab_size)
    prune_heads(model, {0: [1], 1: [0, 3], 2: [2]})
    prune_neurons(model, {1: list(range(10))})  # uneven widths: exported at the widest, zero-padded
    drop_layers(model, [2])
    run = tmp_path / "run"
    write_run_header(run, None, model, wordpiece_tokenizer)
    save_weights(model, run / "model.safetensors")
    (run / "results.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    out = export_hf(run, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["intermediate_size"] == 48 and "pruned_heads" not in config
    transformers.logging.set_verbosity_error()
    hf, info = transformers.AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True,
                                                                               output_loading_info=True)
    assert not any(info.values())
    b = batch(vocab=wordpiece_tokenizer.vocab_size)
    with torch.no_grad():
        got = hf.eval()(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(),
                        token_type_ids=b["token_type_ids"]).logits
        torch.testing.assert_close(got, model(b), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- the command


def test_prune_command_recovers_saves_and_fine_tunes(tmp_path, tiny_transfer_task, good_task_rows):
    from pretrainer.compress import prune
    from pretrainer.transfer.finetune import finetune

    cfg = tiny_transfer_task(tmp_path, good_task_rows(), "--model.n_heads=4", "--model.n_layers=2",
                             "--finetune.train.epochs=2.0")
    finetune(cfg, log=lambda *_: None)
    source = tmp_path / "run" / "finetune"
    pcfg = load_config(None, [f'--run.dir="{tmp_path}"', f'--prune.init="{source}"', "--prune.heads_fraction=0.5",
                              "--prune.ffn_fraction=0.5", "--prune.layers=1", "--prune.calibration_batches=2",
                              "--prune.recover_epochs=1.0", "--finetune.train.batch_size=8", "--impl.progress=false"])
    results = prune(pcfg, log=lambda *_: None)
    out = tmp_path / "prune"
    record = results["pruned"]
    assert record["encoder_params_after"] < 0.3 * record["encoder_params_before"]
    assert record["layer_shapes_after"] == [[2, 32]] and len(record["layers_removed"]) == 1
    assert results["steps"] > 0 and "accuracy" in results["dev"] and results["labels"] == ["0", "1"]
    model, _ = load_run(out)
    assert model.config.n_layers == 1 and model.backbone.blocks[0].attn.n_heads == 2
    from pretrainer.transfer.scoring import evaluate_finetuned

    assert evaluate_finetuned(load_config(out / "config.toml"), log=lambda *_: None)["dev"]["accuracy"] \
        == results["dev"]["accuracy"]
    # the pruned run is a start like any other: fine-tune it
    ft = load_config(None, [f'--run.dir="{tmp_path / "again"}"', f'--finetune.init="{out}"',
                            f'--finetune.data.train="{tmp_path / "labeled.jsonl"}"', "--finetune.train.epochs=1.0",
                            "--finetune.train.batch_size=8", "--finetune.max_len=32", "--impl.progress=false"])
    again = finetune(ft, log=lambda *_: None)
    assert again["total_params"] == results["total_params"]
    with pytest.raises(PretrainerError, match="already exists"):
        prune(pcfg, log=lambda *_: None)
    with pytest.raises(PretrainerError, match="needs a fine-tuned run"):
        prune(load_config(None, [f'--prune.init="{tmp_path / "run"}"', f'--prune.dir="{tmp_path / "x"}"']))


def test_cli_refusals_are_one_line(tmp_path, capsys):
    from pretrainer.cli.main import main

    config = tmp_path / "c.toml"
    config.write_text("[run]\nseed = 0\n")
    assert main(["prune", str(config)]) == 2
    assert main(["quantize", str(config), f"--quantize.init={tmp_path}"]) == 2
    assert main(["prune", str(config), f"--prune.init={tmp_path}", "--prune.scope=all"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: config key 'prune.init' is empty: name the run directory to read",
        f"error: config key 'quantize.init' = '{tmp_path}': not a run directory (no model.json)",
        f"error: {config}: config key 'prune.scope' must be one of layer, global; got 'all'"]
