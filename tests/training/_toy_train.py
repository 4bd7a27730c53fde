"""A small training run for the SIGKILL test: `python _toy_train.py RUN_DIR [--resume]`.

Each step sleeps a little so the parent can kill the process in the middle of training.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

from pretrainer.training import fit, set_determinism  # noqa: E402
from training_toys import ToyLoader, ToyModel, ToyObjective, impl_config, train_config  # noqa: E402


class SlowObjective(ToyObjective):
    def __call__(self, model, batch):
        time.sleep(0.02)
        return super().__call__(model, batch)


def main():
    run_dir, resume = sys.argv[1], "--resume" in sys.argv
    torch.set_num_threads(1)
    impl = impl_config(threads=1)
    set_determinism(impl, seed=0)
    model = ToyModel(dropout=0.1)
    cfg = train_config(max_steps=40, save_every=4, keep_checkpoints=2, log_every=4)
    fit(model, SlowObjective(), ToyLoader(), cfg, impl, run_dir, resume=resume, log=lambda s: None)


if __name__ == "__main__":
    main()
