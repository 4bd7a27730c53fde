"""One process of the 2-process SimCSE test, started by torchrun:

    torchrun --standalone --nproc_per_node=2 _simcse_worker.py OUT_DIR

For each wrapping (DDP, FSDP2) and pooling (cls_mlp, mean) it wraps a tiny BERT with
`parallelize`, runs SimCSE on this rank's rows of a fixed global batch through
`call_objective` (the keys gathered from both ranks), backpropagates, and (rank 0) writes the
mean of the ranks' losses and the full gradients to OUT_DIR/<parallel>-<pooling>.safetensors.
It also writes the gradients of a gather whose backward keeps only this rank's own part
(no sum over ranks), OUT_DIR/naive.safetensors, so the test can show that it would fail.
Dropout is 0 (objective.dropout), so one process and two draw the same views.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrainer.config import ImplConfig, ObjectiveConfig
from pretrainer.models.encoder import BertConfig, BertModel
from pretrainer.registry import OBJECTIVES
from pretrainer.training.distributed import init_distributed, shutdown_distributed

from _gather_step import save_one_step, without_sum_over_ranks

VOCAB, SEQ, GLOBAL_BATCH = 40, 10, 8
PAD, CLS, SEP = 0, 2, 3


def build_module(pooling: str):
    torch.manual_seed(0)
    backbone = BertModel(BertConfig(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=2, max_len=SEQ,
                                    dropout=0.1, attn_dropout=0.1))
    objective = OBJECTIVES.get("simcse")(ObjectiveConfig(name="simcse", pooling=pooling, dropout=0.0,
                                                         temperature=0.1))
    return objective, objective.build(backbone)


def global_batch() -> dict:
    """GLOBAL_BATCH texts of different lengths, padded: [CLS] text [SEP] pad..."""
    g = torch.Generator().manual_seed(100)
    ids = torch.randint(5, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
    lengths = torch.randint(3, SEQ + 1, (GLOBAL_BATCH,), generator=g)
    positions = torch.arange(SEQ).expand(GLOBAL_BATCH, SEQ)
    ids[:, 0] = CLS
    ids[positions == (lengths - 1)[:, None]] = SEP
    attention = positions < lengths[:, None]
    ids[~attention] = PAD
    return {"input_ids": ids, "attention_mask": attention, "special_tokens_mask": ids < 5}


def run(pooling: str, parallel: str, info, out: Path) -> None:
    objective, module = build_module(pooling)
    save_one_step(objective, module, global_batch(), parallel, info, out)


def main():
    out_dir = Path(sys.argv[1])
    torch.set_num_threads(1)
    info = init_distributed(ImplConfig(device="cpu", progress=False))
    assert info.world_size == 2 and dist.get_backend() == "gloo", info
    for parallel in ("ddp", "fsdp"):
        for pooling in ("cls_mlp", "mean"):
            run(pooling, parallel, info, out_dir / f"{parallel}-{pooling}.safetensors")

    without_sum_over_ranks()
    run("mean", "ddp", info, out_dir / "naive.safetensors")
    shutdown_distributed()


if __name__ == "__main__":
    main()
