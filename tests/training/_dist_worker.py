"""One process of a 2-process test, started by torchrun:

    torchrun --standalone --nproc_per_node=2 _dist_worker.py OUT_DIR PARALLEL

For each of MLM and MLM+NSP on a tiny BERT, wraps the model with `parallelize`, runs one
forward/backward through `call_objective` on this rank's half of a fixed global batch,
and (rank 0) writes the full gradients to OUT_DIR/<objective>.safetensors, with the names
of parameters that got no gradient in OUT_DIR/<objective>.json. It also records which
sampler items each rank took (OUT_DIR/samples.json) and what each rank draws after
`give_ranks_own_rng_streams` (OUT_DIR/rng.json). The test recomputes all of it in
one process, with the builders below.
"""

import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from pretrainer.config import ImplConfig, ObjectiveConfig  # noqa: E402
from pretrainer.data.loader import EpochSampler  # noqa: E402
from pretrainer.models.encoder import BertConfig, BertModel  # noqa: E402
from pretrainer.registry import OBJECTIVES  # noqa: E402
from pretrainer.io import unwrap  # noqa: E402
from pretrainer.training.distributed import (call_objective, full_tensor, give_ranks_own_rng_streams,  # noqa: E402
                                             init_distributed, parallelize, shutdown_distributed)

VOCAB, SEQ, GLOBAL_BATCH = 40, 12, 8
SPECIAL = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask


class StubTokenizer:
    vocab_size, pad_id, cls_id, sep_id, mask_id = VOCAB, 0, 2, 3, 4
    special_ids = SPECIAL


def build_bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, n_layers=2, d_model=32, n_heads=2, max_len=SEQ,
                     dropout=0.0, attn_dropout=0.0)
    return BertModel(cfg)


def build_objective(name: str):
    return OBJECTIVES.get(name)(ObjectiveConfig(name=name, mask_rate=0.3), StubTokenizer())


def global_batch() -> dict:
    """[CLS] a [SEP] b [SEP] rows with NSP labels: one global batch of GLOBAL_BATCH rows."""
    g = torch.Generator().manual_seed(100)
    ids = torch.randint(len(SPECIAL), VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
    ids[:, 0], ids[:, SEQ // 2], ids[:, -1] = StubTokenizer.cls_id, StubTokenizer.sep_id, StubTokenizer.sep_id
    types = torch.zeros_like(ids)
    types[:, SEQ // 2 + 1:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "special_tokens_mask": ids < len(SPECIAL), "token_type_ids": types,
            "next_sentence_label": torch.randint(0, 2, (GLOBAL_BATCH,), generator=g)}


def rank_rows(batch: dict, rank: int, world_size: int) -> dict:
    """Rank r's rows r, r + W, ... (the sampler's rule)."""
    return {k: v[rank::world_size] for k, v in batch.items()}


def main():
    out_dir, parallel = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    impl = ImplConfig(device="cpu", parallel=parallel, progress=False)
    info = init_distributed(impl)
    assert info.world_size == 2 and dist.get_backend() == "gloo", info

    for name in ("mlm", "mlm_nsp"):
        model = parallelize(build_objective(name).build(build_bert()), impl, info.device)
        batch = rank_rows(global_batch(), info.rank, info.world_size)
        torch.manual_seed(1)  # the masking draws; the same on every rank, as after set_determinism
        out = call_objective(model, build_objective(name), batch)
        out["loss"].backward()
        grads, missing = {}, []
        for pname, p in unwrap(model).named_parameters():
            if p.grad is None:
                missing.append(pname)
            else:
                grads[pname] = full_tensor(p.grad).detach().cpu().contiguous()  # a collective under FSDP
        if info.is_main:
            save_file(grads, str(out_dir / f"{name}.safetensors"))
            (out_dir / f"{name}.json").write_text(json.dumps(missing))

    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        give_ranks_own_rng_streams()
        draws.append(torch.rand(4).tolist())
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, draws)
    if info.is_main:
        (out_dir / "rng.json").write_text(json.dumps(everyone))

    sampler = EpochSampler(50, GLOBAL_BATCH // info.world_size, seed=5, rank=info.rank,
                           world_size=info.world_size)
    taken = [sampler.next_indices().tolist() for _ in range(10)]  # crosses an epoch boundary
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, taken)
    if info.is_main:
        (out_dir / "samples.json").write_text(json.dumps(everyone))
    # Free the wrapped model before the process group goes: an FSDP module that outlives
    # it is torn down during interpreter exit, which can abort the process.
    del model, out
    gc.collect()
    shutdown_distributed()


if __name__ == "__main__":
    main()
