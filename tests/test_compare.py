"""`pretrainer compare` on tiny data: each variant pre-trained at the same budget, one curve
with a shared scratch baseline, a table joining both, finished runs reused."""

import csv

import pytest

from pretrainer.compare import compare
from pretrainer.config import save_config
from pretrainer.errors import PretrainerError


def test_compare_pretrains_each_variant_and_fine_tunes_all_against_one_scratch(tmp_path, tiny_transfer_task,
                                                                              good_task_rows):
    cfg = tiny_transfer_task(tmp_path, good_task_rows(24), "--curve.fractions=[1.0]", "--curve.seeds=[0]")
    variants = []
    for objective in ("mlm", "mlm_sop"):
        path = tmp_path / f"{objective}.toml"
        save_config(cfg, path)
        path.write_text(path.read_text().replace('name = "mlm"', f'name = "{objective}"', 1))
        variants.append(str(path))
    cfg.compare.variants, cfg.compare.max_steps, cfg.compare.dir = variants, 3, str(tmp_path / "cmp")
    rows = compare(cfg, log=lambda *_: None)

    assert [(r["variant"], r["steps"]) for r in rows] == [("mlm", 3), ("mlm_sop", 3), ("scratch", "")]
    assert rows[0]["tokens"] == 3 * 4 * 16  # steps x batch x seq_len of the variant's own config
    assert "mlm_acc" in rows[0]["held-out"] and "sop_acc" in rows[1]["held-out"]
    with open(tmp_path / "cmp" / "compare.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert "scratch" in (tmp_path / "cmp" / "compare.md").read_text()

    # Everything is finished: a second call trains nothing.
    marker = tmp_path / "cmp" / "pretrain" / "mlm" / "model.safetensors"
    before = marker.stat().st_mtime_ns
    assert compare(cfg, log=lambda *_: None) == rows
    assert marker.stat().st_mtime_ns == before


def test_compare_names_its_bad_keys(tmp_path, tiny_transfer_task, good_task_rows):
    cfg = tiny_transfer_task(tmp_path, good_task_rows(8))
    with pytest.raises(PretrainerError, match="compare.variants"):
        compare(cfg, log=lambda *_: None)
    cfg.compare.variants = ["a/x.toml", "b/x.toml"]
    with pytest.raises(PretrainerError, match="must differ"):
        compare(cfg, log=lambda *_: None)
