"""The Dask backend: calls run in batches as tasks on any Dask cluster, each through the one handler.

Give it a scheduler ``address``, or a ``distributed.Client`` you made (LocalCluster,
dask-jobqueue, dask-kubernetes...), or neither for a LocalCluster of this machine's cores. Each Dask
task runs a batch of calls in order through `Handler`; outcomes land in the store, never in Dask.

Worker death: the scheduler runs a task again when its worker dies. The new delivery finds, through
a `Ledger` in the store, which call the dead worker was running, counts that call's attempts and
writes a ``died`` record once it is out of retries. A task the scheduler gives up on
(``KilledWorker``) is submitted again under a new key, and the ledger keeps counting.

Timeouts: a Python thread cannot be stopped, so a watchdog thread in the worker writes the call's
``timeout`` record and then ends the worker process; its nanny starts a fresh one and the scheduler
runs the rest of the batch elsewhere. Other batches running in threads of the same worker process
are re-run too. On a worker without a nanny (``--no-nanny``, ``LocalCluster(processes=False)``),
ending the process would take the worker (or your own process) down for good, so timeouts are not
enforced there and a warning is logged once.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import distributed

from ..errors import CallTimeoutError, ConfigError
from ..job import CallState, Manifest, call_name
from ..storage.base import Storage
from ..storage.local import LocalStorage
from ..worker import Handler, Task
from .base import Backend
from .ledger import Ledger

__all__ = ["DaskBackend"]

log = logging.getLogger(__name__)

_MAX_BATCH = 32
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class DaskBackend(Backend):
    """Runs calls as batches of Dask tasks on the cluster behind ``address`` or ``client``.

    Args:
        address: the scheduler, e.g. ``tcp://10.0.0.5:8786``.
        client: a ``distributed.Client`` of yours; it is left open on shutdown.
        batch_size: calls per Dask task; by default a few per worker thread, at most 32.
    """

    name = "dask"

    def __init__(self, address: str | None = None, client: Any = None, batch_size: int | None = None) -> None:
        if address is not None and client is not None:
            raise ValueError("give the Dask backend a scheduler address or a client, not both")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.address = address
        self.batch_size = batch_size
        self._client = client
        self._owns_client = client is None
        self._futures: dict[str, tuple[Any, Manifest, list[Task]]] = {}
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` calls go through (made on `start` unless one was given)."""
        return self._client

    def start(self, storage: Storage, key: bytes) -> None:
        super().start(storage, key)
        if self._client is None:
            self._client = distributed.Client(self.address) if self.address else distributed.Client()
        if isinstance(storage, LocalStorage):
            _check_local_store(self._client, storage)

    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        call_ids = list(call_ids)
        size = self.batch_size or _batch_size(len(call_ids), sum(self._client.nthreads().values()))
        for i in range(0, len(call_ids), size):
            tasks = []
            for call_id in call_ids[i:i + size]:
                start, end = manifest.data_range(call_id)
                tasks.append(Task(manifest.prefix, manifest.job_id, call_id, start, end))
            self._submit(manifest, tasks)

    def _submit(self, manifest: Manifest, tasks: list[Task]) -> None:
        key = f"burstmap-{manifest.job_id}-{call_name(tasks[0].call_id)}-{uuid.uuid4().hex[:8]}"
        future = self._client.submit(
            run_batch, self._token, self.storage, self._key, tasks, manifest.timeout, manifest.max_retries,
            key=key, pure=False,
        )
        with self._lock:
            self._futures[key] = (future, manifest, tasks)
        future.add_done_callback(self._on_done)

    def _on_done(self, future: Any) -> None:
        with self._lock:
            _, manifest, tasks = self._futures.pop(future.key, (None, None, None))
        if manifest is None or future.status != "error":
            return
        error = future.exception()
        if isinstance(error, distributed.scheduler.KilledWorker):
            self._submit(manifest, tasks)
            return
        log.error("burstmap: a Dask task of job %s failed outside the handler: %r", manifest.job_id, error)
        ledger = Ledger(self.storage, self._key, tasks, manifest.max_retries, "dask-client")
        handler = Handler(self.storage, self._key, "dask-client")
        for task in ledger.unfinished():
            handler.write_failure(task, CallState.ERROR, error, time.time())

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            futures, self._futures = [f for f, _, _ in self._futures.values()], {}
        if self._client is None:
            return
        if futures:
            self._client.cancel(futures)
        if self._owns_client:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        where = self.address or (repr(self._client) if self._client else "a LocalCluster")
        return f"DaskBackend({where})"


_handlers: dict[str, Handler] = {}
_watchdog: _Watchdog | None = None
_worker_lock = threading.Lock()
_warned = False


def run_batch(token: str, storage: Storage, key: bytes, tasks: list[Task], timeout: float | None,
              max_retries: int) -> int:
    """The Dask task: run the calls of one batch that are still to run; return how many ran."""
    with _worker_lock:
        handler = _handlers.get(token)
        if handler is None:
            handler = _handlers[token] = Handler(storage, key, f"dask-{_worker_name()}")
    ledger = Ledger(storage, key, tasks, max_retries, handler.worker)
    delivery = ledger.next_delivery()
    todo = ledger.begin(delivery)
    watchdog = _get_watchdog() if timeout else None
    for task in todo:
        if watchdog is None:
            handler.run_task(task)
            continue
        with watchdog.watching(time.monotonic() + timeout, _Stop(handler, ledger, delivery, task, timeout)):
            handler.run_task(task)
    return len(todo)


def _worker_name() -> str:
    try:
        return distributed.get_worker().address
    except ValueError:
        return f"{socket.gethostname()}:{os.getpid()}"


def _get_watchdog() -> _Watchdog | None:
    """This worker process's watchdog, or ``None`` (and a warning) when it has no nanny."""
    global _watchdog, _warned
    with _worker_lock:
        try:
            nanny = distributed.get_worker().nanny
        except ValueError:
            nanny = None
        if nanny is None:
            if not _warned:
                log.warning("burstmap: this Dask worker has no nanny, so call timeouts are not enforced on it")
                _warned = True
            return None
        if _watchdog is None:
            _watchdog = _Watchdog()
        return _watchdog


class _Stop:
    """What the watchdog does to a call past its timeout: record it, then end the worker process."""

    def __init__(self, handler: Handler, ledger: Ledger, delivery: int, task: Task, timeout: float) -> None:
        self.handler, self.ledger, self.delivery, self.task, self.timeout = handler, ledger, delivery, task, timeout
        self.start = time.time()

    def __call__(self) -> None:
        task = self.task
        error = CallTimeoutError(
            f"call {task.job_id}/{call_name(task.call_id)} ran past its timeout of {self.timeout:g}s "
            "and its Dask worker process was restarted to stop it"
        )
        try:
            self.handler.write_failure(task, CallState.TIMEOUT, error, self.start)
            self.ledger.end_by_timeout(self.delivery, task.call_id)
        finally:
            log.warning("burstmap: %s; ending this worker process", error)
            os._exit(70)


class _Watchdog:
    """One thread per worker process that fires a call's stop action when its deadline passes."""

    def __init__(self) -> None:
        self._watched: dict[int, tuple[float, _Stop]] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._loop, name="burstmap-watchdog", daemon=True).start()

    def watching(self, deadline: float, stop: _Stop) -> _Watch:
        return _Watch(self, deadline, stop)

    def _set(self, ident: int, entry: tuple[float, _Stop] | None) -> None:
        with self._cond:
            if entry is None:
                self._watched.pop(ident, None)
            else:
                self._watched[ident] = entry
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for deadline, stop in self._watched.values():
                    if deadline <= now:
                        stop()
                nearest = min((d for d, _ in self._watched.values()), default=None)
                self._cond.wait(None if nearest is None else nearest - now)


class _Watch:
    """Context manager: the current thread's call is watched while inside."""

    def __init__(self, watchdog: _Watchdog, deadline: float, stop: _Stop) -> None:
        self.watchdog, self.entry = watchdog, (deadline, stop)

    def __enter__(self) -> None:
        self.watchdog._set(threading.get_ident(), self.entry)

    def __exit__(self, *exc: object) -> None:
        self.watchdog._set(threading.get_ident(), None)


def _batch_size(n_calls: int, n_threads: int) -> int:
    """A few tasks per worker thread, so that a slow batch does not hold the job back."""
    return max(1, min(_MAX_BATCH, math.ceil(n_calls / (4 * max(1, n_threads)))))


def _check_local_store(client: Any, storage: LocalStorage) -> None:
    """A directory store works only when every worker runs on this machine."""
    here = _LOCAL_HOSTS | {socket.gethostname()}
    try:
        here.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    hosts = {distributed.comm.get_address_host(a) for a in client.scheduler_info()["workers"]}
    remote = sorted(hosts - here)
    if remote:
        raise ConfigError(
            f"the local store {storage.path} cannot be reached by Dask workers on {', '.join(remote)}: "
            "use an s3 or redis store for a cluster of several machines"
        )
