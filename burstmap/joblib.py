"""A joblib parallel backend: ``import burstmap.joblib`` registers ``"burstmap"``.

Under ``joblib.parallel_config(backend="burstmap")`` every batch of tasks joblib dispatches
(scikit-learn's fits in ``GridSearchCV(n_jobs=-1)``, for instance) runs as one burstmap call on
the configured backend. joblib's auto-batching sizes the batches by their measured time; large
arrays the tasks share (a training set) are stored once, by content, not once per batch; when a
task fails, the batches no worker has taken are cancelled.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import os
import pickle
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle
from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .call import current_place
from .errors import PayloadRejectedError
from .executor import Executor, default_executor
from .serialize import _user_modules_by_value

__all__ = ["BurstmapBackend"]

_SHARED_MIN_BYTES = 256 * 1024
_CACHE_SIZE = 8
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()


class BurstmapBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib's batches of tasks as burstmap calls.

    Args:
        executor: the burstmap `Executor` to run on; by default `burstmap.default_executor()`.
        shared_min_bytes: arrays at least this large are stored once by content and read by
            the workers from the store (cached per worker process), not pickled into every batch.
    """

    supports_retrieve_callback = True
    default_n_jobs = -1

    def __init__(self, executor: Executor | None = None, shared_min_bytes: int = _SHARED_MIN_BYTES,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._executor = executor
        self._shared_min_bytes = shared_min_bytes
        self._stored: dict[int, tuple[Any, str, str]] = {}
        self._futures: set[cf.Future] = set()
        self._lock = threading.Lock()

    @property
    def executor(self) -> Executor:
        """The executor the tasks run on (the default one, made on first use, if none was given)."""
        if self._executor is None:
            self._executor = default_executor()
        return self._executor

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``-1`` means every worker of a local backend (else every core here); ``-2`` all but one, as in joblib."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            workers = getattr(self.executor.backend, "workers", None) or os.cpu_count() or 1
            return max(workers + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **kwargs: Any) -> int:
        """Take the executor's workers for one `joblib.Parallel` call; return how many run at once."""
        if require == "sharedmem":
            raise ValueError("the burstmap joblib backend runs tasks in other processes: it has no shared memory")
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable, callback: Callable | None = None) -> cf.Future:
        """Run one batch of tasks as one call; ``callback`` runs when it is done."""
        future = self.executor.submit(_run, self._dumps(func))
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: cf.Future) -> Any:
        """The batch's results (a list), or its error raised."""
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: cancel every batch no worker has taken yet."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def terminate(self) -> None:
        """The `joblib.Parallel` call is over: drop what it stored references to."""
        self._stored.clear()
        self.reset_batch_stats()

    def _dumps(self, func: Callable) -> bytes:
        """Pickle a batch with its large arrays replaced by references to one stored copy each."""
        buffer = io.BytesIO()
        with _user_modules_by_value():
            _SharingPickler(buffer, self._share).dump(func)
        return buffer.getvalue()

    def _share(self, obj: Any) -> tuple[str, str] | None:
        """A reference to ``obj`` in the store if it is a large array (stored on first sight), else None."""
        numpy = sys.modules.get("numpy")
        if numpy is None or type(obj) is not numpy.ndarray or obj.nbytes < self._shared_min_bytes:
            return None
        known = self._stored.get(id(obj))
        if known is None:
            blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            digest = hashlib.sha256(blob).hexdigest()
            key = f"{self.executor.config.prefix}/shared/{digest}"
            if not self.executor.storage.exists(key):
                self.executor.storage.put(key, blob)
            known = self._stored[id(obj)] = (obj, key, digest)  # holding obj keeps its id from being reused
        return known[1], known[2]

    def _forget(self, future: cf.Future) -> None:
        with self._lock:
            self._futures.discard(future)


class _SharingPickler(cloudpickle.Pickler):
    """cloudpickle, with large arrays pickled as references to their stored copy."""

    def __init__(self, file: io.BytesIO, share: Callable[[Any], tuple | None]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._share_obj = share

    def reducer_override(self, obj: Any) -> Any:
        ref = self._share_obj(obj)
        if ref is not None:
            return _load_shared, ref
        return super().reducer_override(obj)


def _load_shared(key: str, digest: str) -> Any:
    """A stored array, read from the call's store once per worker process; its bytes must hash to the
    digest the signed call carries."""
    with _cache_lock:
        if digest in _cache:
            _cache.move_to_end(digest)
            return _cache[digest]
    place = current_place()
    if place is None:
        raise RuntimeError(f"stored array {key} can be read only inside a burstmap call")
    blob = place[0].get(key)
    if hashlib.sha256(blob).hexdigest() != digest:
        raise PayloadRejectedError(f"stored array {key} does not match the digest its call was signed with")
    value = pickle.loads(blob)
    with _cache_lock:
        _cache[digest] = value
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return value


def _run(payload: bytes) -> Any:
    """In the worker: unpickle a batch of joblib tasks (it came in the call's signed input) and run it."""
    return pickle.loads(payload)()


register_parallel_backend("burstmap", BurstmapBackend)
