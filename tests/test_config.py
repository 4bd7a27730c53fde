import pytest

from pretrainer.config import Config, dump_toml, load_config, read_config_file, to_dict
from pretrainer.errors import PretrainerError


def write(tmp_path, text, name="c.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_model_subclass(tmp_path):
    cfg = load_config(write(tmp_path, '[model]\nname = "gpt"\nn_layers = 2\n'))
    assert type(cfg.model).__name__ == "GPTConfig"
    assert cfg.model.n_layers == 2
    assert cfg.train.batch_size == 32


def test_overrides_typed(tmp_path):
    cfg = load_config(write(tmp_path, "[train]\nlr = 1e-3\n"),
                      ["--train.lr=3e-4", "--model.n_layers=2", '--run.dir=x/y', "--data.train=a.txt"])
    assert cfg.train.lr == 3e-4 and cfg.model.n_layers == 2 and cfg.run.dir == "x/y"
    assert cfg.data.train == ["a.txt"]


@pytest.mark.parametrize("text, key", [
    ("[train]\nlrr = 1\n", "train.lrr"),
    ("[trian]\nlr = 1\n", "trian"),
    ("[model]\nname = \"bert\"\nn_layer = 2\n", "model.n_layer"),
    ("[finetune.train]\nepoch = 2\n", "finetune.train.epoch"),
])
def test_unknown_key_names_it(tmp_path, text, key):
    with pytest.raises(PretrainerError, match=f"unknown config key '{key}'"):
        load_config(write(tmp_path, text))


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(PretrainerError, match="did you mean 'train.lr'"):
        load_config(write(tmp_path, "[train]\nlrr = 1\n"))


@pytest.mark.parametrize("text, key", [
    ('[train]\nbatch_size = "big"\n', "train.batch_size"),
    ("[train]\nbatch_size = 1.5\n", "train.batch_size"),
    ("[impl]\ncompile = 1\n", "impl.compile"),
    ('[train]\nschedule = "exp"\n', "train.schedule"),
    ('[model]\nname = "nope"\n', "model.name"),
])
def test_wrong_type_names_key(tmp_path, text, key):
    with pytest.raises(PretrainerError, match=key.replace(".", r"\.")):
        load_config(write(tmp_path, text))


def test_overrides_leave_the_base_dict_alone():
    # The demo builds several configs from one preset dict: one config's overrides (say,
    # from_scratch) must not leak into the next.
    base = {"finetune": {"init": "a", "train": {"epochs": 2.0}}}
    scratch = load_config(None, ["--finetune.from_scratch=true", "--finetune.train.epochs=5"], base=base)
    plain = load_config(None, [], base=base)
    assert scratch.finetune.from_scratch and scratch.finetune.train.epochs == 5
    assert not plain.finetune.from_scratch and plain.finetune.train.epochs == 2
    assert base == {"finetune": {"init": "a", "train": {"epochs": 2.0}}}


def test_override_unknown_key():
    with pytest.raises(PretrainerError, match="unknown config key 'train.nope'"):
        load_config(None, ["--train.nope=1"])


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(PretrainerError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(PretrainerError, match="c.toml: cannot parse"):
        load_config(write(tmp_path, "[train\n"))


def test_yaml_and_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 0.002\nmodel:\n  name: gpt\n", "c.yaml"))
    assert cfg.train.lr == 0.002
    again = load_config(write(tmp_path, dump_toml(to_dict(cfg)), "resolved.toml"))
    assert again == cfg


def test_recipes_load():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/*.toml")):
        assert isinstance(load_config(path), Config)
        assert read_config_file(path)


def test_help_lists_every_key_with_its_own_defaults():
    from pretrainer.config import help_text

    lines = help_text()
    assert "--finetune.train.lr=0.0001  peak learning rate (0 leaves the weights as they are) [>= 0]" in lines  # \
        # fine-tuning's default, not pre-training's, and the rule the value must meet
    assert any(line.startswith("--model.n_layers=") for line in lines)
    assert any(line.startswith("--curve.fractions=") for line in lines)


def test_a_partial_nested_section_keeps_that_sections_defaults(tmp_path):
    """[finetune.train] with only lr set still has fine-tuning's defaults, not pre-training's."""
    path = tmp_path / "c.toml"
    path.write_text("[finetune.train]\nlr = 3e-5\n")
    cfg = load_config(path)
    default = load_config(None).finetune.train
    assert cfg.finetune.train.lr == 3e-5
    assert (cfg.finetune.train.eval_every, cfg.finetune.train.min_lr_ratio, cfg.finetune.train.beta2) == (
        default.eval_every, default.min_lr_ratio, default.beta2) == (0, 0.0, 0.999)
    assert load_config(None, ["--finetune.train.epochs=5"]).finetune.train.save_every == 0
