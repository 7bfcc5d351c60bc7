"""The executor: turns a function and its inputs into a job in storage, has a backend run it,
and hands back one future per call."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import itertools
import os
import secrets
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

from . import registry, stats
from .backends.base import Backend
from .call import Spread, WithEnv
from .config import Config, load_config
from .errors import ConfigError, ExecutorShutdownError, PayloadRejectedError
from .future import CallBook, Futures, ResponseFuture
from .interrupt import interrupted, notice_ctrl_c
from .job import Layout, Manifest, OutputRefs, Task, finished_calls, load_manifest, new_job_id
from .partition import is_data_source, pieces
from .retry import Retrying
from .scratch import Scratch
from .serialize import dumps_calls, dumps_function, excluding, seal
from .storage import Patient
from .storage.base import Storage
from .versions import mismatch
from .watcher import Watcher, reportable
from .worker import Handler, Trailing

__all__ = ["Executor", "default_executor"]


_FIRST_PART = 1024  # calls in the first part of a streamed map: workers start on it at once
_LAST_PART = 1 << 20  # the most calls in a part: a million-call map over a generator is a few jobs, not one
_PART_BYTES = 64 << 20  # the most bytes of inputs a part holds in memory before it is stored
_END = object()


def _build(kind: str, value: Any, base: type) -> Any:
    """An instance passed in is used as is; a name is looked up in the registry with its options."""
    return value if isinstance(value, base) else registry.build(kind, value.name, value.options)


class Executor(cf.Executor):
    """Runs calls of plain Python functions on a backend, with function, inputs and results in a store.

    Args:
        backend: a `Backend`, the registered name of one (options then come from the config), a
            mapping ``{"name": ..., option: value}``, or a URL (``tcp://scheduler:8786`` for Dask,
            ``redis://...`` or ``sqs://...`` for the queue of stand-alone workers).
        storage: a `Storage`, a name or mapping as for ``backend``, a URL (``s3://bucket``,
            ``redis://host:6379/0``, ``file:///dir``) or a path.
        settings: any other `Config` field (``prefix``, ``timeout``, ``worker_retries``, ``progress``,
            ``secret_key``); they override the config file and environment.
    """

    def __init__(self, backend: Backend | str | Mapping[str, Any] | None = None,
                 storage: Storage | str | os.PathLike | Mapping[str, Any] | None = None,
                 **settings: Any) -> None:
        self.config: Config = load_config(
            backend=None if isinstance(backend, Backend) else backend,
            storage=None if isinstance(storage, Storage) else storage,
            **settings,
        )
        self.storage: Storage = _build("storage", storage if isinstance(storage, Storage) else self.config.storage, Storage)
        self.backend: Backend = _build("backend", backend if isinstance(backend, Backend) else self.config.backend, Backend)
        self.executor_id = secrets.token_hex(4)
        self._key = self.config.secret()
        self._lock = threading.Lock()
        self._started = False
        self._shutdown = False
        self._watcher = Watcher(self.storage, self._key, self.config.outage_limit)
        _live.add(self)

    def _start(self) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit calls after the executor was shut down")
            if not self._started:
                self.storage.check()
                self.backend.start(self.storage, self._key, self._watcher)
                self._started = True
                notice_ctrl_c(_busy)

    def _submit_job(self, func: Callable | bytes, calls: Iterable[tuple[tuple, dict]], timeout: float | None,
                    worker_retries: int | None, kind: str = "map", job_id: str | None = None,
                    name: str | None = None, before: int = 0, max_bytes: int | None = None,
                    items: bool = False) -> Futures:
        """Store a job (its function, pickled already or not, and its calls) and have the backend run it.

        ``calls`` are ``(args, kwargs)`` pairs, or with ``items`` each call's one argument.

        ``before`` and ``max_bytes`` are for a part of a streamed map (`_stream`): how many calls the
        parts before it hold, and the size of inputs after which this part takes no more.
        """
        job_id = job_id or new_job_id()
        pickled = func if isinstance(func, bytes) else dumps_function(func, self.backend.imports_client_modules)
        func_blob = seal(self._key, f"{job_id}/func", pickled)
        data, blocks = dumps_calls(calls, self._key, job_id, before, max_bytes, items)
        n_calls = blocks[-1][0]
        if not n_calls:
            return Futures()
        limit = self.config.map_item_limit
        if limit is not None and before + n_calls > limit:
            at_least = "at least " if max_bytes is not None else ""
            raise ConfigError(f"a map of {at_least}{before + n_calls} calls is over map_item_limit ({limit}); "
                              "split it or raise the limit")
        self._start()
        manifest = Manifest(
            job_id=job_id, prefix=self.config.prefix, function=name or _qualname(func), blocks=tuple(blocks),
            submitted=time.time(), host=socket.gethostname(),
            timeout=timeout if timeout is not None else self.config.timeout,
            worker_retries=self.config.worker_retries if worker_retries is None else worker_retries, kind=kind,
        )
        layout, store = manifest.layout, Patient(self.storage, self.config.outage_limit)
        if store.exists(layout.manifest):
            raise ConfigError(f"job {job_id!r} already exists under prefix {self.config.prefix!r}: job ids are never reused")
        store.put(layout.func, func_blob)
        store.put(layout.data, data)
        store.put(layout.manifest, manifest.encode(self._key))  # last: a job is listed only once it can run
        book = self._book(layout, manifest.n_calls)
        self._watcher.watch(manifest, book)
        self._run(manifest, range(manifest.n_calls))
        return Futures.of(book)

    def _run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        """Have the backend run calls already watched; if it cannot, their futures fail with its error too."""
        try:
            self.backend.run(manifest, call_ids)
        except BaseException as e:
            self._watcher.fail(manifest.job_id, call_ids, e)
            raise

    def _book(self, layout: Layout, n_calls: int) -> CallBook:
        return CallBook(layout, n_calls, self.storage, self.config.progress)

    def call_async(self, func: Callable, data: Any, extra_args: Iterable[Any] = (), timeout: float | None = None,
                   worker_retries: int | None = None, retries: int = 0,
                   retry_on: tuple[type[BaseException], ...] = (Exception,), extra_env: Mapping[str, str] | None = None,
                   exclude_modules: Iterable[str] = ()) -> ResponseFuture:
        """Run ``func(data, *extra_args)`` as one call; return its future at once (arguments as for `map`)."""
        return self._one(func, (data, *extra_args), {}, timeout, worker_retries, retries, retry_on, extra_env,
                         exclude_modules)

    def _one(self, func: Callable, args: tuple, kwargs: dict, timeout: float | None = None,
             worker_retries: int | None = None, retries: int = 0,
             retry_on: tuple[type[BaseException], ...] = (Exception,), extra_env: Mapping[str, str] | None = None,
             exclude_modules: Iterable[str] = ()) -> ResponseFuture:
        """One call of ``func(*args, **kwargs)`` with `map`'s options."""
        with excluding(exclude_modules):
            return self._submit_job(_with_env(_retrying(func, retries, retry_on), extra_env), [(args, kwargs)],
                                    timeout, worker_retries, name=_qualname(func))[0]

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ResponseFuture:
        """Run ``fn(*args, **kwargs)`` as one call, like `concurrent.futures.Executor.submit`.

        Its keyword arguments are ``fn``'s; for `map`'s options, use ``ex.options(timeout=5).submit(fn, ...)``.
        """
        return self._one(fn, args, kwargs)

    def options(self, timeout: float | None = None, worker_retries: int | None = None, retries: int = 0,
                retry_on: tuple[type[BaseException], ...] = (Exception,), extra_env: Mapping[str, str] | None = None,
                exclude_modules: Iterable[str] = ()) -> Options:
        """This executor with `map`'s options set for ``submit``: ``ex.options(timeout=5, retries=2).submit(f, x)``."""
        return Options(functools.partial(self._one, timeout=timeout, worker_retries=worker_retries, retries=retries,
                                         retry_on=retry_on, extra_env=extra_env, exclude_modules=exclude_modules))

    def map(self, func: Callable, iterdata: Iterable[Any], extra_args: Iterable[Any] = (),  # type: ignore[override]
            timeout: float | None = None, worker_retries: int | None = None, retries: int = 0,
            retry_on: tuple[type[BaseException], ...] = (Exception,), chunk_size: int | str | None = None,
            newline_aligned: bool = True, extra_env: Mapping[str, str] | None = None,
            exclude_modules: Iterable[str] = ()) -> Futures:
        """Run ``func(item, *extra_args)`` for every item, one call each; return the futures at once.

        The futures read as a list; each is made when read (`Futures`), so a job of a million calls
        costs this process about 20 bytes a call until its results are read.

        Args:
            iterdata: the inputs, any iterable; one without a length (a generator) is stored and
                started in parts as it is read, a job each (`_stream`); or data to read (see docs/data.md):
                a storage URL, a local directory or a list of URLs, one call per object or chunk, each
                given a `DataPiece`.
            timeout: seconds after which a call is stopped and its future raises `CallTimeoutError`.
            worker_retries: how often a call whose worker died (killed, out of memory) is run again;
                after that its future raises `WorkerDiedError`.
            retries: how often a call that raises one of ``retry_on`` is tried again, with
                exponential backoff; exceptions are not retried by default.
            chunk_size: with data, split objects into byte ranges of this size (``"64MiB"``).
            newline_aligned: with data, move chunk boundaries to line ends so no text line is split.
            extra_env: environment variables set for the length of each call.
            exclude_modules: names of your own modules not to ship with the function (the workers
                have them installed).
        """
        if is_data_source(iterdata):
            iterdata = pieces(iterdata, chunk_size, newline_aligned, storage=self.storage)
        elif chunk_size is not None:
            raise ConfigError("chunk_size applies only to data: a storage URL, a directory or a list of URLs")
        extra = tuple(extra_args)
        name = _qualname(func)
        func = _retrying(func, retries, retry_on)
        if extra:
            func = Trailing(func, extra)
        with excluding(exclude_modules):
            if isinstance(iterdata, Sized):
                return self._submit_job(_with_env(func, extra_env), iterdata, timeout, worker_retries, name=name,
                                        items=True)
            pickled = dumps_function(_with_env(func, extra_env), self.backend.imports_client_modules)
            return self._stream(pickled, iter(iterdata), timeout, worker_retries, name)

    def _stream(self, pickled: bytes, items: Iterator[Any], timeout: float | None, worker_retries: int | None,
                name: str) -> Futures:
        """`map` over an input of unknown length: read it in parts, each a job of its own that starts as soon
        as its part is stored, so calls run while the rest is read and no part is held whole for long.

        Parts grow from `_FIRST_PART` calls to `_LAST_PART`, and end early at `_PART_BYTES` of inputs.
        If reading or storing a part fails, the calls of the parts before it are cancelled (those no
        worker has taken) and the error is raised here.
        """
        parts: list[Futures] = []
        size, total = _FIRST_PART, 0
        try:
            while (first := next(items, _END)) is not _END:
                part = self._submit_job(pickled, itertools.islice(itertools.chain([first], items), size), timeout,
                                        worker_retries, name=name, before=total, max_bytes=_PART_BYTES, items=True)
                parts.append(part)
                total += len(part)
                size = min(2 * size, _LAST_PART)
        except BaseException:
            for part in parts:
                part.cancel()
            raise
        return Futures.chain(parts)

    def starmap(self, func: Callable, iterdata: Iterable[Any], **options: Any) -> Futures:
        """Like `map`, but a tuple input is spread as positional arguments and a dict input as keywords."""
        return self.map(Spread(func), iterdata, **options)

    def imap(self, func: Callable, iterdata: Iterable[Any], extra_args: Iterable[Any] = (), *, ordered: bool = True,
             window: int = 10_000, **options: Any) -> Iterator[Any]:
        """Yield ``func(item, *extra_args)`` for every item, in input order (or as calls finish, unordered).

        The input is read lazily, ``window`` items at a time, each window one job, with the next
        window running while this one is read: neither the input nor the results are ever held
        whole, so an endless generator works. The first failed call raises its error here, and the
        calls not yet started are cancelled. ``options`` are those of `map`.
        """
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be a positive number of calls, not {window!r}")
        items, extra = iter(iterdata), tuple(extra_args)
        running: deque[Futures] = deque()

        def submit_next() -> None:
            chunk = list(itertools.islice(items, window))
            if chunk:
                running.append(self.map(func, chunk, extra, **options))

        try:
            submit_next()
            while running:
                submit_next()
                futures = running[0]
                if ordered:
                    for i in range(len(futures)):
                        yield futures._consume(i, None)
                else:
                    for future in cf.as_completed(futures):
                        yield future.result()
                running.popleft()
        finally:
            for futures in running:
                futures.cancel()

    def imap_unordered(self, func: Callable, iterdata: Iterable[Any], extra_args: Iterable[Any] = (), *,
                       window: int = 10_000, **options: Any) -> Iterator[Any]:
        """`imap`, yielding each window's results as its calls finish."""
        return self.imap(func, iterdata, extra_args, ordered=False, window=window, **options)

    def reduce(self, func: Callable, futures: Iterable[ResponseFuture], extra_args: Iterable[Any] = (),
               timeout: float | None = None) -> ResponseFuture:
        """Run ``func(results, *extra_args)`` as one call once every future is done.

        The results are read from storage by the worker, not sent from here. If a call failed,
        the reduce future raises its error.
        """
        futures = list(futures)
        job_id = new_job_id()
        layout = Layout(self.config.prefix, job_id)
        outcome = ResponseFuture(layout, 0, self.storage, self.config.progress)
        refs = OutputRefs(tuple((f.layout.prefix, f.job_id, f.call_id) for f in futures))
        extra = tuple(extra_args)
        remaining = [len(futures)]
        lock = threading.Lock()

        def submit_reduce() -> None:
            if any(f.cancelled() for f in futures):
                outcome.cancel()
                return
            failed = next((f for f in futures if f.exception() is not None), None)
            if failed is not None:
                outcome._finish(None, error=failed.exception())
                return
            try:
                (inner,) = self._submit_job(func, [((refs, *extra), {})], timeout, None, "reduce", job_id)
            except BaseException as e:  # runs in the callback of the last map future: nothing else would report it
                outcome._finish(None, error=reportable(e))
                return
            inner.add_done_callback(functools.partial(_copy_outcome, outcome))

        def one_done(_: cf.Future) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                submit_reduce()

        if not futures:
            submit_reduce()
        for f in futures:
            f.add_done_callback(one_done)
        return outcome

    def map_reduce(self, map_func: Callable, iterdata: Iterable[Any], reduce_func: Callable,
                   extra_args: Iterable[Any] = (), timeout: float | None = None, **map_options: Any) -> ResponseFuture:
        """Map ``map_func`` over ``iterdata``, then run ``reduce_func(results)`` as one more call.

        ``map_options`` are those of `map` (``worker_retries``, ``retries``, ``retry_on``, ``chunk_size``,
        ``newline_aligned``, ``extra_env``...); ``timeout`` applies to the reduce call too.
        """
        mapped = self.map(map_func, iterdata, extra_args, timeout, **map_options)
        return self.reduce(reduce_func, mapped, timeout=timeout)

    def scratch(self, name: str | None = None) -> Scratch:
        """A folder of named objects in this executor's store that calls can write and read (see `Scratch`).

        Pass it to calls as an argument; ``name`` reopens a folder a former run left, a new one by default.
        """
        store = Patient(self.storage, self.config.outage_limit)
        if name is None:
            return Scratch.fresh(self.config.prefix, store, self._key)
        return Scratch(name, self.config.prefix, store, self._key)

    def manifest(self, job_id: str) -> Manifest:
        """The stored, verified description of a job; `JobNotFoundError` if the store has none."""
        return load_manifest(self.storage, self._key, self.config.prefix, job_id)

    def attach(self, job_id: str, resume: bool = False) -> Futures:
        """Rebuild the futures of an existing job from storage alone (from any process).

        With ``resume``, calls that have no status yet (their client and its workers died) are run
        again on this executor's backend; calls are idempotent, so a late original does no harm.
        """
        manifest = self.manifest(job_id)
        layout = manifest.layout
        book = self._book(layout, manifest.n_calls)
        missing = []
        if resume:
            finished = finished_calls(self.storage, layout, range(manifest.n_calls))
            missing = [i for i in range(manifest.n_calls) if i not in finished]
            if missing:
                self._start()
        self._watcher.watch(manifest, book)
        if missing:
            self._run(manifest, missing)
        return Futures.of(book)

    def replay(self, job_id: str, call_id: int) -> Any:
        """Run one stored call again here, in this process, so a debugger works; nothing is written.

        Raises whatever the call raises.
        """
        manifest = self.manifest(job_id)
        refusal = mismatch(manifest.versions, who="this process")
        if refusal:
            raise PayloadRejectedError(f"cannot replay call {call_id} of job {job_id}: {refusal}")
        if not 0 <= call_id < manifest.n_calls:
            raise ValueError(f"job {job_id} has calls 0 to {manifest.n_calls - 1}, not {call_id}")
        start, end = manifest.data_range(call_id)
        task = Task(manifest.prefix, job_id, call_id, start, end)
        func, args, kwargs = Handler(self.storage, self._key, "replay").load(task)
        return func(*args, **kwargs)

    def stats(self, futures: Iterable[ResponseFuture]) -> dict[str, Any]:
        """Timings of the calls behind ``futures`` as plain data: per call and per job (see `burstmap.stats`)."""
        return stats.stats(futures, self._key, self.storage)

    def as_executor(self) -> cf.Executor:
        """A face with the exact `concurrent.futures.Executor` API (``map`` yields results)."""
        return _StandardExecutor(self)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls, cancel those no worker has taken (with ``cancel_futures``), wait for the
        others (with ``wait``), then stop the backend's workers and the watcher.

        As with `concurrent.futures`, leaving a ``with`` block waits for the calls, and so does the
        end of the program. No future is left pending: one whose call had not finished when the
        workers stopped fails with `ExecutorShutdownError`; its call stays in the store, and
        `attach(job_id, resume=True)` on another executor finishes it.
        """
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
            started = self._started
        if cancel_futures:
            self._watcher.cancel_pending()
        if wait:
            self._watcher.wait_ended()
        if started:
            self.backend.shutdown(wait)
        self._watcher.close(_shutdown_error)

    def __repr__(self) -> str:
        return f"Executor(backend={self.backend!r}, storage={self.storage!r}, id={self.executor_id!r})"


def _retrying(func: Callable, retries: int, retry_on: tuple[type[BaseException], ...]) -> Callable:
    """``func``, retried inside the worker on the exceptions ``retry_on`` up to ``retries`` times."""
    return Retrying(func, retries, tuple(retry_on)) if retries else func


def _shutdown_error(job_id: str) -> ExecutorShutdownError:
    return ExecutorShutdownError(f"the executor was shut down before this call of job {job_id} finished; "
                                 f"`ex.attach({job_id!r}, resume=True)` on a new executor finishes it")


def _copy_outcome(target: ResponseFuture, source: ResponseFuture) -> None:
    """Finish the future `reduce` returned as its inner call finished."""
    if source.cancelled():
        target.cancel()
        return
    value = None
    try:
        error = source.exception()
        if error is None:
            value = source.result()
    except BaseException as e:  # a large result is loaded here, and may fail to load: fail the future, never hang it
        error = reportable(e)
    target._finish(source.record, value, error)


def _with_env(func: Callable, extra_env: Mapping[str, str] | None) -> Callable:
    return WithEnv(func, extra_env) if extra_env else func


def _qualname(func: Callable) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"


class Options:
    """What `Executor.options` returns: ``submit`` with the options it was given."""

    def __init__(self, one: Callable[..., ResponseFuture]) -> None:
        self._one = one

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ResponseFuture:
        """Run ``fn(*args, **kwargs)`` as one call with these options."""
        return self._one(fn, args, kwargs)


class _Star:
    """Calls a function with one tuple of arguments spread out (picklable, unlike a lambda in a closure)."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, args: tuple) -> Any:
        return self.fn(*args)


class _StandardExecutor(cf.Executor):
    """`concurrent.futures.Executor` semantics over a burstmap executor: ``map`` returns results in order."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> cf.Future:
        return self._executor.submit(fn, *args, **kwargs)

    def map(self, fn: Callable, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """Submit every call at once; yield the results in order.

        ``chunksize`` is accepted and ignored: the backend batches calls itself.
        """
        end = None if timeout is None else time.monotonic() + timeout
        futures = self._executor.map(_Star(fn), zip(*iterables))

        def results() -> Iterator[Any]:
            """Like the standard executors: drop each future once yielded; cancel the rest if stopped early."""
            yielded = 0
            try:
                while yielded < len(futures):
                    yield futures._consume(yielded, None if end is None else max(0.0, end - time.monotonic()))
                    yielded += 1
            finally:
                futures[yielded:].cancel()

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait, cancel_futures=cancel_futures)


_default: Executor | None = None
_default_lock = threading.Lock()
_live: weakref.WeakSet[Executor] = weakref.WeakSet()


def _shut_down_live_executors() -> None:
    """At interpreter exit, like `concurrent.futures`: wait for every live executor's calls, then stop it.

    After Ctrl-C, do not wait: cancel what no worker took, stop, and say how to resume each job.
    """
    for executor in list(_live):
        if not interrupted():
            executor.shutdown(wait=True)
            continue
        jobs = executor._watcher.unfinished()
        executor.shutdown(wait=False, cancel_futures=True)
        for job_id, unfinished in jobs.items():
            print(f"burstmap: interrupted; job {job_id} has {unfinished} calls unfinished: "
                  f"finish it with burstmap.attach({job_id!r}, resume=True)", file=sys.stderr)


def _busy() -> bool:
    """Whether any live executor has calls in flight."""
    return any(executor._watcher.unfinished() for executor in list(_live))


threading._register_atexit(_shut_down_live_executors)  # type: ignore[attr-defined]  # as concurrent.futures.thread


def default_executor(**settings: Any) -> Executor:
    """The executor the configuration describes (local processes and a local store by default).

    Without arguments the same executor is returned on every call, so its warm workers are reused.
    """
    global _default
    if settings:
        return Executor(**settings)
    with _default_lock:
        if _default is None or _default._shutdown:
            _default = Executor()
        return _default
