"""LSTM language-model training step: pretrainer's `lstm` + `clm` against a hand-written peer.

    python benchmarks/lstm_step.py [--repeats 5] [--seconds 10] [--threads 2] [--smoke]

There is no Hugging Face LSTM, so the peer is the model a user would write: an `nn.Embedding`,
one multi-layer `nn.LSTM`, a linear map to the embedding width, logits from the tied embedding
matrix and `F.cross_entropy` over all (B*T, V) logits. Both have the same shapes (2 layers,
embeddings 256, cells 512, vocab 16,384, batch 32 x 128 tokens), no dropout (the peer has
none of AWD-LSTM's), AdamW (fused, lr 1e-3, clip 1.0). pretrainer's step is
`training.train_step` with `CausalLM` and `build_optimizer`: the code `fit` runs. Measurements
are interleaved (peer, pretrainer, peer, ...); each is the median step time over `--seconds`
(at least 2 steps), in process CPU time by default (`--clock cpu`: on a machine shared with
other jobs wall time measures the neighbours; with 1 thread CPU time is the step's own work);
the reported ratio is the median of the per-repeat ratios. One JSON line per impl and one for
the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pretrainer.models import build_model  # noqa: E402
from pretrainer.models.lstm import LSTMConfig  # noqa: E402
from pretrainer.objectives.clm import CausalLM  # noqa: E402
from pretrainer.config import load_config  # noqa: E402
from pretrainer.training import build_optimizer, train_step  # noqa: E402


class PlainLSTMLM(nn.Module):
    """The peer: embedding -> nn.LSTM(n_layers) -> linear to d_embed -> tied softmax."""

    def __init__(self, vocab: int, d_embed: int, hidden: int, n_layers: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, d_embed)
        self.lstm = nn.LSTM(d_embed, hidden, n_layers, batch_first=True)
        self.proj = nn.Linear(hidden, d_embed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(ids[:, :-1]))
        logits = F.linear(self.proj(h), self.emb.weight)
        return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def peer_step(model, optimizer, batches):
    loss = model(next(batches)["input_ids"])
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_steps(step, seconds: float, warmup: int, clock) -> float:
    """Median seconds per step on `clock`, over at least 2 steps and `seconds` of it."""
    for _ in range(warmup):
        step()
    times = []
    start = clock()
    while len(times) < 2 or clock() - start < seconds:
        t0 = clock()
        step()
        times.append(clock() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this process's CPU time (time.process_time), which other processes on a shared "
                        "machine barely move at 1 thread; wall: perf_counter")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks both paths run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    B, T, V, E, H, L = (4, 16, 500, 32, 48, 2) if args.smoke else (32, 128, 16384, 256, 512, 2)
    repeats, seconds = (1, 0.1) if args.smoke else (args.repeats, args.seconds)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, V, (B, T + 1), generator=g)} for _ in range(8)]

    def batches():
        return itertools.cycle(data)

    torch.manual_seed(0)
    cfg = LSTMConfig(vocab_size=V, d_embed=E, hidden=H, n_layers=L, embed_dropout=0.0, input_dropout=0.0,
                     hidden_dropout=0.0, output_dropout=0.0)
    objective = CausalLM(load_config().objective)
    ours = objective.build(build_model(cfg, V)).train()
    train_cfg = SimpleNamespace(lr=1e-3, weight_decay=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    ours_opt = build_optimizer(ours, train_cfg, torch.device("cpu"))
    ours_batches = batches()

    torch.manual_seed(0)
    peer = PlainLSTMLM(V, E, H, L).train()
    peer_opt = torch.optim.AdamW(peer.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    peer_batches = batches()

    impls = {
        "torch-lstm": lambda: peer_step(peer, peer_opt, peer_batches),
        "pretrainer": lambda: train_step(ours, objective, ours_batches, ours_opt, grad_clip=1.0),
    }
    samples = {name: [] for name in impls}
    for _ in range(repeats):
        for name, step in impls.items():
            samples[name].append(time_steps(step, seconds, args.warmup, clock))
    shape = {"batch": B, "seq": T, "vocab": V, "d_embed": E, "hidden": H, "n_layers": L, "threads": args.threads,
             "clock": args.clock}
    for name, values in samples.items():
        print(json.dumps({"kind": "lstm_step", "impl": name, **shape, "ms_median": round(1000 * statistics.median(values), 1),
                          "tokens_per_s": round(B * T / statistics.median(values)),
                          "samples_ms": [round(1000 * x, 1) for x in values]}), flush=True)
    ratio = statistics.median(a / b for a, b in zip(samples["pretrainer"], samples["torch-lstm"]))
    print(json.dumps({"kind": "lstm_step_ratio", **shape, "pretrainer_over_torch_lstm": round(ratio, 3)}), flush=True)


if __name__ == "__main__":
    main()
