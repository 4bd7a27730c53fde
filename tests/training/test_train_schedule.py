
import pytest
import torch

from pretrainer.errors import PretrainerError
from pretrainer.config import parse_duration
from pretrainer.training.schedule import LRSchedule, lr_factor


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400),
                                          ("2.5m", 150), (" 45 ", 45), ("1h0m5s", 3605)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "x", "10q", "m", "-5m", "0s", "1m2m", "h1"])
def test_parse_duration_rejects(text):
    with pytest.raises(PretrainerError, match=r"train.budget: cannot read .* as a duration \(use e.g. 90s, 30m, 1h\)"):
        parse_duration(text)


def test_warmup_rises_linearly_to_peak():
    assert lr_factor(0.0, 0.1, "cosine", 0.1) == 0.0
    assert lr_factor(0.05, 0.1, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, "cosine", 0.1) == pytest.approx(1.0)
    # warmup >= 1 counts steps: 10 of 100 steps is a 0.1 fraction
    assert lr_factor(0.05, 10, "cosine", 0.1, total_steps=100) == pytest.approx(0.5)


def test_cosine_ends_at_min_ratio_and_decreases():
    values = [lr_factor(p / 100, 0.1, "cosine", 0.1) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.1)
    assert lr_factor(0.55, 0.1, "cosine", 0.1) == pytest.approx(0.55)  # halfway: mean of 1 and 0.1


def test_linear_and_constant():
    assert lr_factor(0.55, 0.1, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1, "linear", 0.2) == pytest.approx(0.2)
    assert lr_factor(0.9, 0.1, "constant", 0.2) == 1.0
    assert lr_factor(0.5, 0.0, "cosine", 0.0) == pytest.approx(0.5)  # no warmup


def _optimizer(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_step_schedule_first_peak_last():
    opt = _optimizer(2.0)
    sched = LRSchedule(opt, total_steps=20, warmup=4, schedule="cosine", min_lr_ratio=0.1)
    lrs = []
    while not sched.done():
        lrs.append(sched.get_lr())
        sched.step()
    assert len(lrs) == 20
    assert lrs[0] == pytest.approx(0.5)  # 1/4 of the peak: the first step already learns
    assert lrs[3] == pytest.approx(2.0)
    assert lrs[-1] == pytest.approx(0.2)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("warmup", [0.1, 5])
def test_budget_schedule_ends_on_time(warmup):
    clock = FakeClock()
    opt = _optimizer(1.0)
    sched = LRSchedule(opt, budget_s=60.0, warmup=warmup, schedule="cosine", min_lr_ratio=0.1, clock=clock)
    clock.now = 1000.0  # the clock's origin does not matter
    sched.start()
    lrs = []
    while not sched.done():
        lrs.append(sched.get_lr())
        clock.now += 1.5  # one step takes 1.5 s
        sched.step()
    assert len(lrs) == 40 and sched.elapsed() == pytest.approx(60.0)
    assert max(lrs) == pytest.approx(1.0, abs=0.03)
    assert lrs[-1] == pytest.approx(0.1, abs=0.01)
    if warmup == 5:  # warmup in steps stays in steps
        assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert sched.estimated_total_steps() == 40


def test_budget_schedule_resumes_elapsed_time():
    clock = FakeClock()
    sched = LRSchedule(_optimizer(), budget_s=10.0, warmup=0.0, schedule="linear", clock=clock)
    sched.start()
    clock.now = 4.0
    sched.step()
    state = sched.state_dict()
    assert state == {"step": 1, "elapsed": 4.0, "budget_warmup": None}

    clock.now = 100.0  # a new process: its clock starts elsewhere
    again = LRSchedule(_optimizer(), budget_s=10.0, warmup=0.0, schedule="linear", clock=clock)
    again.load_state_dict(state)
    again.start()
    assert again.elapsed() == 4.0 and again.steps_done == 1
    assert again.get_lr() == pytest.approx(0.2)  # the coming step counted at 4 s: 8 of 10 s
    clock.now = 106.0
    assert again.done()
