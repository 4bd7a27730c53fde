"""`pretrainer data headlines`: articles into a fixed, seeded split by article."""

import json

import pytest

from pretrainer.cli.main import main
from pretrainer.data.headlines import Article, build_headlines, split_articles
from pretrainer.errors import PretrainerError


def articles(n: int) -> list[Article]:
    return [Article(id=str(i), title=f"title {i}", body=f"body of article {i}", where=f"f:{i + 1}") for i in range(n)]


def test_split_is_by_article_seeded_and_fixed():
    data = articles(100)
    splits, left_out = split_articles(data, dev=0.1, test=0.2, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 70, "dev": 10, "test": 20}
    ids = [a.id for part in splits.values() for a in part]
    assert sorted(ids, key=int) == [a.id for a in data]  # every article in exactly one split
    for part in splits.values():  # each file in the source's order
        assert [int(a.id) for a in part] == sorted(int(a.id) for a in part)
    again, _ = split_articles(data, dev=0.1, test=0.2, seed=0)
    other, _ = split_articles(data, dev=0.1, test=0.2, seed=1)
    assert again == splits and other["test"] != splits["test"]
    assert left_out == {"untitled": 0, "duplicate_bodies": 0}


def test_untitled_and_repeated_articles():
    data = articles(20) + [Article("x", "", "an untitled body", "f:21"), Article("y", "copy", "body of article 3", "f:22")]
    splits, left_out = split_articles(data, dev=0.1, test=0.1, seed=0)
    assert left_out == {"untitled": 1, "duplicate_bodies": 1} and sum(map(len, splits.values())) == 20
    with pytest.raises(PretrainerError, match=r"^f:21: article 'x' has no title \(use --untitled skip"):
        split_articles(data, dev=0.1, test=0.1, seed=0, untitled="error")


def test_cli_writes_the_task_files(tmp_path, capsys):
    source = tmp_path / "articles.jsonl"
    source.write_text("".join(json.dumps({"id": f"a{i}", "headline": f"Title {i}", "body": f"Body {i} text."}) + "\n"
                              for i in range(30)))
    out = tmp_path / "hl"
    argv = ["data", "headlines", str(out), "--articles", str(source), "--title-field", "headline", "--body-field",
            "body", "--seed", "3"]
    assert main(argv) == 0
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(test) == 3 and set(test[0]) == {"id", "text", "target"}
    assert test[0]["target"] == f"Title {test[0]['id'][1:]}" and test[0]["text"].startswith("Body")
    record = json.loads((out / "split.json").read_text())
    assert record["pairs"] == {"train": 24, "dev": 3, "test": 3} and record["seed"] == 3
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err  # an existing split stays
    assert build_headlines(out, str(source), seed=3, title_field="headline", body_field="body",
                           overwrite=True)["pairs"]["test"] == 3
