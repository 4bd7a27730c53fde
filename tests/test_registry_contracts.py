"""The contract every registered model, pre-training objective and data module keeps, checked
the same way for each. A new component gets these tests by registering; nothing here names one.
(Transfer methods have theirs in tests/transfer/test_method_contract.py.)
"""

import dataclasses
import random

import pytest
import torch

from pretrainer import api
from pretrainer.config import load_config
from pretrainer.data_info import DataInfo
from pretrainer.io import read_model_state, save_weights
from pretrainer.models import build_model, model_modality
from pretrainer.objectives.base import PretrainingObjective
from pretrainer.registry import DATA, MODELS, OBJECTIVES
from pretrainer.runs import load_run, write_run_header
from pretrainer.training.adversarial import adversarial_step, build_optimizer_set, is_adversarial
from pretrainer.training.loop import train_step

QUIET = dict(log=lambda *_: None)
WORDS = "the a cat dog bird sat ran flew on under over mat log tree quickly slowly".split()
B, T = 4, 24


def corpus_lines(n_docs: int = 60, seed: int = 0) -> list[str]:
    """Documents of a few short sentences with a little grammar, so there is something to learn."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = [f"{rng.choice(WORDS[:2])} {rng.choice(WORDS[2:5])} {rng.choice(WORDS[5:8])} "
                     f"{rng.choice(WORDS[8:11])} the {rng.choice(WORDS[11:14])} ." for _ in range(rng.randint(2, 4))]
        docs.append(" ".join(sentences))
    return docs


@pytest.fixture(scope="module")
def config_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("contracts")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    data = {"data": {"train": [str(corpus)], "cache_dir": str(root / "cache"), "holdout": 0.1},
            "tokenizer": {"vocab_size": 80, "min_frequency": 1, "sentinels": 8},  # sentinels: span corruption's
            "train": {"batch_size": B, "seq_len": T, "log_every": 1, "eval_every": 0, "eval_batches": 2,
                      "warmup": 0.0, "lr": 3e-3},
            "impl": {"threads": 1, "deterministic": True, "progress": False}}
    # A tiny teacher run on the same tokenizer, wider and deeper than the tiny students, for
    # objectives that learn from one (objective.teacher; the others ignore it).
    text = DATA.get("text")(load_config(base=data)).prepare(**QUIET)
    torch.manual_seed(1)
    teacher = build_model(dataclasses.replace(MODELS.get("bert").config_class.tiny(), n_layers=3, d_model=48),
                          text.info)
    write_run_header(root / "teacher", None, teacher, text)
    save_weights(teacher, root / "teacher" / "model.safetensors")
    # Every other data module brings a small generated data set of its kind (its `example`).
    others = {}
    for name in DATA.names():
        if name != "text":
            (root / name).mkdir()
            others[name] = DATA.get(name).example(root / name)
    # CLIP's text tower at the contract size (its default is a full BERT-mini).
    text_model = {"name": "bert", "n_layers": 2, "d_model": 32, "n_heads": 2, "max_len": 64, "dropout": 0.0,
                  "attn_dropout": 0.0}
    return {**data, "objective": {"teacher": str(root / "teacher"), "text_model": text_model},
            "_data_sections": others}


def make_config(config_data, **sections):
    """A config on the fixture's data; `data__name` picks a data module, which then reads its own
    example data set."""
    data = {k: dict(v) for k, v in config_data.items() if not k.startswith("_")}
    name = sections.get("data__name", "text")
    if name != "text":
        data["data"] = dict(config_data["_data_sections"][name])
    for key, value in sections.items():
        section, name = key.split("__")
        data.setdefault(section, {})[name] = value
    return load_config(base=data)


@pytest.fixture(scope="module")
def prepared(config_data):
    """Every registered data module, prepared on the tiny corpus."""
    return {name: DATA.get(name)(make_config(config_data, data__name=name)).prepare(**QUIET) for name in DATA.names()}


def tiny_model(name: str, info):
    torch.manual_seed(0)
    return build_model(MODELS.get(name).config_class.tiny(), info)


def data_for(objective: str, model_name: str) -> str:
    """The data module that feeds `model_name` and builds `objective`'s batches (two image modules
    exist: plain images, and image-caption pairs for CLIP)."""
    modality = getattr(OBJECTIVES.get(objective), "modality", "text")
    return data_module_for(model_name, OBJECTIVES.get(objective)(load_config().objective, _cases_infos()[modality]))


def data_module_for(model_name: str, objective=None) -> str:
    """The data module that feeds a model (same modality) and builds the objective's batches."""
    for name in DATA.names():
        module = DATA.get(name)
        if getattr(module, "modality", "text") != model_modality(MODELS.get(model_name)):
            continue
        if objective is None or all(layout in module.layouts for layout in objective.layouts()):
            return name
    return ""


def model_inputs(model, info):
    """A batch of inputs for the model's modality: (token ids (B, T), mask) or (images (B, C, S, S), None)."""
    if model_modality(model) == "image":
        return (torch.rand(B, info.channels, info.image_size, info.image_size),), None
    ids = torch.randint(len(info.special_ids), info.vocab_size, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, T - 5:] = False
    return (ids, mask), mask


def pretraining_objectives() -> list[str]:
    return [n for n in OBJECTIVES.names() if issubclass(OBJECTIVES.get(n), PretrainingObjective)]


def objective_cases(infos: dict[str, DataInfo]) -> list[tuple[str, str]]:
    """(objective, model) pairs where the objective accepts the model and some data module feeds
    the model and builds the objective's batches; `infos` describes each modality's data."""
    cases = []
    for objective in pretraining_objectives():
        built = OBJECTIVES.get(objective)(load_config().objective,
                                          infos[getattr(OBJECTIVES.get(objective), "modality", "text")])
        for m in MODELS.names():
            info = infos[model_modality(MODELS.get(m))]
            if data_module_for(m, built) and built.check_backbone(tiny_model(m, info)) is None:
                cases.append((objective, m))
    return cases


def _infos(prepared) -> dict[str, DataInfo]:
    return {getattr(DATA.get(name), "modality", "text"): data.info for name, data in prepared.items()}


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name, prepared, tmp_path):
    data = prepared[data_module_for(name)]
    model = tiny_model(name, data.info).eval()
    inputs, mask = model_inputs(model, data.info)
    hidden = model(*inputs)
    tokens = T if mask is not None else hidden.shape[1]  # an image model: its feature tokens
    assert hidden.shape == (B, tokens, model.d_model) and torch.isfinite(hidden).all()
    for pooling in ("cls", "mean"):
        assert model.pooled(hidden, mask, pooling).shape == (B, model.d_model)
    # Depth for layer-wise rules: embeddings at 0, blocks strictly above, nothing beyond the top + 1.
    depths = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert min(depths.values()) == 0 and max(depths.values()) <= model.n_layers + 1
    assert len(set(depths.values())) >= model.n_layers + 1
    # param_groups place every trainable parameter exactly once.
    grouped = [id(p) for g in model.param_groups(0.01) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    # save -> load gives the same outputs
    write_run_header(tmp_path, None, model, data)
    save_weights(model, tmp_path / "model.safetensors")
    loaded, _ = load_run(tmp_path)
    with torch.no_grad():  # both without autograd: SDPA may pick another kernel when its mask needs a gradient
        torch.testing.assert_close(loaded.eval()(*inputs), model(*inputs), atol=0, rtol=0)


# ---------------------------------------------------------------- objectives


def test_every_pretraining_objective_trains_some_registered_model(prepared):
    trained = {objective for objective, _ in objective_cases(_infos(prepared))}
    assert trained == set(pretraining_objectives())


def _cases_infos() -> dict[str, DataInfo]:
    text = DataInfo(modality="text", vocab_size=80, pad_id=0, cls_id=2, sep_id=3, mask_id=4, special_ids=(0, 2, 3, 4))
    return {"text": text, "image": DataInfo(modality="image", image_size=12, channels=1)}


def _cases():
    # Collected at import: the pairs depend only on the registries and the tiny configs.
    return objective_cases(_cases_infos())


@pytest.mark.parametrize("objective,model_name", _cases())
def test_objective_loss_is_finite_and_falls(objective, model_name, prepared, config_data):
    data_name = data_for(objective, model_name)
    data = prepared[data_name]
    cfg = make_config(config_data, objective__name=objective, data__name=data_name)
    built = OBJECTIVES.get(objective)(cfg.objective, data.info)
    if is_adversarial(built):
        pytest.skip("an adversarial objective's loss need not fall: test_adversarial_discriminator_learns instead")
    module = built.build(tiny_model(model_name, data.info)).train()
    batches = built.train_batches(data, B, T, seed=0)
    optimizer = torch.optim.AdamW(module.param_groups(0.0), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    # 40 steps, or up to 120 for an objective that starts slowly (word2vec's dot products grow
    # from zero at Adam's fixed step size): the loss must fall by a fifth within that.
    while len(losses) < 40 or (len(losses) < 120 and sum(losses[-5:]) / 5 >= 0.8 * sum(losses[:5]) / 5):
        out = built(module, next(batches))
        assert torch.isfinite(out["loss"]) and isinstance(out["n_tokens"], int)
        optimizer.zero_grad()
        out["loss"].backward()
        # every trainable parameter gets a gradient (DDP runs without find_unused_parameters)
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(out["loss"].detach().item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    metrics = built.evaluate(module, built.eval_batches(data, B, T, max_batches=2))
    assert metrics and all(isinstance(v, float) and v == v for v in metrics.values())


def _adversarial_cases():
    return [case for case in _cases() if is_adversarial(OBJECTIVES.get(case[0]))]


@pytest.mark.parametrize("objective,model_name", _adversarial_cases())
def test_adversarial_discriminator_learns(objective, model_name, prepared, config_data):
    """The contract of an objective with optimizer groups (a GAN), instead of a falling loss: after
    60 of fit's alternating steps on the toy set, its held-out discriminator accuracy (`d_acc`, real
    and generated images told apart, 0.5 = chance) is clearly above chance, every group's step
    moved only that group's parameters, and each group got gradients for all of them."""
    data_name = data_for(objective, model_name)
    data = prepared[data_name]
    # DCGAN's recipe (Adam at 2e-4, beta1 0.5): at the other contracts' 3e-3 the two players oscillate.
    cfg = make_config(config_data, objective__name=objective, data__name=data_name, train__lr=2e-4, train__beta1=0.5)
    built = OBJECTIVES.get(objective)(cfg.objective, data.info)
    torch.manual_seed(0)
    module = built.build(tiny_model(model_name, data.info)).train()
    optimizers = build_optimizer_set(module, built, cfg.train, torch.device("cpu"))
    batches = built.train_batches(data, B, T, seed=0)
    first = {n: p.detach().clone() for n, p in module.named_parameters()}
    for _ in range(60):
        out = adversarial_step(module, built, batches, optimizers, 1, train_step)
        assert not bool(out["nonfinite"]) and isinstance(out["n_tokens"], int)
    moved = {n for n, p in module.named_parameters() if not torch.equal(first[n], p)}
    for group, params in built.group_parameters(module).items():
        assert {n for n, _ in params} <= moved, f"group {group} left parameters untouched"
    metrics = built.evaluate(module, built.eval_batches(data, B, T, max_batches=4))
    assert all(isinstance(v, float) and v == v for v in metrics.values())
    assert metrics["d_acc"] > 0.6, metrics


@pytest.mark.parametrize("objective,model_name", _cases())
def test_objective_run_saves_loads_and_resumes_exactly(objective, model_name, prepared, config_data, tmp_path,
                                                       monkeypatch, crash_after):
    data_name = data_for(objective, model_name)

    def cfg_for(run_dir):
        return make_config(config_data, objective__name=objective, model__name=model_name, run__dir=str(run_dir),
                           train__max_steps=6, train__save_every=2, data__name=data_name)

    whole = api.pretrain(cfg_for(tmp_path / "whole"), **QUIET)
    assert whole.step == 6
    module = DATA.get(data_name)
    real = module.train_batches
    monkeypatch.setattr(module, "train_batches", lambda self, *a, **k: crash_after(real(self, *a, **k), 5))
    with pytest.raises(RuntimeError, match="simulated"):
        api.pretrain(cfg_for(tmp_path / "killed"), **QUIET)
    monkeypatch.undo()
    api.pretrain(cfg_for(tmp_path / "killed"), resume=True, **QUIET)
    a = read_model_state(tmp_path / "whole" / "model.safetensors")
    b = read_model_state(tmp_path / "killed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume is not exact"
    # The run loads as the objective's module, with its heads, and evaluates the same twice.
    module, _ = load_run(tmp_path / "whole")
    info = prepared[data_name].info
    built = OBJECTIVES.get(objective)(cfg_for(tmp_path).objective, info).build(tiny_model(model_name, info))
    assert module.head_names == built.head_names
    evaluated = api.evaluate(cfg_for(tmp_path / "whole"), **QUIET)
    assert evaluated and evaluated == api.evaluate(cfg_for(tmp_path / "whole"), **QUIET)


# ---------------------------------------------------------------- data modules


@pytest.mark.parametrize("name", DATA.names())
def test_data_module_contract(name, prepared, config_data, tmp_path):
    data = prepared[name]
    info = data.info
    assert info.modality and (info.vocab_size > 0 or info.image_size > 0)
    assert data.has_heldout is True  # the contract fixture's corpus holds out documents
    for layout in data.layouts:
        loader = data.train_batches(layout, B, T, seed=3)
        first = [next(loader) for _ in range(3)]
        assert all(isinstance(v, torch.Tensor) and len(v) == B for batch in first for v in batch.values())
        state = loader.state_dict()
        expected = next(loader)
        again = data.train_batches(layout, B, T, seed=3)
        again.load_state_dict(state)
        got = next(again)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got), layout
        one = list(data.eval_batches(layout, B, T, max_batches=2))
        two = list(data.eval_batches(layout, B, T, max_batches=2))
        assert one and all(torch.equal(x[k], y[k]) for x, y in zip(one, two) for k in x)
    # A run saves what it needs to read new data the same way.
    data.save(tmp_path)
    cfg = make_config(config_data, data__name=name)
    inherited = DATA.get(name).inherit(dataclasses.replace(cfg), tmp_path)
    assert DATA.get(name)(inherited).prepare(**QUIET).info == info
