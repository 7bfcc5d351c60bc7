"""`multiprocessing.Pool` over a burstmap executor: ``from burstmap.multiprocessing import Pool``.

Code written for the standard pool runs its calls as burstmap calls on whatever backend the
executor uses. Each ``map`` is one burstmap job (one upload of all inputs); ``chunksize`` is
accepted and left to the backend, which batches quick calls itself.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .config import load_config
from .executor import Executor, _Star
from .watcher import reportable

__all__ = ["Pool", "AsyncResult", "MapResult", "TimeoutError"]

TimeoutError = multiprocessing.TimeoutError

_initialized: set[str] = set()


class _Initialized:
    """Runs the pool's initializer once per worker process before the first call of the pool there."""

    def __init__(self, func: Callable, initializer: Callable, initargs: tuple, token: str) -> None:
        self.func, self.initializer, self.initargs, self.token = func, initializer, initargs, token

    def __call__(self, *args: Any) -> Any:
        if self.token not in _initialized:
            self.initializer(*self.initargs)
            _initialized.add(self.token)
        return self.func(*args)


class _Apply:
    """Calls a function with fixed keyword arguments (picklable, unlike a lambda)."""

    def __init__(self, func: Callable, kwds: dict) -> None:
        self.func, self.kwds = func, kwds

    def __call__(self, *args: Any) -> Any:
        return self.func(*args, **self.kwds)


def gather(futures: list[cf.Future]) -> cf.Future:
    """One future of the list of results; it fails as soon as one call fails, with that call's error."""
    outcome: cf.Future = cf.Future()
    remaining = [len(futures)]
    lock = threading.Lock()

    def one_done(future: cf.Future) -> None:
        error = future.exception() if not future.cancelled() else cf.CancelledError()
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
            if outcome.done():
                return
            if error is not None:
                outcome.set_exception(error)
            elif last:
                try:
                    outcome.set_result([f.result() for f in futures])
                except BaseException as e:  # a large result is loaded here, and may fail to load
                    outcome.set_exception(reportable(e))

    if not futures:
        outcome.set_result([])
    for future in futures:
        future.add_done_callback(one_done)
    return outcome


class AsyncResult:
    """The result of ``apply_async``: ``get``, ``wait``, ``ready`` and ``successful`` as in `multiprocessing`."""

    def __init__(self, future: cf.Future, callback: Callable | None, error_callback: Callable | None) -> None:
        self._future = future
        if callback or error_callback:
            future.add_done_callback(lambda f: _call_back(f, callback, error_callback))

    def ready(self) -> bool:
        """Whether the call has finished (or, for a map, finished or one of its calls failed)."""
        return self._future.done()

    def successful(self) -> bool:
        """Whether it finished without an error; `ValueError` if it has not finished yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until it is ready, or ``timeout`` seconds."""
        cf.wait([self._future], timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the call's error; `multiprocessing.TimeoutError` if not ready in time."""
        try:
            return self._future.result(timeout)
        except cf.TimeoutError:
            if self._future.done():
                raise
            raise TimeoutError from None


MapResult = AsyncResult


def _call_back(future: cf.Future, callback: Callable | None, error_callback: Callable | None) -> None:
    if future.cancelled():
        return
    error = future.exception()
    if error is None and callback:
        callback(future.result())
    elif error is not None and error_callback:
        error_callback(error)


class _Results:
    """The iterator ``imap`` and ``imap_unordered`` return; ``next(timeout)`` as in `multiprocessing`."""

    def __init__(self, futures: Iterable[cf.Future]) -> None:
        self._futures = iter(futures)

    def __iter__(self) -> _Results:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result (a failed call raises its error here; iteration may go on after it)."""
        future = next(self._futures)
        try:
            return future.result(timeout)
        except cf.TimeoutError:
            if future.done():
                raise
            self._futures = _chain(future, self._futures)
            raise TimeoutError from None


def _chain(first: cf.Future, rest: Iterator[cf.Future]) -> Iterator[cf.Future]:
    yield first
    yield from rest


class Pool:
    """The `multiprocessing.Pool` API, each task a burstmap call.

    Args:
        processes: with the configured backend ``local`` (the default), its number of worker
            processes; other backends size themselves and ignore it.
        initializer: run as ``initializer(*initargs)`` once in each worker process, before its
            first call of this pool.
        maxtasksperchild: accepted for compatibility; burstmap's warm workers are not recycled.
        executor: a burstmap `Executor` to run on (it is left running on ``close``/``terminate``);
            by default the pool makes its own from the configuration and stops it when done.
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None, initargs: Iterable = (),
                 maxtasksperchild: int | None = None, *, executor: Executor | None = None) -> None:
        if processes is not None and (not isinstance(processes, int) or processes < 1):
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._owned = executor is None
        self._executor = executor if executor is not None else _own_executor(processes)
        self._initializer = (initializer, tuple(initargs), os.urandom(8).hex()) if initializer else None
        self._state = "RUN"
        self._futures: set[cf.Future] = set()
        self._lock = threading.Lock()

    def _wrap(self, func: Callable) -> Callable:
        return _Initialized(func, *self._initializer) if self._initializer else func

    def _track(self, futures: list[cf.Future]) -> list[cf.Future]:
        with self._lock:
            self._futures.update(futures)
        for future in futures:
            future.add_done_callback(self._untrack)
        return futures

    def _untrack(self, future: cf.Future) -> None:
        with self._lock:
            self._futures.discard(future)

    def _check_running(self) -> None:
        if self._state != "RUN":
            raise ValueError("Pool not running")

    def _map(self, func: Callable, iterable: Iterable) -> list[cf.Future]:
        self._check_running()
        return self._track(self._executor.map(self._wrap(func), iterable))

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """Run ``func(*args, **kwds)`` as one call."""
        self._check_running()
        (future,) = self._track([self._executor.submit(self._wrap(_Apply(func, dict(kwds or {}))), *args)])
        return AsyncResult(future, callback, error_callback)

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        """Run ``func(*args, **kwds)`` as one call and return its result."""
        return self.apply_async(func, args, kwds).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """Run ``func(item)`` for every item; the result is their list, in order."""
        return AsyncResult(gather(self._map(func, iterable)), callback, error_callback)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """Run ``func(item)`` for every item and return the results in order; re-raise a call's error."""
        return self.map_async(func, iterable).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """Run ``func(*args)`` for every tuple of arguments."""
        return AsyncResult(gather(self._map(_Star(func), map(tuple, iterable))), callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable], chunksize: int | None = None) -> list:
        """Run ``func(*args)`` for every tuple of arguments and return the results in order."""
        return self.starmap_async(func, iterable).get()

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> _Results:
        """Results in input order, each as soon as it and those before it are done."""
        return _Results(self._map(func, iterable))

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> _Results:
        """Results in the order the calls finish."""
        return _Results(cf.as_completed(self._map(func, iterable)))

    def close(self) -> None:
        """Take no more tasks; those submitted run to the end."""
        if self._state == "RUN":
            self._state = "CLOSE"

    def terminate(self) -> None:
        """Take no more tasks and cancel those no worker has taken; an owned executor stops at once."""
        self._state = "TERMINATE"
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        if self._owned:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def join(self) -> None:
        """Wait for every task, after `close` or `terminate`."""
        if self._state == "RUN":
            raise ValueError("Pool is still running")
        with self._lock:
            futures = list(self._futures)
        cf.wait(futures)
        if self._owned:
            self._executor.shutdown(wait=True)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<burstmap.multiprocessing.Pool state={self._state} executor={self._executor.backend!r}>"


def _own_executor(processes: int | None) -> Executor:
    """An executor from the configuration; ``processes`` sizes the local backend."""
    backend = load_config().backend
    if processes is not None and backend.name == "local":
        return Executor(backend={**backend.options, "name": "local", "workers": processes})
    return Executor()
