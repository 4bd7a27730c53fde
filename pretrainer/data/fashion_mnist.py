"""Fashion-MNIST in one step: the Debian package `dataset-fashion-mnist`'s four IDX files,
SHA-256 checked, in a folder the image readers take as it is (`[data] train = "DIR"`,
`finetune.data.test = "DIR#test"`).

Where the package is installed (/usr/share/datasets/fashion-mnist) its files are linked; elsewhere
`apt-get download` (no root needed) fetches the .deb into a temporary folder, `dpkg -x` unpacks
it, and the IDX files are moved into the folder. Either way each file must match its pinned
digest, so a different package version is an error rather than silently different data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from pretrainer.errors import PretrainerError

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DIR = Path("data/fashion-mnist")
# The .gz files of dataset-fashion-mnist 0.0~git20200523.55506a9-1 (Debian), byte for byte.
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verified(folder: Path) -> bool:
    """Whether `folder` holds the four files with their pinned digests."""
    return all((folder / name).is_file() and sha256_of(folder / name) == digest for name, digest in SHA256.items())


def _check(folder: Path, origin: str) -> None:
    for name, digest in SHA256.items():
        path = folder / name
        if not path.is_file():
            raise PretrainerError(f"{path}: missing from {origin}")
        if sha256_of(path) != digest:
            raise PretrainerError(f"{path}: SHA-256 {sha256_of(path)[:16]}... is not the pinned {digest[:16]}... "
                                  f"({origin} is another version of {PACKAGE})")


def fetch_fashion_mnist(out_dir: str | os.PathLike = DEFAULT_DIR, system_dir: Path = SYSTEM_DIR,
                        run: Callable = subprocess.run, log: Callable[[str], None] = print) -> Path:
    """The folder `out_dir` holding the four checked Fashion-MNIST IDX files; returns it."""
    out = Path(out_dir)
    if verified(out):
        log(f"Fashion-MNIST already in {out} (SHA-256 checked)")
        return out
    out.mkdir(parents=True, exist_ok=True)
    if verified(system_dir):
        for name in SHA256:
            (out / name).unlink(missing_ok=True)
            (out / name).symlink_to(system_dir / name)
        log(f"Fashion-MNIST: linked the installed package's files ({system_dir}) into {out}")
        return out
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise PretrainerError(f"{tool} not found: fetching {PACKAGE} needs a Debian-like system")
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as tmp:
        log(f"Fashion-MNIST: apt-get download {PACKAGE} (about 30 MB)")
        done = run(["apt-get", "download", PACKAGE], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if done.returncode != 0 or not debs:
            reason = (done.stderr or done.stdout or "").strip().splitlines()
            raise PretrainerError(f"apt-get download {PACKAGE} failed ({reason[-1] if reason else 'no .deb'}); "
                                  f"run 'apt-get update' first, or install the package")
        unpacked = Path(tmp) / "root"
        done = run(["dpkg", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True)
        if done.returncode != 0:
            raise PretrainerError(f"{debs[0].name}: dpkg -x failed ({(done.stderr or '').strip()[:200]})")
        found = unpacked / SYSTEM_DIR.relative_to("/")
        _check(found, debs[0].name)
        for name in SHA256:
            (out / name).unlink(missing_ok=True)
            shutil.move(str(found / name), out / name)
    _check(out, str(out))
    log(f"Fashion-MNIST: {', '.join(SHA256)} in {out} (SHA-256 checked)")
    return out
