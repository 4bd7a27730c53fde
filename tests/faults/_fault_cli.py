"""`python _fault_cli.py ARGS...` is `pretrainer ARGS...` with one fault injected, as the
environment variable PRETRAINER_FAULT (JSON) says:

  {"kill_in_save": N, "stage": STAGE}   SIGKILL this process inside its N-th checkpoint save, at STAGE
                                        (one of STAGES: each a point of `checkpoint.save_checkpoint`)
  {"fsize_after_saves": N, "limit": B}  after its N-th checkpoint save, no file may grow past B bytes
                                        (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail with EFBIG):
                                        the disk is full from then on; B = "metrics.jsonl" is that file's
                                        size then: its next record cannot be written

The hooks wrap names in `pretrainer.training.checkpoint` and `loop`; if those change, the
`getattr` below fails loudly rather than injecting nothing.
"""

import json
import os
import resource
import signal
import sys
from pathlib import Path

from pretrainer.cli.main import main
from pretrainer.training import checkpoint, loop

STAGES = (
    "model_file",      # model.safetensors half-written in the temporary folder
    "optimizer_file",  # optimizer.safetensors half-written
    "state_file",      # state.json half-written
    "before_rename",   # the temporary folder complete, not yet renamed into place
    "before_latest",   # renamed into place, `latest` not yet moved
    "latest_file",     # `latest`'s temporary file half-written
    "prune",           # `latest` moved, an older checkpoint half-deleted
)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def truncate_to_half(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def wrap(module, name: str, make):
    real = getattr(module, name)
    setattr(module, name, make(real))


def install_kill(save_index: int, stage: str) -> None:
    if stage not in STAGES:
        raise SystemExit(f"unknown stage {stage!r}")
    saves = [0]
    in_save = [0]  # calls of the hooked function within the current save

    def counting_save(real):
        def save(*args, **kwargs):
            saves[0] += 1
            in_save[0] = 0
            return real(*args, **kwargs)
        return save

    wrap(loop, "save_checkpoint", counting_save)

    def armed() -> bool:
        return saves[0] == save_index

    def hook_write_safetensors(real):
        def write(path, tensors, metadata):
            real(path, tensors, metadata)
            in_save[0] += 1
            target = {"model_file": 1, "optimizer_file": 2}.get(stage)
            if armed() and in_save[0] == target:
                truncate_to_half(path)
                die()
        return write

    def hook_fsync_file(real):
        def fsync(path):
            real(path)
            if armed() and stage == "state_file" and Path(path).name == "state.json":
                truncate_to_half(path)
                die()
        return fsync

    def hook_fsync_path(real):
        def fsync(path):
            real(path)
            if armed() and stage == "before_rename" and Path(path).name.startswith(".tmp-"):
                die()
        return fsync

    def hook_latest(real):
        def write(path, text):
            if armed() and stage == "before_latest":
                die()
            if armed() and stage == "latest_file":
                tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
                tmp.write_text(text[: len(text) // 2])
                die()
            real(path, text)
        return write

    def hook_prune(real):
        def prune(ckpt_dir, keep, current):
            if armed() and stage == "prune":
                steps = sorted(p for p in Path(ckpt_dir).iterdir() if p.name.startswith("step_"))
                doomed = steps[:-keep] if keep > 0 else []
                for f in sorted(doomed[0].iterdir())[:1] if doomed else []:
                    f.unlink()  # half of an older checkpoint gone
                die()
            real(ckpt_dir, keep, current)
        return prune

    wrap(checkpoint, "write_safetensors", hook_write_safetensors)
    wrap(checkpoint, "fsync_file", hook_fsync_file)
    wrap(checkpoint, "fsync_path", hook_fsync_path)
    wrap(checkpoint, "atomic_write_text", hook_latest)
    wrap(checkpoint, "_prune", hook_prune)


def install_file_size_limit(after_saves: int, limit: int | str) -> None:
    saves = [0]

    def limited_after(real):
        def save(*args, **kwargs):
            out = real(*args, **kwargs)
            saves[0] += 1
            if saves[0] == after_saves:
                size = os.path.getsize(Path(args[0]) / "metrics.jsonl") if limit == "metrics.jsonl" else int(limit)
                resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
            return out
        return save

    wrap(loop, "save_checkpoint", limited_after)


def install(fault: dict) -> None:
    if "kill_in_save" in fault:
        install_kill(int(fault["kill_in_save"]), fault["stage"])
    elif "fsize_after_saves" in fault:
        install_file_size_limit(int(fault["fsize_after_saves"]), fault["limit"])
    elif fault:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(json.loads(os.environ.get("PRETRAINER_FAULT") or "{}"))
    raise SystemExit(main(sys.argv[1:]))
