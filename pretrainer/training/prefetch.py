"""Build the next batch in a background thread while the current training step runs.

Cutting a batch (gathering token windows from the memory map, special-token masks, word
starts) is Python and numpy work that would otherwise sit between two steps; the model's
kernels release the GIL, so a thread can do it meanwhile. Resume stays exact: the wrapper
remembers the loader's state as it was right after each batch was built, and reports the
state after the last batch the loop *consumed*, never the one waiting in the queue.
"""

from __future__ import annotations

import copy
import queue
import threading


class _Failed:
    """What the producer thread hands over when the loader raised (StopIteration included)."""

    def __init__(self, error: BaseException):
        self.error = error


class PrefetchLoader:
    """Iterates `loader`'s batches in the same order, `depth` of them built ahead in a thread.

    `state_dict()` / `load_state_dict()` speak the wrapped loader's format. `close()` stops
    the thread and puts the wrapped loader back at the consumed position, so it can be used
    on its own afterwards as if it had never been wrapped. Other attributes (e.g.
    `tokens_per_batch`) are the wrapped loader's.
    """

    def __init__(self, loader, depth: int = 1):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.loader = loader
        self.depth = depth
        self._consumed_state = copy.deepcopy(loader.state_dict())
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def __getattr__(self, name):
        if name == "loader":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self):
        return self

    def __next__(self):
        if self._failure is not None:
            raise self._failure
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, _Failed):
            self._failure = item.error
            self._join()
            raise item.error
        batch, self._consumed_state = item
        return batch

    def state_dict(self) -> dict:
        """The wrapped loader's state after the last batch handed out by `__next__`."""
        return copy.deepcopy(self._consumed_state)

    def load_state_dict(self, state: dict) -> None:
        self._join()
        self._failure = None
        self.loader.load_state_dict(state)
        self._consumed_state = copy.deepcopy(self.loader.state_dict())

    def close(self) -> None:
        """Stop building ahead; the wrapped loader is left at the consumed position."""
        if self._thread is None:
            return
        self._join()
        self.loader.load_state_dict(copy.deepcopy(self._consumed_state))

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, args=(self._queue,), name="pretrainer-prefetch",
                                        daemon=True)
        self._thread.start()

    def _join(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()  # waits for a batch being built; the thread never blocks on a full queue
        self._thread = self._queue = None

    def _produce(self, out: queue.Queue) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self.loader)
                # Taken in this thread right after the batch, before the next one moves the loader.
                self._put(out, (batch, copy.deepcopy(self.loader.state_dict())))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            self._put(out, _Failed(e))

    def _put(self, out: queue.Queue, item) -> None:
        while not self._stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
