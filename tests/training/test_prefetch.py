"""PrefetchLoader: the same batches as the wrapped loader, and its state after consumed batches."""

import time

import pytest
import torch

from pretrainer.training.prefetch import PrefetchLoader
from training_toys import ToyLoader


def _same_batch(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the prefetch thread did not run"
        time.sleep(0.001)


def test_same_batches_and_state_as_the_unwrapped_loader():
    plain, wrapped = ToyLoader(), PrefetchLoader(ToyLoader())
    assert wrapped.state_dict() == plain.state_dict()
    for consumed in range(1, 21):  # 16 batches an epoch: crosses into the next one
        assert _same_batch(next(wrapped), next(plain))
        # The thread has already built the next batch, so the wrapped loader is ahead...
        _wait_until(lambda: wrapped.loader.state_dict() != plain.state_dict())
        # ...but the state reports the position after the batches consumed.
        assert wrapped.state_dict() == plain.state_dict(), consumed
    assert wrapped.tokens_per_batch == plain.tokens_per_batch  # attributes pass through
    wrapped.close()
    assert wrapped.loader.state_dict() == plain.state_dict()  # closed: back at the consumed position
    assert _same_batch(next(wrapped.loader), next(plain))


def test_resumes_from_its_state_exactly():
    first = PrefetchLoader(ToyLoader())
    for _ in range(7):
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(5)]
    first.close()
    resumed = ToyLoader()
    resumed.load_state_dict(state)
    again = PrefetchLoader(resumed)
    assert all(_same_batch(next(again), b) for b in expected)
    # load_state_dict in the middle of iterating: the batch built ahead is dropped.
    again.load_state_dict(state)
    assert all(_same_batch(next(again), b) for b in expected)
    again.close()


def test_loader_errors_reach_the_consumer():
    class Failing(ToyLoader):
        def __next__(self):
            if self.position == 8:
                raise ValueError("bad shard")
            return super().__next__()

    wrapped = PrefetchLoader(Failing())
    next(wrapped), next(wrapped)
    with pytest.raises(ValueError, match="bad shard"):
        next(wrapped)
    with pytest.raises(ValueError, match="bad shard"):  # and keep reaching it
        next(wrapped)
    assert wrapped.state_dict() == {"epoch": 0, "position": 8}


def test_close_stops_the_thread():
    wrapped = PrefetchLoader(ToyLoader())
    next(wrapped)
    thread = wrapped._thread
    assert thread is not None and thread.is_alive()
    wrapped.close()
    assert not thread.is_alive()
