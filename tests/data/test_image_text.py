"""The image–text pairs data module: one-line errors for captions that do not match the images,
a held-out split by content (duplicates never straddle it), batches with tokenized captions."""

import numpy as np
import pytest

from pretrainer.config import load_config
from pretrainer.data.image_text import ImageTextData, read_captions, split_by_content
from pretrainer.errors import PretrainerError


def pairs_file(tmp_path, n=40, captions=None, name="pairs.npz", **extra):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    images[10:20] = images[0]  # ten duplicates of image 0
    arrays = {"images": images, **extra}
    if captions is not False:
        arrays["captions"] = np.array(captions if captions is not None else [f"picture number {i}" for i in range(n)])
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_a_caption_count_that_differs_is_a_one_line_error(tmp_path):
    path = pairs_file(tmp_path, captions=["one", "two"])
    with pytest.raises(PretrainerError) as error:
        read_captions(path, "captions", 40)
    message = str(error.value)
    assert str(path) in message and "2 captions for 40 images" in message and "\n" not in message


def test_missing_captions_key_is_a_one_line_error(tmp_path):
    path = pairs_file(tmp_path, captions=False, titles=np.array(["x"] * 40))
    with pytest.raises(PretrainerError) as error:
        read_captions(path, "captions", 40)
    message = str(error.value)
    assert str(path) in message and "'captions'" in message and "titles" in message and "\n" not in message


def test_the_split_is_by_content_and_keeps_one_held_out_copy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(300, 3, 4, 4), dtype=np.uint8)
    images[100:150] = images[7]  # 51 copies of one picture
    images[200:210] = images[3]
    train, held = split_by_content(images, 0.3)
    train_keys = {images[i].tobytes() for i in train}
    held_keys = [images[i].tobytes() for i in held]
    assert not train_keys & set(held_keys)  # no picture on both sides
    assert len(held_keys) == len(set(held_keys))  # one pair per distinct held-out picture
    assert 0.15 < len(held) / 250 < 0.45
    again, held_again = split_by_content(images[::-1].copy(), 0.3)  # order does not matter
    assert {images[::-1][i].tobytes() for i in held_again} == set(held_keys)


def prepared(tmp_path, **data):
    path = pairs_file(tmp_path)
    cfg = load_config(None, ["--data.name=image_text", f"--data.train=['{path}']", "--data.holdout=0.3",
                             f"--data.cache_dir={tmp_path / 'cache'}", "--tokenizer.vocab_size=60",
                             "--tokenizer.min_frequency=1", *[f"--data.{k}={v}" for k, v in data.items()]])
    return ImageTextData(cfg).prepare(log=lambda *_: None)


def test_batches_hold_images_and_tokenized_captions_and_resume_exactly(tmp_path):
    data = prepared(tmp_path)
    held = {data.eval[i].tobytes() for i in range(len(data.eval))}
    assert not held & {data.train[i].tobytes() for i in range(len(data.train))}
    loader = data.train_batches("image_text", 4, 8, seed=3, augment=True)
    first = next(loader)
    assert first["images"].shape == (4, 3, 8, 8) and first["input_ids"].shape[0] == 4
    assert first["input_ids"].shape[1] <= 8 and (first["input_ids"][:, 0] == data.tokenizer.cls_id).all()
    state = loader.state_dict()
    second = next(loader)
    resumed = data.train_batches("image_text", 4, 8, seed=3, augment=True)
    resumed.load_state_dict(state)
    again = next(resumed)
    assert all(torch_equal(second[k], again[k]) for k in second)
    eval_batch = next(data.eval_batches("image_text", 100, 8))
    assert len(eval_batch["images"]) == len(data.eval) == len(data.eval_captions)


def torch_equal(a, b):
    return a.shape == b.shape and bool((a == b).all())


def test_a_non_npz_source_is_a_one_line_config_error(tmp_path):
    with pytest.raises(PretrainerError) as error:
        load_config(None, ["--data.name=image_text", "--data.train=['folder/']"])
    assert "data.train[0]" in str(error.value) and "\n" not in str(error.value)
