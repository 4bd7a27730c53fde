"""One process of the 2-process SimCLR test, started by torchrun:

    torchrun --standalone --nproc_per_node=2 _simclr_worker.py OUT_DIR

For each wrapping (DDP, FSDP2) and backbone (a tiny ViT, the dense network) it wraps the
objective's module with `parallelize`, runs SimCLR on this rank's images of a fixed global
batch of two views through `call_objective` (the projections gathered from both ranks),
backpropagates, and (rank 0) writes the mean of the ranks' losses and the full gradients to
OUT_DIR/<parallel>-<model>.safetensors. It also writes the gradients of a gather whose backward
keeps only this rank's own part (no sum over ranks), OUT_DIR/naive.safetensors, so the test
can show that it would fail. Nothing is random: the views are given and dropout is 0.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrainer.config import ImplConfig, ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.models import MLPConfig, ViTConfig, build_model
from pretrainer.registry import OBJECTIVES
from pretrainer.training.distributed import init_distributed, shutdown_distributed

from _gather_step import save_one_step, without_sum_over_ranks

GLOBAL_BATCH = 8
INFO = DataInfo(modality="image", image_size=8, channels=1)
CONFIGS = {"vit": ViTConfig(patch_size=4, n_layers=2, d_model=16, n_heads=2), "mlp": MLPConfig(hidden=[24, 16])}


def build_module(model: str):
    torch.manual_seed(0)
    objective = OBJECTIVES.get("simclr")(ObjectiveConfig(name="simclr", temperature=0.2, projection_dim=8), INFO)
    return objective, objective.build(build_model(CONFIGS[model], INFO))


def global_batch() -> dict:
    g = torch.Generator().manual_seed(100)
    images = torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=g)
    return {"images": images, "images2": (images + 0.1 * torch.randn(images.shape, generator=g)).clamp(0, 1)}


def run(model_name: str, parallel: str, info, out: Path) -> None:
    objective, module = build_module(model_name)
    save_one_step(objective, module, global_batch(), parallel, info, out)


def main():
    out_dir = Path(sys.argv[1])
    torch.set_num_threads(1)
    info = init_distributed(ImplConfig(device="cpu", progress=False))
    assert info.world_size == 2 and dist.get_backend() == "gloo", info
    for parallel in ("ddp", "fsdp"):
        for model_name in CONFIGS:
            run(model_name, parallel, info, out_dir / f"{parallel}-{model_name}.safetensors")

    without_sum_over_ranks()
    run("vit", "ddp", info, out_dir / "naive.safetensors")
    shutdown_distributed()


if __name__ == "__main__":
    main()
