"""run.init: continue pre-training from an earlier run's weights, architecture and tokenizer."""

import random

from safetensors.torch import load_file

from pretrainer.api import pretrain
from pretrainer.config import load_config


def tiny_config(tmp_path, run_dir, *extra):
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(words, k=30)) for _ in range(60)))
    return load_config(None, [
        f'--run.dir="{run_dir}"', f'--data.train="{corpus}"', f'--data.cache_dir="{tmp_path / "cache"}"',
        "--tokenizer.vocab_size=60", "--tokenizer.min_frequency=1", "--model.n_layers=1", "--model.d_model=32",
        "--model.n_heads=2", "--model.max_len=32", "--train.batch_size=4", "--train.seq_len=32",
        "--train.max_steps=3", "--train.eval_every=0", "--train.save_every=0", "--impl.progress=false", *extra])


def test_init_from_run_keeps_architecture_and_weights(tmp_path):
    first = tmp_path / "first"
    pretrain(tiny_config(tmp_path, first), log=lambda *_: None)
    second = tmp_path / "second"
    # lr = 0: the continued run must end exactly where the first one did, although [model] asks for 2 layers.
    pretrain(tiny_config(tmp_path, second, f'--run.init="{first}"', "--model.n_layers=2", "--train.lr=0.0"),
             log=lambda *_: None)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
