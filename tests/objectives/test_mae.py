"""MAE: the share of hidden patches, a loss on the hidden patches alone, the decoder left behind,
training on a tiny fixed batch, its held-out metric and its one-line config errors."""

import pytest
import torch

from pretrainer.config import ObjectiveConfig, load_config
from pretrainer.errors import PretrainerError
from pretrainer.models import MLPConfig, ViTConfig, build_model
from pretrainer.objectives import mae
from pretrainer.objectives.mae import MaskedAutoencoder, choose_visible, pixel_targets
from pretrainer.runs import module_from_spec, module_spec

from ._image_data import ImageData

DATA = ImageData(size=16)


def mae_module(**cfg):
    objective = MaskedAutoencoder(ObjectiveConfig(name="mae", **{"mask_rate": 0.75, **cfg}), DATA.info)
    torch.manual_seed(0)
    return objective, objective.build(build_model(ViTConfig.tiny(), DATA.info)).train()


@pytest.mark.parametrize("rate,n_patches", [(0.75, 16), (0.75, 49), (0.5, 49), (0.3, 10), (0.9, 16)])
def test_exactly_the_stated_share_of_patches_is_hidden_in_every_image(rate, n_patches):
    keep, hidden = choose_visible(64, n_patches, rate, torch.device("cpu"))
    assert (hidden.sum(1) == round(rate * n_patches)).all()
    assert keep.shape == (64, n_patches - round(rate * n_patches))
    assert not hidden.gather(1, keep).any()  # the kept ones are exactly the visible ones
    assert (keep.diff(dim=1) > 0).all()  # each visible patch once, in grid order
    assert len({tuple(row.tolist()) for row in keep}) > 1  # images draw their own patches


def test_every_image_keeps_at_least_one_patch_and_hides_one():
    assert choose_visible(4, 16, 1.0, torch.device("cpu"))[1].sum(1).tolist() == [15] * 4
    assert choose_visible(4, 16, 0.01, torch.device("cpu"))[1].sum(1).tolist() == [1] * 4


def test_the_loss_reads_only_the_hidden_patches_of_the_target(monkeypatch):
    objective, model = mae_module()
    images = next(DATA.train_batches("images", 4, 0, seed=0))["images"]
    keep, hidden = choose_visible(4, 16, 0.75, torch.device("cpu"), torch.Generator().manual_seed(1))
    monkeypatch.setattr(mae, "choose_visible", lambda *a, **k: (keep, hidden))
    real_targets = mae.pixel_targets

    def loss_with_targets_changed_at(where):
        def targets(*args):
            t = real_targets(*args)
            return t + 5.0 * where.unsqueeze(-1)  # (B, N, p * p * C)
        monkeypatch.setattr(mae, "pixel_targets", targets)
        return objective(model, {"images": images})["loss"].item()

    loss = loss_with_targets_changed_at(torch.zeros_like(hidden))
    assert loss_with_targets_changed_at(~hidden) == loss  # visible patches' targets: no effect
    assert loss_with_targets_changed_at(hidden) > loss + 1  # hidden ones: the loss reads them
    # And by hand: the mean over the hidden patches of the mean squared pixel error.
    monkeypatch.setattr(mae, "pixel_targets", real_targets)
    with torch.no_grad():
        predicted = model.mae_decoder(model(images, keep=keep), keep)
        expected = (predicted - pixel_targets(images, 4, False)).pow(2).mean(-1)[hidden].mean()
    assert objective(model, {"images": images})["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_norm_pix_targets_have_zero_mean_unit_variance_per_patch():
    images = torch.rand(3, 3, 16, 16)
    t = pixel_targets(images, 4, True)
    assert t.shape == (3, 16, 48)
    torch.testing.assert_close(t.mean(-1), torch.zeros(3, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(3, 16), atol=1e-3, rtol=0)


def bar_pictures(n: int = 8, size: int = 16) -> torch.Tensor:
    """(n, 1, S, S): a bright bar across most of a noisy dark picture, horizontal or vertical,
    at a place set by i: the hidden part of a bar is predictable from its visible part."""
    x = 0.1 * torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    for i in range(n):
        at = 2 + (i // 2) % (size - 4)
        if i % 2:
            x[i, :, at:at + 2, 2:-2] = 0.9
        else:
            x[i, :, 2:-2, at:at + 2] = 0.9
    return x


# Normalised per patch, the background patches are pure noise at unit variance, which nothing
# can predict: that loss has a high floor and is asked to fall less.
@pytest.mark.parametrize("norm_pix,ratio", [(False, 0.7), (True, 0.9)])
def test_loss_falls_on_a_tiny_fixed_batch(norm_pix, ratio):
    objective, model = mae_module(norm_pix=norm_pix, decoder_layers=1, decoder_dim=32)
    batch = {"images": bar_pictures()}
    optimizer = torch.optim.AdamW(model.param_groups(0.0), lr=3e-3)
    losses = []
    for _ in range(60):
        out = objective(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimizer.step()
        losses.append(out["loss"].item())
    assert out["n_tokens"] == 8
    assert sum(losses[-5:]) / 5 < ratio * sum(losses[:5]) / 5, losses


def test_evaluation_is_repeatable_and_the_decoder_stays_behind():
    objective, model = mae_module()
    batches = list(objective.eval_batches(DATA, 4, 0, max_batches=2))
    torch.manual_seed(5)
    first = objective.evaluate(model, batches)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert objective.evaluate(model, batches) == first
    assert torch.equal(torch.rand(3), after)  # its masks come from its own generator
    assert set(first) == {"mae_loss"} and first["mae_loss"] > 0 and model.training
    assert model.head_names == ["mae_decoder"]
    assert not any(n.startswith("mae") for n, _ in model.backbone.named_parameters())
    spec = module_spec(model)
    assert spec["heads"] == [{"name": "mae_decoder", "config": {"n_layers": 2, "d_model": 128}}]
    rebuilt = module_from_spec(spec)
    rebuilt.load_state_dict(model.state_dict())  # model.json rebuilds the decoder at its size


def test_batches_are_augmented_images():
    objective, _ = mae_module()
    assert objective.batch_layout == "images" and objective.modality == "image"
    objective.check_data(DATA)
    next(objective.train_batches(DATA, 2, 0, seed=0))
    assert DATA.options[-1] == {"augment": True}


def test_only_a_vit_is_accepted_and_a_low_mask_rate_is_cautioned():
    objective, model = mae_module()
    assert objective.check_backbone(model.backbone) is None and objective.caution(model.backbone) is None
    reason = objective.check_backbone(build_model(MLPConfig.tiny(), DATA.info))
    assert reason and "\n" not in reason and "vit" in reason
    low = MaskedAutoencoder(ObjectiveConfig(name="mae"), DATA.info)  # mask_rate left at MLM's 0.15
    caution = low.caution(model.backbone)
    assert caution and "\n" not in caution and "0.75" in caution


@pytest.mark.parametrize("override,key", [("--objective.decoder_layers=0", "objective.decoder_layers"),
                                          ("--objective.decoder_dim=-8", "objective.decoder_dim"),
                                          ("--objective.norm_pix=maybe", "objective.norm_pix"),
                                          ("--objective.mask_rate=0", "objective.mask_rate")])
def test_bad_mae_keys_are_one_line_errors(override, key):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--objective.name=mae", override])
    assert key in str(error.value) and "\n" not in str(error.value)
