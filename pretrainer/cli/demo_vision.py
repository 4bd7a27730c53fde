"""`pretrainer demo vision`: the image path end to end on data pip alone brings.

scikit-learn ships 1,797 handwritten digits (8 x 8, 17 grey levels) inside its wheel: nothing is
downloaded at run time, and the arrays are checked against a pinned SHA-256. A stratified 80/20
split (seed 0) gives 1,437 training and 360 test digits. A small ResNet is pre-trained with SimCLR
on the training images without their labels, then, at 3 labels a class, 10% and 100% of the
training labels: fine-tuned in full and probed (logistic regression on its frozen features), next
to the same ResNet from random weights and to logistic regression on the raw pixels (the cheapest
honest baseline). The test digits are a test set only: no model selection on them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from pretrainer.api import pretrain
from pretrainer.cli.presets import VISION_DEMO
from pretrainer.config import load_config
from pretrainer.data.labeled import stratified_subset
from pretrainer.errors import PretrainerError
from pretrainer.evaluation.report import results_table
from pretrainer.transfer.finetune import finetune

# SHA-256 over the digits as this demo reads them: uint8 pixels (x * 255 / 16, rounded) then labels.
DIGITS_SHA256 = "a19cb3d96bba7deace8ee5a513a6eb7bad0403d528f00bf4d351b6a7a55baa91"
# Label fractions of the 1,437 training digits: 0.021 keeps 3 of each class (30 labels).
FRACTIONS = (0.021, 0.1, 1.0)
ROWS = (  # (row name, finetune overrides); "pixels" is logistic regression on raw pixels
    ("SimCLR, fine-tuned", ["--finetune.method=full"]),
    ("SimCLR, linear probe", ["--finetune.method=probe"]),
    ("scratch, trained", ["--finetune.method=full", "--finetune.from_scratch=true"]),
)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as uint8 images (N, 8, 8) in 0..255 and labels, SHA-256 checked."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise PretrainerError("the vision demo reads scikit-learn's bundled digits: pip install "
                              "'scikit-learn>=1.3' (or pretrainer[vision-demo])") from None
    digits = sklearn_digits()
    images = np.rint(digits.images * 255 / 16).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    if digest != DIGITS_SHA256:
        raise PretrainerError(f"scikit-learn's digits have SHA-256 {digest[:16]}..., not the pinned "
                              f"{DIGITS_SHA256[:16]}...: this scikit-learn ships other data")
    return images, labels


def write_split(path: Path, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[int, int]:
    """A stratified 80/20 train/test split saved as an npz (x_train, y_train, x_test, y_test)."""
    test = np.zeros(len(labels), dtype=bool)
    test[stratified_subset(labels.tolist(), 0.2, seed)] = True
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=images[~test], y_train=labels[~test], x_test=images[test], y_test=labels[test])
    tmp.replace(path)
    return int((~test).sum()), int(test.sum())


def pixel_baseline(npz: Path, fraction: float, seed: int) -> float:
    """Test accuracy of logistic regression on raw pixels, trained on the same labeled subset the
    fine-tuning runs get (finetune's stratified_subset with the same seed; the labels 0..9 are
    their own indices)."""
    from sklearn.linear_model import LogisticRegression

    with np.load(npz) as d:
        x_train, y_train, x_test, y_test = d["x_train"], d["y_train"], d["x_test"], d["y_test"]
    chosen = stratified_subset(y_train.tolist(), fraction, seed)
    model = LogisticRegression(max_iter=2000).fit(x_train[chosen].reshape(len(chosen), -1) / 255, y_train[chosen])
    return float((model.predict(x_test.reshape(len(x_test), -1) / 255) == y_test).mean())


def demo_vision(out_dir: str | Path = "runs/demo-vision", log=print, preset: dict | None = None) -> list[dict]:
    start = time.perf_counter()
    preset = preset or VISION_DEMO
    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    npz = out / "data" / "digits.npz"

    log("[1/4] scikit-learn's bundled 8x8 digits (inside its wheel, SHA-256 checked)")
    n_train, n_test = write_split(npz, *load_digits())
    log(f"      {n_train:,} train / {n_test:,} test digits in {npz}")

    pretrain_dir = out / "pretrain"
    common = [f"--data.train={json.dumps([str(npz)])}", f"--finetune.data.train={json.dumps(str(npz))}",
              f"--finetune.data.test={json.dumps(str(npz) + '#test')}",
              f"--data.cache_dir={json.dumps(str(out / 'cache'))}"]
    cfg = load_config(None, common + [f"--run.dir={json.dumps(str(pretrain_dir))}"], base=preset)
    log(f"[2/4] pre-training a ResNet (widths {cfg.model.widths}) with {cfg.objective.name} on the {n_train:,} "
        f"training digits, no labels: {cfg.train.max_steps} steps of {cfg.train.batch_size}")
    if (pretrain_dir / "model.safetensors").exists():
        log(f"      reusing the finished pre-training run in {pretrain_dir}")
    else:
        pretrain(cfg, resume=(pretrain_dir / "checkpoints" / "latest").exists(), log=log)
    pretrain_seconds = time.perf_counter() - start

    log("[3/4] fine-tuning at 3 labels a class, 10% and 100% of the labels: the pre-trained ResNet (full, "
        "probe), the same ResNet from scratch, logistic regression on raw pixels")
    rows = []
    for fraction in FRACTIONS:
        for name, overrides in ROWS:
            run = f"{name.split(',')[0].lower()}-{overrides[0].split('=')[1]}-{fraction:g}"
            ft_cfg = load_config(None, common + overrides + [
                f"--finetune.init={json.dumps(str(pretrain_dir))}", f"--finetune.label_fraction={fraction}",
                f"--finetune.dir={json.dumps(str(out / 'finetune' / run))}"], base=preset)
            result = finetune(ft_cfg, log=lambda *_: None)
            rows.append({"start": name, "fraction": fraction, "labels": result["n_labels"],
                         "accuracy": result["test"]["accuracy"], "seconds": result["train_seconds"]})
            log(f"      {name:<22} {result['n_labels']:>5,} labels: test accuracy {result['test']['accuracy']:.3f}")
        labels = rows[-1]["labels"]
        t = time.perf_counter()
        accuracy = pixel_baseline(npz, fraction, ft_cfg.run.seed)
        rows.append({"start": "pixels, logistic regression", "fraction": fraction, "labels": labels,
                     "accuracy": accuracy, "seconds": time.perf_counter() - t})
        log(f"      {'pixels, logistic regr.':<22} {labels:>5,} labels: test accuracy {accuracy:.3f}")

    log("[4/4] results")
    table = results_table(
        [{"start": r["start"], "labels": f"{r['labels']:,} ({r['fraction']:.0%})",
          "test accuracy": f"{r['accuracy']:.3f}", "train time": f"{r['seconds']:.0f}s"} for r in rows],
        ["start", "labels", "test accuracy", "train time"])
    minutes = (time.perf_counter() - start) / 60
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows, "pretrain_seconds": pretrain_seconds,
                                                  "total_minutes": minutes}, indent=2))
    log("")
    log(table)
    log("")
    log(f"Done in {minutes:.1f} min ({pretrain_seconds / 60:.1f} pre-training). Results: {out / 'results.md'}; "
        f"pre-training run: {pretrain_dir}. Predict with `pretrainer predict {out / 'finetune' / 'simclr-full-1'} "
        f"{npz}#test`.")
    return rows
