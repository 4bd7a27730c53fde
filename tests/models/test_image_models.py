"""The image backbones: ViT (patches, positions, [CLS], the visible-patch path MAE uses) and
the dense network on flattened images; both sized from the data's description."""

import pytest
import torch

from pretrainer.config import load_config
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models import MLPConfig, ViTConfig, build_model, model_config_dict, model_from_config_dict
from pretrainer.models.vit import patchify, unpatchify

INFO = DataInfo(modality="image", image_size=16, channels=3)


def vit(**overrides):
    torch.manual_seed(0)
    return build_model(ViTConfig(**{**vars(ViTConfig.tiny()), **overrides}), INFO).eval()


def test_vit_gives_cls_then_one_token_per_patch():
    model = vit()
    images = torch.rand(2, 3, 16, 16)
    hidden = model(images)
    assert model.config.image_size == 16 and model.config.channels == 3  # taken from the data
    assert hidden.shape == (2, 1 + 16, 32) and model.n_patches == 16
    torch.testing.assert_close(model.pooled(hidden, pooling="cls"), hidden[:, 0])
    torch.testing.assert_close(model.pooled(hidden, pooling="mean"), hidden[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pooling"):
        model.pooled(hidden, pooling="max")
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(2, 3, 12, 12))


def test_patch_tokens_are_a_linear_map_of_patchify_in_grid_order():
    """The conv's token j is patch j of `patchify`: what MAE's pixel targets rely on."""
    model = vit()
    images = torch.rand(2, 3, 16, 16)
    w = model.patch_embed.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (d, p * p * C), channels last as patchify
    expected = patchify(images, 4) @ w.T + model.patch_embed.bias + model.pos_embed[1:]
    torch.testing.assert_close(model.patch_tokens(images), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(unpatchify(patchify(images, 4), 4, 3), images)


def test_keep_runs_the_encoder_on_those_patches_alone():
    model = vit()
    images = torch.rand(2, 3, 16, 16)
    every = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(model(images, keep=every), model(images))
    keep = torch.tensor([[0, 5, 9], [3, 4, 15]])
    out = model(images, keep=keep)
    assert out.shape == (2, 4, 32)
    # A hidden patch's pixels do not reach the output; a kept patch's do.
    changed = images.clone()
    changed[0, :, 4:8, 4:8] = 1.0  # patch 5 of image 0 (row 1, column 1): kept
    changed[1, :, 0:4, 0:4] = 1.0  # patch 0 of image 1: hidden
    again = model(changed, keep=keep)
    torch.testing.assert_close(again[1], out[1])
    assert not torch.allclose(again[0], out[0])


def test_vit_depths_and_weight_decay_groups():
    model = vit()
    depths = {n: model.layer_id(n) for n, _ in model.named_parameters()}
    assert depths["patch_embed.weight"] == depths["pos_embed"] == depths["cls_token"] == 0
    assert depths["blocks.0.attn.qkv.weight"] == 1 and depths["blocks.1.mlp.fc.bias"] == 2
    assert depths["ln_f.weight"] == 3
    decay, no_decay = model.param_groups(0.05)
    assert any(p is model.pos_embed for p in decay["params"]) and any(p is model.cls_token for p in no_decay["params"])


def test_model_json_rebuilds_the_same_vit_and_mlp():
    for model in (vit(), build_model(MLPConfig(hidden=[24, 8]), INFO).eval()):
        again = model_from_config_dict(model_config_dict(model))
        again.load_state_dict(model.state_dict())
        images = torch.rand(2, 3, 16, 16)
        assert torch.equal(again.eval()(images), model(images))


def test_dense_network_gives_one_vector_per_image():
    model = build_model(MLPConfig(hidden=[24, 8], activation="tanh"), INFO).eval()
    images = torch.rand(5, 3, 16, 16)
    hidden = model(images)
    assert hidden.shape == (5, 1, 8) and model.d_model == 8 and model.n_layers == 1
    expected = torch.tanh(model.layers[1](torch.tanh(model.layers[0](images.flatten(1)))))
    torch.testing.assert_close(hidden[:, 0], expected)
    for pooling in ("mean", "cls"):
        torch.testing.assert_close(model.pooled(hidden, pooling=pooling), expected)
    assert {n: model.layer_id(n) for n, _ in model.named_parameters()} == {
        "layers.0.weight": 0, "layers.0.bias": 0, "layers.1.weight": 1, "layers.1.bias": 1}


def test_image_models_refuse_data_without_images_or_of_another_size():
    text = DataInfo(modality="text", vocab_size=50)
    for cfg in (ViTConfig.tiny(), MLPConfig.tiny()):
        with pytest.raises(PretrainerError, match="not images"):
            build_model(cfg, text)
    with pytest.raises(PretrainerError, match="model.image_size"):
        build_model(ViTConfig(image_size=32, channels=3), INFO)
    with pytest.raises(PretrainerError, match="model.patch_size"):  # 5 does not divide the data's 16
        build_model(ViTConfig(patch_size=5), INFO)
    model = build_model(MLPConfig(image_size=8, channels=1), 0)  # sized by its own config alone
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 256)


@pytest.mark.parametrize("override,key", [("--model.patch_size=0", "model.patch_size"),
                                          ("--model.n_heads=3", "model.n_heads"),
                                          ("--model.image_size=-1", "model.image_size"),
                                          ("--model.image_size=30", "model.patch_size")])
def test_bad_vit_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--model.name=vit", override])
    assert key in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("override,key", [("--model.hidden=[]", "model.hidden"),
                                          ("--model.hidden=[64, 0]", "model.hidden"),
                                          ("--model.activation=swish", "model.activation"),
                                          ("--model.dropout=1.0", "model.dropout")])
def test_bad_mlp_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--model.name=mlp", override])
    assert key in str(error.value) and "\n" not in str(error.value)


def test_pretrain_plans_an_image_model_from_the_config_alone():
    """Before the data is read, `pretrain` checks the objective against a planned model; an image
    model has no vocabulary to plan with, so it gets a stand-in size that its patches fit."""
    from pretrainer.api import check_objective_fits, planned_backbone

    cfg = load_config(None, ["--data.name=images", "--model.name=vit", "--model.patch_size=7", "--objective.name=mae"])
    planned = planned_backbone(cfg)
    assert planned.config.image_size == 14 and planned.n_patches == 4
    check_objective_fits(cfg, planned)  # MAE accepts it
    cfg = load_config(None, ["--data.name=images", "--model.name=mlp", "--objective.name=mae"])
    planned = planned_backbone(cfg)
    with pytest.raises(PretrainerError, match="objective.name"):
        check_objective_fits(cfg, planned)
