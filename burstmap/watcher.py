"""Finds finished calls by listing status prefixes, and finishes their futures.

One thread per executor. Each poll lists only the status groups (1,000 calls each) that still
have calls pending, in order, up to the first few that hold no record yet (all of them once a
second): one LIST per group per poll, never one GET per pending call. A call's record
is fetched once, when it appears. Polls are quick just after a job starts or a call finishes, then
back off while nothing does.

The watcher is also the executor's `CallBoard`: backends ask it which calls are still wanted
right before handing them to a worker, and tell it about calls whose outcome cannot reach the store.
"""

from __future__ import annotations

import logging
import pickle
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import BurstmapError, PayloadRejectedError, SerializationError, StorageError
from .future import CallBook, Deferred, ResponseFuture, rebuild_error
from .job import CHUNK, CallState, GroupView, Manifest, Record, RecordError, call_ids_of, decode_group, load_output
from .lease import Leases
from .stats import JobSummary
from .storage.base import Storage

__all__ = ["Watcher", "outcome", "reportable"]

log = logging.getLogger(__name__)

_MIN_INTERVAL = 0.0005
_MAX_INTERVAL = 0.1
_BACKOFF = 1.25
_EAGER = 0.005  # poll at the shortest interval this long after a job starts or a call finishes
_FRONTIER = 4  # status groups in a row with no record, past which a poll does not list (see `_poll`)
_SWEEP = 1.0  # seconds between polls that list every status group with calls pending
_OUTAGES = (StorageError, OSError)  # what a store raises while it is unreachable: waited out

class _Job:
    """A watched job: which of its calls still wait for their record, one byte each, and how many wait in each
    status group, so that a poll never walks them all; the books of its futures (one per time the job was
    attached here). Its outcomes are counted as found, for its summary."""

    def __init__(self, manifest: Manifest) -> None:
        self.layout = manifest.layout
        self.books: list[CallBook] = []
        self.waiting = bytearray(manifest.n_calls)
        self.left = 0
        self.chunks: Counter[int] = Counter()
        self.summary = JobSummary.of(manifest, ())

    def add(self, book: CallBook) -> None:
        """Wait for the calls of a book that have not ended."""
        self.books.append(book)
        n = len(self.waiting)
        if not self.left and book.open_count(range(n)) == n:
            self.waiting[:] = b"\x01" * n
            self.left = n
            self.chunks = Counter({c: min(CHUNK, n - c * CHUNK) for c in range(-(-n // CHUNK))})
            return
        self.rewait(book.open_calls())

    def rewait(self, call_ids: Iterable[int]) -> None:
        """Wait again for calls (their records could not be read)."""
        waiting = self.waiting
        for i in call_ids:
            if not waiting[i]:
                waiting[i] = 1
                self.left += 1
                self.chunks[i // CHUNK] += 1

    def waits(self, call_id: int) -> bool:
        return 0 <= call_id < len(self.waiting) and self.waiting[call_id] == 1

    def pop(self, call_id: int) -> bool:
        """Stop waiting for a call; return whether it was waited for."""
        if not self.waits(call_id):
            return False
        self.waiting[call_id] = 0
        self._done_in(call_id // CHUNK, 1)
        return True

    def pop_all(self, call_ids: range) -> Sequence[int]:
        """Stop waiting for the calls of one status key (a run in one status group); return those waited for."""
        start, stop = max(0, call_ids.start), min(len(self.waiting), call_ids.stop)
        n = stop - start
        if (n <= 0 or n != len(call_ids) or self.waiting.count(1, start, stop) != n
                or start // CHUNK != (stop - 1) // CHUNK):
            return [i for i in call_ids if self.pop(i)]
        self.waiting[start:stop] = bytes(n)
        self._done_in(start // CHUNK, n)
        return call_ids

    def _done_in(self, chunk: int, n: int) -> None:
        """Count ``n`` calls of a status group as no longer waited for."""
        self.left -= n
        self.chunks[chunk] -= n
        if not self.chunks[chunk]:
            del self.chunks[chunk]

    def waited(self) -> list[int]:
        """Every call still waited for."""
        return [m.start() for m in _WAITING.finditer(self.waiting)]

    def take(self, call_ids: Sequence[int]) -> Sequence[int]:
        """`CallBook.take` in every book: the calls some book still wants."""
        if len(self.books) == 1:
            return self.books[0].take(call_ids)
        wanted = set().union(*(book.take(call_ids) for book in self.books))
        return [i for i in call_ids if i in wanted]

    def settle(self, outcomes: list[tuple[int, Any, Any, BaseException | None]]) -> None:
        for book in self.books:
            book.settle(outcomes)

    def settle_run(self, first: int, values: list[Any], record: Any) -> None:
        """Finish the calls from ``first`` on, all OK with plain values: in one step where a book allows it."""
        for book in self.books:
            if not book.settle_run(first, values, record):
                book.settle([(first + k, record, value, None) for k, value in enumerate(values)])

    def prune(self) -> int:
        """Stop waiting for calls cancelled in every book: no record will come for them. Their waiters
        (`concurrent.futures.wait`) hear of it now, as a standard executor's would when it drops them.
        Return how many calls."""
        cancelled = set.intersection(*(book.cancelled_calls() for book in self.books))
        cancelled = [i for i in sorted(cancelled) if self.pop(i)]
        self.take(cancelled)
        return len(cancelled)


_WAITING = re.compile(rb"\x01")


def outcome(storage: Storage, key: bytes, job_id: str, record: Record) -> tuple[Any, BaseException | None]:
    """The value or the error a call's future ends with, from its verified status record."""
    identity = f"{job_id}/out/{record.call_id}"
    if record.state not in (CallState.OK, CallState.ERROR):
        return None, rebuild_error(record, None, False)
    if record.output_key and record.state is CallState.OK:
        return Deferred(lambda: _load_large(storage, key, identity, record)), None
    try:
        value, loaded = load_output(storage, key, identity, record), True
    except PayloadRejectedError as e:
        return None, e
    except _OUTAGES:
        raise
    except BaseException as e:  # unpickling runs the payload's code: it may raise anything, SystemExit too
        value, loaded = f"{type(e).__name__}: {e}", False
    if record.state is CallState.OK and loaded:
        return value, None
    return None, rebuild_error(record, value, loaded)


def _group_outcome(storage: Storage, key: bytes, job_id: str, group: GroupView, i: int,
                   plain: bool) -> tuple[Any, BaseException | None]:
    """`outcome` of the i-th record of a group; a ``plain`` one (a result inline) is unpickled without
    building its record, or taken as it is from a group that keeps its results as values."""
    if plain and group.values is not None:
        return group.values[i], None
    output = group.output(i) if plain else b""
    if output:
        try:
            return pickle.loads(output), None
        except _OUTAGES:
            raise
        except BaseException:
            pass  # the general path says what went wrong
    return outcome(storage, key, job_id, group.record(i))


def _load_large(storage: Storage, key: bytes, identity: str, record: Record) -> object:
    """Load a result kept in its own object; a ``SystemExit`` or the like raised while unpickling it is reported."""
    try:
        return load_output(storage, key, identity, record)
    except (Exception, KeyboardInterrupt):
        raise
    except BaseException as e:
        raise SerializationError(f"the result of {identity} could not be unpickled here: "
                                 f"{type(e).__name__}: {e}") from e


def reportable(error: BaseException) -> Exception:
    """An unexpected error as a future may raise it: a ``SystemExit`` or the like is wrapped, not re-raised."""
    if isinstance(error, Exception):
        return error
    wrapped = BurstmapError(f"watching the calls failed: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


class Watcher:
    """Watches jobs in one store and finishes their futures as status records appear."""

    def __init__(self, storage: Storage, key: bytes, outage_limit: float = 60.0) -> None:
        self.outage_limit = outage_limit
        self._storage = storage
        self._key = key
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._leases = Leases(storage)

    def watch(self, manifest: Manifest, book: CallBook) -> None:
        """Start watching the calls of one job (a call may be in several books: the job was attached again)."""
        layout = manifest.layout
        with self._lock:
            if self._stopped:
                raise RuntimeError("cannot watch calls after the executor was shut down")
            job = self._jobs.get(layout.job_id) or self._jobs.setdefault(layout.job_id, _Job(manifest))
            job.add(book)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="burstmap-watcher", daemon=True)
                self._thread.start()
        self._wake.set()

    def take(self, job_id: str, call_ids: Sequence[int]) -> Sequence[int]:
        """The `CallBoard` side: mark calls as handed to a worker; return those some future still wants."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job.take(call_ids) if job else []

    def fail(self, job_id: str, call_ids: Sequence[int], error: BaseException) -> None:
        """The `CallBoard` side: finish calls with ``error`` because their outcome cannot reach the store."""
        with self._lock:
            job = self._jobs.get(job_id)
            failed = [i for i in call_ids if job.pop(i)] if job else []
        if failed:
            job.settle([(i, None, None, error) for i in failed])

    def _books(self) -> list[tuple[str, CallBook]]:
        with self._lock:
            return [(job_id, book) for job_id, job in self._jobs.items() for book in job.books]

    def unfinished(self) -> Counter[str]:
        """How many calls of each job watched are pending or running."""
        counts: Counter[str] = Counter()
        for job_id, book in self._books():
            counts[job_id] += book.open_count(range(len(book)))
        return +counts

    def cancel_pending(self) -> None:
        """Cancel every call watched that no worker has taken yet."""
        for _, book in self._books():
            book.cancel(range(len(book)))

    def wait_ended(self) -> None:
        """Wait until no call watched is pending or running."""
        for _, book in self._books():
            book.wait_ended(range(len(book)))

    def close(self, error: Callable[[str], BaseException]) -> None:
        """Stop watching: finish what the store already holds, then fail every other future with ``error(job_id)``."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        try:
            self._poll()
            self._leases.end()  # the jobs with calls unfinished are abandoned now
        except Exception as e:
            log.warning("burstmap: could not read the last outcomes from %r while shutting down: %s",
                        self._storage, e)
        self._fail_all(error)

    def _fail_all(self, error: Callable[[str], BaseException]) -> None:
        """Finish every future still watched with a fresh ``error(job_id)`` each, and forget them."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
        for job_id, job in jobs.items():
            job.settle([(i, None, None, error(job_id)) for i in job.waited()])

    def _loop(self) -> None:
        """Poll until stopped. Nothing ends it: an unexpected error is logged and fails the futures watched."""
        interval, outage, active, cancellations = _MIN_INTERVAL, None, time.monotonic(), -1
        swept = 0.0
        while not self._stopped:
            try:
                seen, cancellations = cancellations, ResponseFuture.cancellations
                sweep = time.monotonic() - swept >= _SWEEP
                found, listing = self._poll(prune=seen != cancellations, sweep=sweep)
                swept = time.monotonic() if sweep else swept
                outage = None
            except _OUTAGES as e:
                outage = outage or time.monotonic()
                if time.monotonic() - outage > self.outage_limit:
                    unreachable = self._unreachable(e)
                    self._fail_all(lambda _: unreachable)
                found, listing = 0, 0.0
            except BaseException as e:
                log.exception("burstmap: watching %r failed; the calls watched fail with the error", self._storage)
                failure = reportable(e)
                self._fail_all(lambda _: failure)
                found, listing = 0, 0.0
            if found:
                active, interval = time.monotonic(), max(_MIN_INTERVAL, 4 * listing)
            elif time.monotonic() - active > _EAGER:
                interval = min(_MAX_INTERVAL, interval * _BACKOFF)
            if self._wake.wait(interval):
                active, interval = time.monotonic(), _MIN_INTERVAL
            self._wake.clear()

    def _unreachable(self, error: BaseException) -> StorageError:
        """The store stayed unreachable: every pending call fails with one line that says so."""
        return StorageError(f"store {self._storage!r} unreachable for over {self.outage_limit:g}s: {error}")

    def _finish_key(self, job: _Job, key: str) -> int:
        """Finish the waiting futures whose records a status key holds; return how many calls."""
        with self._lock:
            taken = job.pop_all(call_ids_of(key) or range(0))
        if not taken:
            return 0
        try:
            self._finish_calls(job, key, taken)
        except BaseException:  # waited for again: retried after an outage, failed with any other error
            with self._lock:
                job.rewait(taken)
            raise
        return len(taken)

    def _finish_calls(self, job: _Job, key: str, taken: list[int]) -> None:
        """Finish the calls a status key holds; one that cannot be finished fails."""
        job_id = job.layout.job_id
        data = self._storage.get(key)
        try:
            group = decode_group(data, self._key, job_id)
        except (RecordError, PayloadRejectedError) as e:
            job.settle([(i, None, None, type(e)(f"{key}: {e}")) for i in taken])
            return
        view = group.view
        if view.values is not None and taken == view.call_ids and view.states.count(CallState.OK) == len(taken):
            with self._lock:
                job.summary.count(view, range(len(taken)))
            job.settle_run(taken[0], view.values, group)
            return
        index = {call_id: i for i, call_id in enumerate(view.call_ids)}
        with self._lock:
            job.summary.count(view, [index[c] for c in taken if c in index])
        plain = [state is CallState.OK and not large for state, large in zip(view.states, view.column("output_key"))]
        outcomes = []
        for call_id in taken:
            i = index.get(call_id)
            try:
                if i is None:
                    raise RecordError(f"{key} holds no record of call {call_id}")
                value, error = _group_outcome(self._storage, self._key, job_id, view, i, plain[i])
            except _OUTAGES:
                raise
            except BaseException as e:
                value, error = None, e
            outcomes.append((call_id, None if i is None else group, value, error))
        job.settle(outcomes)

    def _poll(self, prune: bool = True, sweep: bool = True) -> tuple[int, float]:
        """Finish what has appeared; return how many, and the seconds spent listing.

        With ``prune``, calls whose futures were all cancelled stop being waited for first: that walks
        every waiting call, so the loop asks for it only when some future was cancelled since.

        Without ``sweep``, a job's status groups are listed in order only until `_FRONTIER` of them in a
        row hold no record at all: calls start in order, so the groups past those have not started
        either, and a job of a million calls costs a few LISTs per poll, not a thousand. The loop
        sweeps every group every `_SWEEP` seconds, for calls that finished out of order.
        """
        with self._lock:
            jobs = list(self._jobs.values())
        self._leases.renew(job.layout for job in jobs)
        found, listing = 0, 0.0
        for job in jobs:
            with self._lock:
                if prune and job.prune():
                    self._leases.gave_up(job.layout.job_id)
                chunks = sorted(job.chunks)
            empty = 0
            for chunk in chunks:
                began = time.perf_counter()
                keys = list(self._storage.list(job.layout.status_chunk(chunk)))
                listing += time.perf_counter() - began
                for key in keys:
                    found += self._finish_key(job, key)
                empty = 0 if keys else empty + 1
                if empty >= _FRONTIER and not sweep:
                    break
            with self._lock:
                ended = not job.left and self._jobs.get(job.layout.job_id) is job
                if ended:
                    del self._jobs[job.layout.job_id]
            if ended:
                self._leases.done(job.layout.job_id)
                job.summary.store(self._storage, self._key)  # so that listing jobs never reads this job's records
        return found, listing

