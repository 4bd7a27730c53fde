"""Tiny stand-ins for a model, an objective and a data loader, so the training package is
tested on its own. They follow the contracts in docs/ARCHITECTURE.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrainer.config import ImplConfig, TrainConfig

VOCAB, SEQ = 16, 4


class ToyModel(nn.Module):
    """Embedding -> LayerNorm -> dropout -> linear over the vocabulary; optionally tied."""

    def __init__(self, dim: int = 8, dropout: float = 0.1, tie: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, VOCAB)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, input_ids):
        return self.head(self.drop(self.norm(self.emb(input_ids))))  # (B, T, V)


class ToyObjective:
    """Predict (token + 1) mod V at every position; mean-reduced cross-entropy."""

    def __call__(self, model, batch):
        logits = model(batch["input_ids"])
        labels = batch["labels"]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "acc": acc.detach(), "n_tokens": labels.numel()}

    def evaluate(self, model, batches):
        losses = [self(model, b)["loss"].item() for b in batches]
        return {"loss": sum(losses) / len(losses)}


def toy_data(n: int = 64, seed: int = 123):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    return ids, (ids + 1) % VOCAB


class ToyLoader:
    """Infinite batches over a seeded permutation per epoch; resumable by (epoch, position)."""

    def __init__(self, batch_size: int = 4, n: int = 64, seed: int = 0):
        self.ids, self.labels = toy_data(n)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0
        self.tokens_per_batch = batch_size * SEQ

    def _order(self):
        return torch.randperm(len(self.ids), generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self):
        return self

    def __next__(self):
        if self.position + self.batch_size > len(self.ids):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._order()[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return {"input_ids": self.ids[idx], "labels": self.labels[idx]}

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def eval_batches():
    ids, labels = toy_data(16, seed=7)
    return [{"input_ids": ids[i:i + 8], "labels": labels[i:i + 8]} for i in (0, 8)]


def train_config(**kw) -> TrainConfig:
    base = dict(batch_size=4, max_steps=10, lr=1e-2, warmup=0.2, eval_every=0, save_every=0,
                log_every=5, keep_checkpoints=2)
    base.update(kw)
    return TrainConfig(**base)


def impl_config(**kw) -> ImplConfig:
    # deterministic=False: these CPU ops are deterministic anyway, and the switch is global
    # process state that would leak into other tests.
    base = dict(device="cpu", progress=False, deterministic=False)
    base.update(kw)
    return ImplConfig(**base)
