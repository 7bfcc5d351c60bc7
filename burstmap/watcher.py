"""Finds finished calls by listing status prefixes, and finishes their futures.

One thread per executor. Each poll lists only the status groups (1,000 calls each) that still
have calls pending: one LIST per group per poll, never one GET per pending call. A call's record
is fetched once, when it appears. Polls are quick just after a job starts or a call finishes, then
back off while nothing does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from .errors import PayloadRejectedError, StorageError
from .future import Deferred, ResponseFuture, rebuild_error
from .job import CHUNK, CallState, Layout, Record, RecordError, call_ids_of, decode_records, load_output
from .storage.base import Storage

__all__ = ["Watcher", "finish"]

_MIN_INTERVAL = 0.0005
_MAX_INTERVAL = 0.1
_BACKOFF = 1.25
_EAGER = 0.005  # poll at the shortest interval this long after a job starts or a call finishes


def finish(future: ResponseFuture, storage: Storage, key: bytes, record: Record) -> None:
    """Finish a future from its stored status record."""
    layout, call_id = future.layout, future.call_id
    identity = f"{layout.job_id}/out/{call_id}"
    if record.state not in (CallState.OK, CallState.ERROR):
        future._finish(record, error=rebuild_error(record, None, False))
        return
    if record.output_key and record.state is CallState.OK:
        future._finish(record, Deferred(lambda: load_output(storage, key, identity, record)))
        return
    try:
        value, loaded = load_output(storage, key, identity, record), True
    except PayloadRejectedError as e:
        future._finish(record, error=e)
        return
    except StorageError:
        raise
    except Exception as e:
        value, loaded = f"{type(e).__name__}: {e}", False
    if record.state is CallState.OK and loaded:
        future._finish(record, value)
    else:
        future._finish(record, error=rebuild_error(record, value, loaded))


class Watcher:
    """Watches jobs in one store and finishes their futures as status records appear."""

    def __init__(self, storage: Storage, key: bytes, outage_limit: float = 60.0) -> None:
        self.outage_limit = outage_limit
        self._storage = storage
        self._key = key
        self._jobs: dict[str, tuple[Layout, dict[int, ResponseFuture]]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def watch(self, layout: Layout, futures: Iterable[ResponseFuture]) -> None:
        """Start watching futures of one job."""
        with self._lock:
            pending = self._jobs.setdefault(layout.job_id, (layout, {}))[1]
            pending.update((f.call_id, f) for f in futures)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="burstmap-watcher", daemon=True)
                self._thread.start()
        self._wake.set()

    def _fail_all(self, error: Exception) -> None:
        """The store stayed unreachable: every pending call fails with one line that says so."""
        with self._lock:
            jobs, self._jobs = self._jobs, {}
        failure = StorageError(f"store {self._storage!r} unreachable for over {self.outage_limit:g}s: {error}")
        for _, pending in jobs.values():
            for future in pending.values():
                future.set_exception(failure)

    def pending(self) -> list[ResponseFuture]:
        """The futures still waiting for their call's record."""
        with self._lock:
            return [f for _, futures in self._jobs.values() for f in list(futures.values())]

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    def _loop(self) -> None:
        interval, outage, active = _MIN_INTERVAL, None, time.monotonic()
        while not self._stopped:
            try:
                found, listing = self._poll()
                outage = None
            except Exception as e:
                outage = outage or time.monotonic()
                if time.monotonic() - outage > self.outage_limit:
                    self._fail_all(e)
                found, listing = 0, 0.0
            if found:
                active, interval = time.monotonic(), max(_MIN_INTERVAL, 4 * listing)
            elif time.monotonic() - active > _EAGER:
                interval = min(_MAX_INTERVAL, interval * _BACKOFF)
            if self._wake.wait(interval):
                active, interval = time.monotonic(), _MIN_INTERVAL
            self._wake.clear()

    def _finish_key(self, key: str, pending: dict[int, ResponseFuture]) -> int:
        """Finish the pending futures whose records a status key holds; return how many."""
        futures = [pending.pop(i) for i in call_ids_of(key) or () if i in pending]
        if not futures:
            return 0
        try:
            data = self._storage.get(key)
        except Exception:
            pending.update((f.call_id, f) for f in futures)
            raise
        try:
            records = {r.call_id: r for r in decode_records(data)}
        except RecordError as e:
            for future in futures:
                future.set_exception(RecordError(f"{key}: {e}"))
            return len(futures)
        for future in futures:
            record = records.get(future.call_id)
            try:
                if record is None:
                    raise RecordError(f"{key} holds no record of call {future.call_id}")
                finish(future, self._storage, self._key, record)
            except Exception as e:
                future.set_exception(e)
        return len(futures)

    def _poll(self) -> tuple[int, float]:
        """Finish what has appeared; return how many, and the seconds spent listing."""
        with self._lock:
            jobs = list(self._jobs.values())
        found, listing = 0, 0.0
        for layout, pending in jobs:
            for chunk in sorted({call_id // CHUNK for call_id in list(pending)}):
                began = time.perf_counter()
                keys = list(self._storage.list(layout.status_chunk(chunk)))
                listing += time.perf_counter() - began
                for key in keys:
                    found += self._finish_key(key, pending)
            if not pending:
                with self._lock:
                    if not self._jobs.get(layout.job_id, (None, True))[1]:
                        del self._jobs[layout.job_id]
        return found, listing


