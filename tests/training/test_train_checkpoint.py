import errno
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from pretrainer.errors import PretrainerError
from pretrainer.training import checkpoint as ckpt_mod
from pretrainer.io import atomic_write_text, load_weights, save_weights, unwrap
from pretrainer.training.checkpoint import load_checkpoint, load_latest_checkpoint, restore, save_checkpoint
from pretrainer.training.optim import build_optimizer
from training_toys import ToyLoader, ToyModel, ToyObjective, train_config


def _trained(seed=0, tie=False):
    torch.manual_seed(seed)
    model = ToyModel(tie=tie)
    opt = build_optimizer(model, train_config(), torch.device("cpu"))
    batch = next(ToyLoader())
    ToyObjective()(model, batch)["loss"].backward()
    opt.step()
    return model, opt


def _assert_same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_atomic_write_text_leaves_no_temp(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    assert (tmp_path / "a.txt").read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_checkpoint_round_trip(tmp_path):
    model, opt = _trained()
    extra = {"loader": {"epoch": 1, "position": np.int64(8)}, "gen": torch.arange(3, dtype=torch.uint8),
             "arr": np.arange(2, dtype=np.int32)}
    torch.manual_seed(5)
    save_checkpoint(tmp_path, 3, model, opt, extra)
    expected_draw = torch.rand(2)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert sorted(os.listdir(tmp_path / "checkpoints" / "step_000003")) == [
        "model.safetensors", "optimizer.safetensors", "state.json"]

    torch.manual_seed(99)
    fresh, fresh_opt = _trained(seed=1)
    ck = load_latest_checkpoint(tmp_path)
    state = restore(ck, fresh, fresh_opt)
    assert ck.step == 3
    _assert_same_model(model, fresh)
    assert torch.equal(torch.rand(2), expected_draw)  # RNG restored
    for p, q in zip(model.parameters(), fresh.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], fresh_opt.state[q][key])
    assert fresh_opt.param_groups[0]["betas"] == (0.9, 0.98)
    assert state["loader"] == {"epoch": 1, "position": 8}
    assert torch.equal(state["gen"], torch.arange(3, dtype=torch.uint8))
    assert state["arr"].dtype == np.int32


def test_keeps_only_recent_checkpoints(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, opt, {}, keep=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_000003", "step_000004"]


def test_crash_while_saving_keeps_previous_latest(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, 1, model, opt, {"n": 1})

    calls = []
    real = ckpt_mod.write_safetensors

    def dies_on_second_file(path, tensors, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, tensors, metadata)

    monkeypatch.setattr(ckpt_mod, "write_safetensors", dies_on_second_file)
    # One line: what failed, and which checkpoint a resume would use.
    with pytest.raises(PretrainerError, match=r"step_000002: disk full while saving the checkpoint of step 2 \(No "
                                              r"space left on device, writing optimizer.safetensors\); the last "
                                              r"good checkpoint is .*step_000001 \("):
        save_checkpoint(tmp_path, 2, model, opt, {"n": 2})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step_000001"]
    assert load_latest_checkpoint(tmp_path).extra == {"n": 1}

    # A crash after the folder is renamed but before `latest` moves: latest still names step 1.
    def no_latest(path, text):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ckpt_mod, "atomic_write_text", no_latest)
    with pytest.raises(PretrainerError, match=r"write failed .*\(Input/output error\); .*step_000001"):
        save_checkpoint(tmp_path, 2, model, opt, {"n": 2})
    monkeypatch.undo()
    ck = load_latest_checkpoint(tmp_path)
    assert ck.step == 1 and ck.extra == {"n": 1}
    save_checkpoint(tmp_path, 2, model, opt, {"n": 2})  # the orphan is replaced
    assert load_latest_checkpoint(tmp_path).extra == {"n": 2}


def test_a_full_disk_in_safetensors_is_an_oserror_with_its_errno(tmp_path):
    """safetensors reports a failed write as its own error type; the errno must survive, so a
    full disk is told from a bug (here a file-size limit: EFBIG, as the fault tests use)."""
    import resource

    from pretrainer.io import is_disk_full, write_safetensors

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # Python ignores SIGXFSZ: the write fails
    try:
        with pytest.raises(OSError) as caught:
            write_safetensors(tmp_path / "big.safetensors", {"w": torch.zeros(10_000)}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == errno.EFBIG and is_disk_full(caught.value)
    assert caught.value.filename == str(tmp_path / "big.safetensors")


def test_tied_weights_round_trip(tmp_path):
    model, _ = _trained(tie=True)
    save_weights(model, tmp_path / "model.safetensors")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert "emb.weight" in f.keys() and "head.weight" not in f.keys()
    fresh = ToyModel(tie=True)
    load_weights(fresh, tmp_path / "model.safetensors")
    _assert_same_model(model, fresh)
    assert fresh.head.weight is fresh.emb.weight

    # Also through a checkpoint, and into an untied model (each copy gets the weights).
    opt = build_optimizer(model, train_config(), torch.device("cpu"))
    save_checkpoint(tmp_path, 1, model, opt, {})
    untied = ToyModel(tie=False)
    restore(load_latest_checkpoint(tmp_path), untied)
    assert torch.equal(untied.head.weight, model.emb.weight)


def test_wrapper_prefixes_are_not_saved(tmp_path):
    class Compiled(torch.nn.Module):  # what torch.compile's OptimizedModule looks like
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    model, _ = _trained()
    assert unwrap(Compiled(model)) is model
    save_weights(Compiled(model), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())

    # A file saved from a DDP-wrapped state dict loads into the plain model.
    from safetensors.torch import save_file
    save_file({f"module.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ddp.safetensors"))
    fresh = ToyModel()
    load_weights(fresh, tmp_path / "ddp.safetensors")
    _assert_same_model(model, fresh)


def test_refuses_pickle_and_names_the_path(tmp_path):
    model, _ = _trained()
    path = tmp_path / "model.safetensors"
    torch.save(model.state_dict(), path)
    with pytest.raises(PretrainerError) as err:
        load_weights(ToyModel(), path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PretrainerError, match="file not found"):
        load_weights(ToyModel(), tmp_path / "missing.safetensors")


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    model, opt = _trained()
    folder = save_checkpoint(tmp_path, 1, model, opt, {})
    (folder / "state.json").write_text('{"format": ')
    with pytest.raises(PretrainerError, match="state.json: corrupt") as err:
        load_latest_checkpoint(tmp_path)
    assert "\n" not in str(err.value)

    folder = save_checkpoint(tmp_path, 2, model, opt, {})
    data = (folder / "optimizer.safetensors").read_bytes()
    (folder / "optimizer.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainerError, match="optimizer.safetensors"):
        load_checkpoint(folder)

    (tmp_path / "checkpoints" / "latest").write_text("step_000042\n")
    with pytest.raises(PretrainerError, match="step_000042: checkpoint folder not found"):
        load_latest_checkpoint(tmp_path)


def test_weights_that_do_not_fit(tmp_path):
    save_weights(ToyModel(dim=8), tmp_path / "m.safetensors")
    with pytest.raises(PretrainerError, match="do not fit"):
        load_weights(ToyModel(dim=4), tmp_path / "m.safetensors")
    assert load_latest_checkpoint(tmp_path) is None
