"""The cheapest honest baseline for an image curve: logistic regression on raw pixels.

    python docs/results/2026-12-08-fashion-mnist/pixel_floor.py DATA [fractions...]

DATA: an .npz with x_train / y_train / x_test / y_test, or an IDX folder (data/fashion-mnist).

Fits scikit-learn's multinomial logistic regression on the pixels (scaled to [0, 1]) of a
stratified subset of x_train per seed and scores all of x_test; prints a CSV row per run.
"""

import sys

from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def load(path: str) -> dict:
    if Path(path).is_dir():
        from pretrainer.data.idx import read_idx_split

        (x, y, _), (x_test, y_test, _) = (read_idx_split(Path(path), key, labeled=True) for key in ("", "test"))
        return {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test}
    return dict(np.load(path))


def main(path: str, fractions: list[float], seeds=(0, 1, 2)) -> None:
    data = load(path)
    x, y = data["x_train"].reshape(len(data["x_train"]), -1) / 255.0, data["y_train"]
    x_test, y_test = data["x_test"].reshape(len(data["x_test"]), -1) / 255.0, data["y_test"]
    print("fraction,seed,n_labels,test_accuracy")
    for fraction in fractions:
        for seed in seeds if fraction < 1 else seeds[:1]:
            if fraction < 1:
                x_sub, _, y_sub, _ = train_test_split(x, y, train_size=fraction, stratify=y, random_state=seed)
            else:
                x_sub, y_sub = x, y
            model = LogisticRegression(max_iter=1000, C=1.0).fit(x_sub, y_sub)
            print(f"{fraction},{seed},{len(y_sub)},{model.score(x_test, y_test):.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [float(f) for f in sys.argv[2:]] or [0.01, 0.1, 1.0])
