import pytest
import torch

from pretrainer.training.loop import train_step
from pretrainer.training.optim import build_optimizer
from training_toys import ToyLoader, ToyModel, ToyObjective, train_config


def test_no_decay_on_norms_and_biases():
    model = ToyModel()
    opt = build_optimizer(model, train_config(weight_decay=0.1), torch.device("cpu"))
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decay_of[id(p)] == (0.1 if p.ndim >= 2 else 0.0), name
    assert opt.defaults["fused"] is True  # the one-pass kernel, on CPU too
    assert opt.param_groups[0]["betas"] == (0.9, 0.98)


def test_uses_model_param_groups():
    class WithGroups(ToyModel):
        def param_groups(self, weight_decay):
            return [{"params": [self.emb.weight], "weight_decay": 0.0, "lr": 1e-5},
                    {"params": (p for n, p in self.named_parameters() if not n.startswith("emb")),
                     "weight_decay": weight_decay}]

    opt = build_optimizer(WithGroups(), train_config(lr=1e-3), torch.device("cpu"))
    assert [g["lr"] for g in opt.param_groups] == [1e-5, 1e-3]
    assert len(opt.param_groups[1]["params"]) == 4  # norm weight+bias, head weight+bias


def _sgd_step(model, batches, accum, grad_clip=0.0):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return train_step(model, ToyObjective(), iter(batches), opt, accum, None, grad_clip)


def test_grad_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = ToyModel(dropout=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [{**b, "labels": (b["labels"] * 7) % 16} for b in [next(ToyLoader(8))]]
    metrics = _sgd_step(model, batches, 1, grad_clip=0.05)
    # SGD with lr 1 moves parameters by exactly the (clipped) gradient.
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(metrics["grad_norm"]) > 0.05
    assert update.norm().item() == pytest.approx(0.05, rel=1e-4)
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)


def test_accumulation_matches_one_big_batch():
    torch.manual_seed(0)
    a = ToyModel(dropout=0.0)
    b = ToyModel(dropout=0.0)
    b.load_state_dict(a.state_dict())
    big = next(ToyLoader(batch_size=8))
    halves = [{k: v[:4] for k, v in big.items()}, {k: v[4:] for k, v in big.items()}]
    m1 = _sgd_step(a, [big], accum=1)
    m2 = _sgd_step(b, halves, accum=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=0)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-6)
    assert m1["n_tokens"] == m2["n_tokens"] == 32


def test_train_step_reads_nothing_back_to_the_host():
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostReads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.is_nonzero,
                                       torch.ops.aten.nonzero):
                self.seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = ToyModel()
    opt = build_optimizer(model, train_config(), torch.device("cpu"))
    batches = ToyLoader()
    train_step(model, ToyObjective(), batches, opt, 2, None, 1.0)  # the optimizer's first step builds state
    with HostReads() as reads:
        metrics = train_step(model, ToyObjective(), batches, opt, 2, None, 1.0)
    assert reads.seen == []  # metrics stay on the device until fit logs them
    assert metrics["loss"].dtype == metrics["grad_norm"].dtype == torch.float64 and metrics["n_tokens"] == 32
