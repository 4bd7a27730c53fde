"""IDX files (MNIST / Fashion-MNIST) read by the image readers, their one-line errors, and the
Fashion-MNIST fetch (apt-get download + dpkg -x, stood in for here) with its SHA-256 check."""

from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

import pretrainer.data.fashion_mnist as fashion_mnist
from pretrainer.data.fashion_mnist import fetch_fashion_mnist
from pretrainer.data.idx import read_idx
from pretrainer.data.image_files import read_images
from pretrainer.data.labeled_images import encode_images, read_labeled_images
from pretrainer.data.image_processor import ImageProcessor
from pretrainer.errors import PretrainerError


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def idx_folder(root: Path, gz: bool = True) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {"train": (rng.integers(0, 256, (6, 5, 5), dtype=np.uint8), np.arange(6, dtype=np.uint8) % 3),
              "t10k": (rng.integers(0, 256, (4, 5, 5), dtype=np.uint8), np.array([2, 1, 0, 2], dtype=np.uint8))}
    root.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in arrays.items():
        write(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root, arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_reads_as_an_npz_does(tmp_path, gz):
    folder, arrays = idx_folder(tmp_path / "fm", gz)
    found = read_images(folder)
    assert np.array_equal(found.images[:, 0], arrays["train"][0])
    test = read_labeled_images(f"{folder}#test")
    assert test.labels == ["2", "1", "0", "2"]
    encoded = encode_images(test, ImageProcessor(image_size=5, channels=3), [2, 1, 0, 2], ["0", "1", "2"])
    assert encoded.images.shape == (4, 3, 5, 5) and np.array_equal(encoded.images[:, 1], arrays["t10k"][0])
    # One images file reads alone, with its labels sibling when labeled.
    one = read_images(next(folder.glob("t10k-images-*")), labeled=True)
    assert one.labels == ["2", "1", "0", "2"]
    assert read_labeled_images(str(next(folder.glob("train-images-*")))).labels == ["0", "1", "2", "0", "1", "2"]


def test_damaged_idx_files_are_one_line_errors(tmp_path):
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    full = idx_bytes(images)
    cases = {
        "truncated": (full[:-5], "truncated or padded"),
        "header": (full[:9], "truncated IDX header"),
        "magic": (b"\x01\x02" + full[2:], "not an IDX file"),
        "dtype": (full[:2] + b"\x0d" + full[3:], "type 0x0d"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}-images-idx3-ubyte"
        path.write_bytes(data)
        with pytest.raises(PretrainerError, match=message) as e:
            read_images(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    bad_gz = tmp_path / "gz-images-idx3-ubyte.gz"
    bad_gz.write_bytes(gzip.compress(full)[:-20])
    with pytest.raises(PretrainerError, match="not a readable IDX file"):
        read_idx(bad_gz, 3)
    folder, _ = idx_folder(tmp_path / "mismatch")
    write(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(PretrainerError, match="3 labels for the 4 images"):
        read_images(folder / "t10k-images-idx3-ubyte.gz", labeled=True)
    with pytest.raises(PretrainerError, match="splits train and test, not 'dev'"):
        read_labeled_images(f"{folder}#dev")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(PretrainerError, match="without t10k-labels-idx1-ubyte"):
        read_labeled_images(f"{folder}#test")


def fake_apt(files: dict[str, bytes]):
    """Stands in for apt-get download (writes a .deb) and dpkg -x (unpacks `files`)."""
    def run(argv, cwd=None, **_):
        class Done:
            returncode, stdout, stderr = 0, "", ""
        if argv[:2] == ["apt-get", "download"]:
            (Path(cwd) / f"{argv[2]}_1.0_all.deb").write_bytes(b"deb")
        elif argv[:2] == ["dpkg", "-x"]:
            target = Path(argv[3]) / "usr/share/datasets/fashion-mnist"
            target.mkdir(parents=True)
            for name, data in files.items():
                (target / name).write_bytes(data)
        return Done()
    return run


def test_fetch_checks_digests_links_the_installed_package_and_reuses(tmp_path, monkeypatch):
    files = {name: name.encode() * 3 for name in fashion_mnist.SHA256}
    monkeypatch.setattr(fashion_mnist.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    nowhere = tmp_path / "not-installed"
    # The pinned digests refuse other bytes, naming the file.
    with pytest.raises(PretrainerError, match="is not the pinned"):
        fetch_fashion_mnist(tmp_path / "a", system_dir=nowhere, run=fake_apt(files), log=lambda *_: None)
    monkeypatch.setattr(fashion_mnist, "SHA256", {n: hashlib.sha256(d).hexdigest() for n, d in files.items()})
    out = fetch_fashion_mnist(tmp_path / "a", system_dir=nowhere, run=fake_apt(files), log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    lines = []
    fetch_fashion_mnist(out, system_dir=nowhere, run=None, log=lines.append)  # checked, nothing run
    assert "already in" in lines[0]
    # An installed package is linked, not fetched.
    installed = tmp_path / "usr-share"
    installed.mkdir()
    for name, data in files.items():
        (installed / name).write_bytes(data)
    linked = fetch_fashion_mnist(tmp_path / "b", system_dir=installed, run=None, log=lambda *_: None)
    assert all((linked / name).is_symlink() for name in files)
