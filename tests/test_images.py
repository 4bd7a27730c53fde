"""Images: reading npz arrays and folders, the cache, the "images" / "views" layouts and their
augmentations (deterministic, resume-exact), the resnet surface, the autoencoder, and fine-tuning
an image backbone (full, probe, curve) on a small generated set and on real MNIST digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pretrainer import api
from pretrainer.config import load_config
from pretrainer.data.image_files import read_images
from pretrainer.data.image_processor import ImageProcessor, load_processor
from pretrainer.data.labeled_images import read_labeled_images, split_spec
from pretrainer.data_info import DataInfo
from pretrainer.errors import PretrainerError
from pretrainer.models import build_model, model_modality
from pretrainer.models.resnet import ResNetConfig
from pretrainer.objectives.autoencoder import Autoencoder
from pretrainer.registry import DATA
from pretrainer.runs import load_run
from pretrainer.transfer.curve import curve
from pretrainer.transfer.finetune import finetune
from pretrainer.transfer.scoring import evaluate_finetuned

QUIET = dict(log=lambda *_: None)
SIZE = 12


def shapes(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size) uint8 images of two classes: a bright horizontal bar (0) or a vertical bar
    (1) at a random place, over faint noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, size=(n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    for image, label in zip(images, labels):
        at, start = rng.integers(1, size - 2), rng.integers(0, size // 3)
        if label == 0:
            image[at:at + 2, start:start + size // 2 + 2] = 255
        else:
            image[start:start + size // 2 + 2, at:at + 2] = 255
    return images, labels


def image_config(tmp_path, npz, *overrides: str):
    return load_config(None, ["--data.name=images", f'--data.train=["{npz}"]', f'--data.cache_dir="{tmp_path / "cache"}"',
                              "--data.holdout=0.1", *overrides])


@pytest.fixture
def npz(tmp_path):
    images, labels = shapes(80)
    path = tmp_path / "shapes.npz"
    test_images, test_labels = shapes(40, seed=1)
    np.savez(path, x_train=images, y_train=labels, x_test=test_images, y_test=test_labels)
    return path


# ---------------------------------------------------------------- reading


def test_npz_grayscale_and_channels_last_and_conversions(tmp_path):
    gray = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    rgb = np.stack([gray, gray // 2, gray // 4], axis=-1)  # (N, H, W, 3)
    np.savez(tmp_path / "a.npz", images=gray, x_train=rgb)
    assert read_images(tmp_path / "a.npz").images.shape == (2, 3, 4, 4)  # x_train first
    assert read_images(tmp_path / "a.npz", images_key="images").images.shape == (2, 1, 4, 4)
    to_gray = read_images(tmp_path / "a.npz", channels=1).images
    expected = np.rint(0.299 * gray + 0.587 * (gray // 2) + 0.114 * (gray // 4)).astype(np.uint8)
    assert np.array_equal(to_gray[:, 0], expected)
    assert read_images(tmp_path / "a.npz", images_key="images", channels=3).images.shape == (2, 3, 4, 4)
    assert read_images(tmp_path / "a.npz", size=2).images.shape == (2, 3, 2, 2)
    with pytest.raises(PretrainerError, match=r"a\.npz: no array 'pixels' \(the file holds: images, x_train\)"):
        read_images(tmp_path / "a.npz", images_key="pixels")


def test_image_folders_flat_and_by_class(tmp_path):
    images, _ = shapes(4)
    (tmp_path / "flat").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "flat" / f"{i}.png")
        (tmp_path / "classes" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "classes" / f"c{i % 2}" / f"{i}.png")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = read_images(tmp_path / "flat", labeled=False)
    assert flat.images.shape == (4, 1, SIZE, SIZE) and flat.skipped_files == 1
    assert read_images(tmp_path / "classes").images.shape == (4, 1, SIZE, SIZE)  # unlabeled: labels not kept
    labeled = read_images(tmp_path / "classes", labeled=True)
    assert labeled.labels == ["c0", "c0", "c1", "c1"]
    assert np.array_equal(labeled.images[0, 0], images[0])  # PNG is lossless
    assert read_labeled_images(str(tmp_path / "classes")).labels == labeled.labels
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "classes" / "c1" / "colour.png")
    with pytest.raises(PretrainerError, match="colour.png: RGB image among grayscale"):
        read_images(tmp_path / "classes", labeled=True)
    assert read_images(tmp_path / "classes", labeled=True, channels=3).images.shape == (5, 3, SIZE, SIZE)


def test_split_spec_names_arrays():
    assert split_spec("m.npz") == ("m.npz", "", "")
    assert split_spec("m.npz#test") == ("m.npz", "x_test", "y_test")
    assert split_spec("m.npz#pix, lab") == ("m.npz", "pix", "lab")


def test_prepare_caches_by_content_and_holds_out(tmp_path, npz):
    logs = []
    data = DATA.get("images")(image_config(tmp_path, npz)).prepare(log=logs.append)
    assert data.info == DataInfo(modality="image", image_size=SIZE, channels=1)
    assert (len(data.train), len(data.eval)) == (72, 8)
    held = {data.eval[i].tobytes() for i in range(len(data.eval))}
    assert not held & {data.train[i].tobytes() for i in range(len(data.train))}
    DATA.get("images")(image_config(tmp_path, npz, "--data.rotate=30.0")).prepare(log=logs.append)
    assert any("using cached images" in line for line in logs)  # augmentations do not re-prepare
    resized = DATA.get("images")(image_config(tmp_path, npz, "--data.image_size=8", "--data.channels=3")).prepare(**QUIET)
    assert resized.info.image_size == 8 and resized.info.channels == 3
    data.save(tmp_path / "run")
    assert load_processor(tmp_path / "run") == ImageProcessor(image_size=SIZE, channels=1)


# ---------------------------------------------------------------- batches and augmentations


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout,options", [("views", {}), ("images", {"augment": True})])
def test_augmented_batches_are_seeded_and_resume_exactly(tmp_path, npz, layout, options):
    data = DATA.get("images")(image_config(tmp_path, npz, "--data.blur=0.5")).prepare(**QUIET)
    rng_before = torch.get_rng_state()
    first = data.train_batches(layout, 8, 0, seed=5, **options)
    whole = [next(first) for _ in range(12)]  # past an epoch (72 images / 8)
    assert torch.equal(torch.get_rng_state(), rng_before), "augmentations drew from the global generator"
    again = data.train_batches(layout, 8, 0, seed=5, **options)
    assert all(_equal(next(again), batch) for batch in whole)
    resumed = data.train_batches(layout, 8, 0, seed=5, **options)
    interrupted = data.train_batches(layout, 8, 0, seed=5, **options)
    for _ in range(4):
        next(interrupted)
    resumed.load_state_dict(interrupted.state_dict())
    assert all(_equal(next(resumed), batch) for batch in whole[4:])
    other = next(data.train_batches(layout, 8, 0, seed=6, **options))
    assert not torch.equal(other["images"], whole[0]["images"])
    plain = next(data.train_batches("images", 8, 0, seed=5))["images"]  # the same images, not augmented
    assert not torch.equal(plain, whole[0]["images"])  # augmented, not the stored pixels
    assert 0 <= float(whole[0]["images"].min()) and float(whole[0]["images"].max()) <= 1


def test_two_views_differ_and_ranks_share_a_global_batch(tmp_path, npz):
    data = DATA.get("images")(image_config(tmp_path, npz, "--data.crop_scale=[0.3, 1.0]")).prepare(**QUIET)
    batch = next(data.train_batches("views", 8, 0, seed=0))
    assert batch["images"].shape == batch["images2"].shape == (8, 1, SIZE, SIZE)
    assert (batch["images"] - batch["images2"]).abs().mean() > 0.01
    plain = data.train_batches("images", 8, 0, seed=0)
    ranks = [data.train_batches("images", 4, 0, seed=0, rank=r, world_size=2) for r in range(2)]
    whole = next(plain)["images"]
    parts = [next(loader)["images"] for loader in ranks]
    assert torch.equal(torch.stack([parts[0], parts[1]], 1).flatten(0, 1), whole)  # rank r takes items r, r + 2, ...
    eval_views = list(data.eval_batches("views", 4, 0))
    assert all(_equal(a, b) for a, b in zip(eval_views, data.eval_batches("views", 4, 0)))
    plain_eval = next(data.eval_batches("images", 4, 0))["images"]
    assert torch.equal(plain_eval, ImageProcessor.to_float(data.eval[:4]))  # held-out "images": never augmented


# ---------------------------------------------------------------- resnet and the autoencoder


def test_resnet_surface_and_sizing():
    info = DataInfo(modality="image", image_size=28, channels=3)
    model = build_model(ResNetConfig(widths=[8, 16, 32], blocks=[1, 2, 1], groups=4, stem_stride=2), info)
    assert model_modality(model) == "image" and model.config.image_size == 28 and model.config.channels == 3
    hidden = model(torch.rand(2, 3, 28, 28))
    assert hidden.shape == (2, model.grid_size ** 2, 32) and model.grid_size == 4  # 28 -> 14 -> 7 -> 4
    assert model.pooled(hidden).shape == (2, 32) and model.n_layers == 4
    assert {model.layer_id(n) for n, _ in model.named_parameters()} == {0, 1, 2, 3, 4}
    with pytest.raises(PretrainerError, match="model.image_size' = 32 but the data's images have image_size = 28"):
        build_model(ResNetConfig(image_size=32), info)
    # GroupNorm: an image's features do not depend on the rest of the batch, in either mode
    model.train()
    x = torch.rand(4, 3, 28, 28)
    torch.testing.assert_close(model(x)[:1], model(x[:1]))


@pytest.mark.parametrize("overrides", [{"loss": "mse"}, {"loss": "bce", "noise": 0.3, "noise_type": "mask"},
                                       {"noise": 0.2}])
def test_autoencoder_loss_falls_and_evaluates_the_same_twice(tmp_path, npz, overrides):
    cfg = image_config(tmp_path, npz, *(f"--objective.{k}={json.dumps(v)}" for k, v in overrides.items()))
    data = DATA.get("images")(cfg).prepare(**QUIET)
    objective = Autoencoder(cfg.objective, data.info)
    torch.manual_seed(0)
    module = objective.build(build_model(ResNetConfig.tiny(), data.info))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    batches = objective.train_batches(data, 16, 0, seed=0)
    losses = []
    for _ in range(30):
        out = objective(module, next(batches))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    first = objective.evaluate(module, objective.eval_batches(data, 4, 0))
    assert first == objective.evaluate(module, objective.eval_batches(data, 4, 0)) and first["recon_mse"] < 0.25


# ---------------------------------------------------------------- transfer


def pretrained_config(tmp_path, npz, *overrides: str):
    cfg = image_config(tmp_path, npz, "--model.name=resnet", "--model.widths=[8, 16]", "--model.blocks=[1, 1]",
                       "--model.groups=4", "--objective.name=autoencoder", f'--run.dir="{tmp_path / "run"}"',
                       "--train.batch_size=16", "--train.max_steps=8", "--train.eval_every=0", "--train.save_every=0",
                       "--train.lr=3e-3", "--impl.progress=false", "--finetune.task=image_classification",
                       f'--finetune.init="{tmp_path / "run"}"', f'--finetune.data.train="{npz}"',
                       f'--finetune.data.dev="{npz}#test"', "--finetune.train.epochs=2.0",
                       "--finetune.train.batch_size=16", "--finetune.train.lr=3e-3", *overrides)
    api.pretrain(cfg, **QUIET)
    return cfg


def test_finetune_probe_rescore_and_curve_on_an_image_backbone(tmp_path, npz):
    cfg = pretrained_config(tmp_path, npz)
    module, processor = load_run(tmp_path / "run")
    assert module.head_names == ["pixel_decoder"] and processor == ImageProcessor(SIZE, 1)
    results = finetune(cfg, **QUIET)
    assert results["n_labels"] == 80 and results["labels"] == ["0", "1"] and results["steps"] == 10
    assert 0 <= results["dev"]["accuracy"] <= 1
    rescored = evaluate_finetuned(cfg, **QUIET)["dev"]
    assert rescored["accuracy"] == pytest.approx(results["dev"]["accuracy"])
    _, saved = load_run(tmp_path / "run" / "finetune")
    assert saved == processor  # the fine-tuned run reads images as its init did
    summary = curve(load_config(None, [f'--run.dir="{tmp_path / "run"}"', "--finetune.task=image_classification",
                                       f'--finetune.init="{tmp_path / "run"}"', f'--finetune.data.train="{npz}"',
                                       f'--finetune.data.test="{npz}#test"', "--finetune.train.epochs=1.0",
                                       "--finetune.train.batch_size=16", "--curve.fractions=[0.25, 1.0]",
                                       "--curve.seeds=[0]", '--curve.methods=["full", "probe"]']), **QUIET)
    assert {(r["init"], r["labels"]) for r in summary} == {
        (init, n) for init in ("pre-trained full", "pre-trained probe", "scratch") for n in (20, 80)}
    with pytest.raises(PretrainerError, match="finetune.task.*image_classification"):
        finetune(load_config(None, [f'--finetune.init="{tmp_path / "run"}"', f'--finetune.data.train="{npz}"',
                                    f'--finetune.dir="{tmp_path / "text-task"}"']), **QUIET)


def test_mnist_autoencoder_features_probe_well_above_chance(tmp_path, shared_data):
    """Real digits: 2,000 MNIST training images pre-train a tiny resnet for a few steps; a linear
    probe on 500 of their labels then reads 10 classes well above chance on 1,000 test digits."""
    mnist = np.load(shared_data / "vision" / "mnist.npz")
    path = tmp_path / "mnist-small.npz"
    np.savez(path, x_train=mnist["x_train"][:2000], y_train=mnist["y_train"][:2000],
             x_test=mnist["x_test"][:1000], y_test=mnist["y_test"][:1000])
    cfg = pretrained_config(tmp_path, path, "--finetune.method=probe", "--finetune.n_labels=500",
                            f'--finetune.data.dev=""', f'--finetune.data.test="{path}#test"',
                            "--model.stem_stride=2")
    results = finetune(cfg, **QUIET)
    assert results["test"]["accuracy"] > 0.25, results["test"]  # chance is 0.1; 16 features, 8 steps
