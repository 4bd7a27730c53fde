"""A stand-in for the images data module in the image objectives' tests: it builds the batch
layouts of the shared contract ("images": {"images"}, "views": {"images", "images2"}, float32
(B, C, S, S) in [0, 1]) from a fixed set of synthetic pictures, so the objectives are tested
without any files. Each picture is a few bright squares on a dark, slightly noisy background,
so pictures have structure an encoder can learn; a view is the picture shifted by up to one
pixel with a little noise."""

from __future__ import annotations

import itertools

import torch

LAYOUTS = ("images", "views")


def pictures(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """(n, C, S, S) in [0, 1]: each picture three bright 3 x 3 squares at random places on a
    dark, slightly noisy background (pictures differ, and have parts a model can learn)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.rand(n, channels, size, size, generator=g)
    corners = torch.randint(0, size - 3, (n, 3, 2), generator=g)
    for i in range(n):
        for y, z in corners[i].tolist():
            x[i, :, y:y + 3, z:z + 3] = 0.9
    return x


def view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Each picture rolled by -1..1 pixels each way, plus noise, clipped to [0, 1]."""
    out = torch.empty_like(x)
    for i in range(len(x)):
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
        out[i] = torch.roll(x[i], shifts=(dy, dx), dims=(1, 2))
    return (out + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)


class Batches:
    """Infinite batches with `state_dict` / `load_state_dict`, as a data module's train loader."""

    def __init__(self, source: torch.Tensor, layout: str, batch_size: int, seed: int, augment: bool):
        self.source, self.layout, self.batch_size, self.seed, self.augment = source, layout, batch_size, seed, augment
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.step)
        self.step += 1
        rows = torch.randint(len(self.source), (self.batch_size,), generator=g)
        x = self.source[rows]
        if self.layout == "views":
            return {"images": view(x, g), "images2": view(x, g)}
        return {"images": view(x, g) if self.augment else x}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]


class ImageData:
    """What an objective asks of a data module: check_layout, train_batches, eval_batches, info."""

    def __init__(self, n: int = 32, size: int = 16, channels: int = 1):
        from pretrainer.data_info import DataInfo

        self.train = pictures(n, size, channels, seed=0)
        self.heldout = pictures(n // 2, size, channels, seed=1)
        self.info = DataInfo(modality="image", image_size=size, channels=channels)
        self.options = []  # the layout options each call received, for tests to read

    def check_layout(self, layout: str, objective: str) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"{objective}: no layout {layout!r}")

    def train_batches(self, layout, batch_size, seq_len, *, seed, rank=0, world_size=1, **options):
        self.options.append(options)
        return Batches(self.train, layout, batch_size, seed + rank, options.get("augment", False))

    def eval_batches(self, layout, batch_size, seq_len, max_batches=0, **options):
        self.options.append(options)
        g = torch.Generator().manual_seed(7)
        chunks = [self.heldout[i:i + batch_size] for i in range(0, len(self.heldout), batch_size)]
        for x in itertools.islice(chunks, max_batches or None):
            yield {"images": x, "images2": view(x, g)} if layout == "views" else {"images": x}
