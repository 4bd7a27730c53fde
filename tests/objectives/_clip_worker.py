"""One process of the 2-process CLIP test, started by torchrun:

    torchrun --standalone --nproc_per_node=2 _clip_worker.py OUT_DIR

Under DDP it wraps CLIP's module (a tiny ViT and a tiny BERT text tower)
with `parallelize`, runs CLIP on this rank's pairs of a fixed global batch through
`call_objective` (image and caption vectors gathered from both ranks), backpropagates, and
(rank 0) writes the mean of the ranks' losses and the full gradients to
OUT_DIR/ddp.safetensors (FSDP2 refuses the scalar temperature parameter: not tested); then
the same with a gather whose backward keeps only this
rank's part, OUT_DIR/naive.safetensors, which the test shows would fail. Nothing is random.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrainer.config import ImplConfig, ObjectiveConfig
from pretrainer.data_info import DataInfo
from pretrainer.models import BertConfig, ViTConfig, build_model
from pretrainer.registry import OBJECTIVES
from pretrainer.training.distributed import init_distributed, shutdown_distributed

from _gather_step import save_one_step, without_sum_over_ranks

GLOBAL_BATCH = 8
VOCAB = 24
INFO = DataInfo(modality="image", image_size=8, channels=1, vocab_size=VOCAB, pad_id=0, cls_id=1, sep_id=2)
TEXT = BertConfig(n_layers=1, d_model=16, n_heads=2, max_len=16, dropout=0.0, attn_dropout=0.0)


def build_module():
    torch.manual_seed(0)
    objective = OBJECTIVES.get("clip")(ObjectiveConfig(name="clip", temperature=0.1, clip_dim=8, text_model=TEXT),
                                       INFO)
    return objective, objective.build(build_model(ViTConfig(patch_size=4, n_layers=1, d_model=16, n_heads=2), INFO))


def global_batch() -> dict:
    g = torch.Generator().manual_seed(100)
    ids = torch.randint(3, VOCAB, (GLOBAL_BATCH, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 4:] = 0  # some captions shorter than others
    ids = ids.masked_fill(mask == 0, 0)
    return {"images": torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=g), "input_ids": ids, "attention_mask": mask}


def main():
    out_dir = Path(sys.argv[1])
    torch.set_num_threads(1)
    info = init_distributed(ImplConfig(device="cpu", progress=False))
    assert info.world_size == 2 and dist.get_backend() == "gloo", info
    objective, module = build_module()
    save_one_step(objective, module, global_batch(), "ddp", info, out_dir / "ddp.safetensors")
    without_sum_over_ranks()
    objective, module = build_module()
    save_one_step(objective, module, global_batch(), "ddp", info, out_dir / "naive.safetensors")
    shutdown_distributed()


if __name__ == "__main__":
    main()
