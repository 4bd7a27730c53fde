"""Data parallelism on CPU (gloo, 2 processes started by torchrun): DDP and FSDP2 train
exactly like one process with the same global batch, gradients reach heads the objectives
call outside `forward`, and checkpoints move between world sizes.

The runs go through the real CLI (`torchrun -m pretrainer pretrain`), on a tiny GPT with
causal LM: every rank has the same number of target tokens, so the mean of the ranks'
mean losses is the one-process loss and the comparison can be exact (fp32, dropout 0).
"""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pretrainer.data.loader import EpochSampler

HERE = Path(__file__).parent
WORDS = ("the cat sat on a mat while dogs ran past quickly and birds sang loud songs "
         "over green hills under grey skies near old towns with red roofs").split()
STEPS, GLOBAL_BATCH = 4, 8
TOL = 1e-5


def write_run_config(root: Path) -> Path:
    rng = random.Random(0)
    (root / "corpus.txt").write_text("\n".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "." for _ in range(300)))
    cfg = root / "gpt.toml"
    cfg.write_text(f"""
[run]
dir = "{root / 'unused'}"
seed = 3
[data]
train = ["{root / 'corpus.txt'}"]
cache_dir = "{root / 'cache'}"
[tokenizer]
kind = "bytebpe"
vocab_size = 300
min_frequency = 1
[model]
name = "gpt"
n_layers = 2
d_model = 32
n_heads = 2
max_len = 32
dropout = 0.0
[objective]
name = "clm"
[train]
batch_size = {GLOBAL_BATCH}
seq_len = 16
accum = 2
max_steps = {STEPS}
warmup = 0.25
grad_clip = 1.0
eval_every = 0
eval_batches = 0
save_every = 2
keep_checkpoints = 0
log_every = 1
[impl]
device = "cpu"
progress = false
deterministic = true
threads = 1
""")
    return cfg


def launch(args: list[str], nproc: int) -> None:
    """`pretrainer ARGS` in one plain process, or under torchrun with `nproc` processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "pretrainer", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "pretrainer", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def pretrain(cfg: Path, run_dir: Path, nproc: int, parallel: str = "ddp", resume: bool = False,
             extra: tuple[str, ...] = ()) -> Path:
    launch(["pretrain", str(cfg), f"--run.dir={run_dir}", f"--train.batch_size={GLOBAL_BATCH // nproc}",
            f"--impl.parallel={parallel}", *(["--resume"] if resume else []), *extra], nproc)
    return run_dir


def train_losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["loss"] for r in records if r["split"] == "train"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=TOL, rtol=0, msg=name)


def cut_back_to_step_2(src: Path, dst: Path) -> Path:
    """A copy of run `src` as if it had been stopped right after its step-2 checkpoint."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / f"step_{STEPS:06d}")
    (dst / "model.safetensors").unlink()
    (dst / "checkpoints" / "latest").write_text("step_000002\n")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs made on demand and shared by the tests: one process, and 2 processes per wrapping."""
    root = tmp_path_factory.mktemp("dist")
    cfg = write_run_config(root)
    made = {}

    def get(kind: str) -> Path:
        if kind not in made:
            nproc = 1 if kind == "single" else 2
            made[kind] = pretrain(cfg, root / kind, nproc, parallel="ddp" if nproc == 1 else kind)
        return made[kind]

    get.cfg, get.root = cfg, root
    return get


PARALLEL = ["ddp", "fsdp"]


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", PARALLEL)
def test_two_processes_train_like_one(runs, parallel):
    single, two = runs("single"), runs(parallel)
    assert len(train_losses(two)) == STEPS  # logged once (rank 0), every step
    assert train_losses(two) == pytest.approx(train_losses(single), abs=TOL, rel=0)
    assert_same_weights(two, single)
    state = json.loads((two / "checkpoints" / "step_000002" / "state.json").read_text())
    assert state["extra"]["loader"] == {"epoch": 0, "samples": 2 * 2 * GLOBAL_BATCH,  # global samples
                                        "global_batch": GLOBAL_BATCH}


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", PARALLEL)
def test_checkpoint_of_two_processes_resumes_in_one(runs, parallel):
    resumed = cut_back_to_step_2(runs(parallel), runs.root / f"{parallel}-then-1")
    pretrain(runs.cfg, resumed, 1, resume=True)
    assert_same_weights(resumed, runs("single"))


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", PARALLEL)
def test_checkpoint_of_one_process_resumes_in_two(runs, parallel):
    resumed = cut_back_to_step_2(runs("single"), runs.root / f"1-then-{parallel}")
    pretrain(runs.cfg, resumed, 2, parallel=parallel, resume=True)
    assert_same_weights(resumed, runs("single"))
    assert train_losses(resumed)[-2:] == pytest.approx(train_losses(runs("single"))[-2:], abs=TOL, rel=0)


@pytest.mark.distributed
def test_two_process_run_with_dropout_resumes_exactly(runs):
    """Each rank draws its own dropout masks (streams derived from rank 0's saved RNG state),
    and a resumed 2-process run still ends bit-for-bit where the uninterrupted one did."""
    dropout = ("--model.dropout=0.1",)
    straight = pretrain(runs.cfg, runs.root / "dropout-2", 2, extra=dropout)
    resumed = cut_back_to_step_2(straight, runs.root / "dropout-2-resumed")
    pretrain(runs.cfg, resumed, 2, resume=True, extra=dropout)
    assert train_losses(resumed)[-2:] == train_losses(straight)[-2:]
    wa, wb = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(wa[name], wb[name]) for name in wa)


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", PARALLEL)
def test_heads_called_outside_forward_get_reduced_gradients(tmp_path, parallel):
    """MLM calls its head (and NSP model.pooled / nsp_head) after model(...); MLM freezes the
    pooler it never reads (DDP runs without find_unused_parameters). The 2-process gradients
    must be the mean of each rank's gradient, with frozen parameters left at None, as in one process."""
    sys.path.insert(0, str(HERE))
    from _dist_worker import build_bert, build_objective, global_batch, rank_rows

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_dist_worker.py"), str(tmp_path), parallel]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name in ("mlm", "mlm_nsp"):
        objective = build_objective(name)
        model = objective.build(build_bert())
        for rank in range(2):
            torch.manual_seed(1)
            out = objective(model, rank_rows(global_batch(), rank, 2))
            (out["loss"] / 2).backward()
        missing = json.loads((tmp_path / f"{name}.json").read_text())
        assert missing == [n for n, p in model.named_parameters() if p.grad is None]
        assert ("backbone.pooler.weight" in missing) == (name == "mlm")
        assert all(not p.requires_grad for n, p in model.named_parameters() if n in missing)
        got = load_file(str(tmp_path / f"{name}.safetensors"))
        for pname, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(got[pname], p.grad, atol=TOL, rtol=0, msg=f"{name}: {pname}")

    # Rank 0 keeps its random stream; rank 1 gets its own, the same each time from the same state.
    (rank0_first, rank0_again), (rank1_first, rank1_again) = json.loads((tmp_path / "rng.json").read_text())
    torch.manual_seed(7)
    assert rank0_first == rank0_again == torch.rand(4).tolist()
    assert rank1_first == rank1_again != rank0_first

    taken = json.loads((tmp_path / "samples.json").read_text())
    single = EpochSampler(50, GLOBAL_BATCH, seed=5)
    for step, (rank0, rank1) in enumerate(zip(*taken)):
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(single.next_indices().tolist()), step


def test_sampler_ranks_are_disjoint_and_make_the_global_batch():
    ranks = [EpochSampler(100, 3, seed=1, rank=r, world_size=4) for r in range(4)]
    single = EpochSampler(100, 12, seed=1)
    for _ in range(20):  # 8 global batches per epoch: crosses two epoch boundaries
        parts = [s.next_indices().tolist() for s in ranks]
        assert all(len(p) == 3 for p in parts)
        assert sum(map(len, parts)) == len(set().union(*parts))
        assert sorted(sum(parts, [])) == sorted(single.next_indices().tolist())
        assert all(s.state_dict() == single.state_dict() for s in ranks)  # the position is global


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_sampler_resumes_across_world_sizes_without_replay(before, after):
    """The state counts global samples: another world size continues at the same sample."""
    batch = 12  # global
    straight = EpochSampler(96, batch, seed=2)
    want = [sorted(straight.next_indices().tolist()) for _ in range(12)]  # 8 per epoch

    first = [EpochSampler(96, batch // before, seed=2, rank=r, world_size=before) for r in range(before)]
    got = [sorted(sum((s.next_indices().tolist() for s in first), [])) for _ in range(5)]
    state = json.loads(json.dumps(first[0].state_dict()))
    second = [EpochSampler(96, batch // after, seed=2, rank=r, world_size=after) for r in range(after)]
    for s in second:
        s.load_state_dict(state)
    got += [sorted(sum((s.next_indices().tolist() for s in second), [])) for _ in range(7)]
    assert got == want


def test_sampler_reads_old_per_batch_positions():
    sampler = EpochSampler(100, 4, seed=0)
    sampler.load_state_dict({"epoch": 1, "position": 3})
    assert sampler.state_dict() == {"epoch": 1, "samples": 12, "global_batch": 4}


@pytest.mark.distributed
@pytest.mark.parametrize("parallel", PARALLEL)
def test_distillation_with_two_processes_trains_like_one(tmp_path, parallel):
    """The teacher is held by the objective (each rank its own copy, never wrapped): two processes
    distil exactly like one with the same global batch."""
    from pretrainer.config import TokenizerConfig, load_config
    from pretrainer.data.tokenizer import train_tokenizer
    from pretrainer.io import save_weights
    from pretrainer.models import build_model
    from pretrainer.runs import write_run_header

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "." for _ in range(300)]
    (tmp_path / "corpus.txt").write_text("\n".join(lines))
    tokenizer = train_tokenizer(lines, TokenizerConfig(vocab_size=120, min_frequency=1))
    torch.manual_seed(5)
    teacher = build_model(load_config(None, ["--model.n_layers=3", "--model.d_model=48", "--model.n_heads=2",
                                             "--model.max_len=32", "--model.dropout=0.0",
                                             "--model.attn_dropout=0.0"]).model, tokenizer.vocab_size)
    write_run_header(tmp_path / "teacher", None, teacher, tokenizer)
    save_weights(teacher, tmp_path / "teacher" / "model.safetensors")
    cfg = write_run_config(tmp_path)
    text = cfg.read_text().replace('name = "gpt"', 'name = "bert"\nattn_dropout = 0.0').replace(
        'name = "clm"', f'name = "distill"\nteacher = "{tmp_path / "teacher"}"')
    text = text.replace('kind = "bytebpe"', 'kind = "wordpiece"')
    cfg.write_text(text)
    one = pretrain(cfg, tmp_path / "one", 1)
    two = pretrain(cfg, tmp_path / "two", 2, parallel=parallel)
    assert_same_weights(one, two)
    torch.testing.assert_close(torch.tensor(train_losses(one)), torch.tensor(train_losses(two)), atol=TOL, rtol=0)
    assert (two / "teacher.json").is_file()
