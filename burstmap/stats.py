"""Statistics of jobs, computed from their status records alone, as plain data (dicts and lists).

Per call: the time it waited in the queue (``start - submitted``), its setup (reading the function
and input), its compute (the user's function), its overhead (``end - start - setup - compute``:
pickling and writing the result), its duration (``end - start``), peak RSS, host, worker, attempt
and state. Calls without a status record are ``pending`` (queued or running: the store cannot tell
which); calls whose record cannot be decoded are ``corrupt``.

Per job: counts by state, wall time (submit to last end), throughput (finished calls per second
of wall time), the overhead fraction and the stragglers (see `summarize`).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import BurstmapError, JobNotFoundError, KeyNotFoundError, PayloadRejectedError
from .job import CallState, GroupView, Layout, Manifest, Record, RecordError, call_ids_of, decode_records, load_manifest
from .serialize import seal, unseal
from .storage.base import Storage

__all__ = [
    "CALL_FIELDS", "FAILED_STATES", "PRICE_PER_GB_SECOND", "gb_seconds", "JobRecords", "JobSummary", "call_rows",
    "job_stats", "list_jobs", "stats", "summarize",
]

log = logging.getLogger(__name__)

#: The columns of one call's row, in CSV order.
CALL_FIELDS = ("job_id", "call_id", "state", "attempt", "host", "worker", "pid", "start", "end", "queue_wait",
               "setup", "compute", "overhead", "duration", "peak_rss", "gb_seconds", "error")
#: AWS Lambda's x86_64 price per GB-second in us-east-1 (arm64 is about 20% less).
PRICE_PER_GB_SECOND = 0.0000166667
#: States of a call that finished without a result.
FAILED_STATES = frozenset(s.value for s in CallState if s is not CallState.OK)
#: A call is a straggler when its duration exceeds this many times the median duration...
STRAGGLER_FACTOR = 2.0
#: ...and the median by this many seconds (so that scheduler noise on quick calls is not one).
STRAGGLER_MARGIN = 0.05
_FETCHERS = 16


@dataclass
class JobSummary:
    """What `burstmap jobs` shows of a job: its calls counted by state, and when the last one ended.

    A finished job's summary is stored beside it (signed), so listing jobs never reads every record.
    """

    job_id: str
    prefix: str
    function: str
    submitted: float
    n_calls: int
    timeout: float | None
    counts: dict[str, int]
    last_end: float | None

    @classmethod
    def of(cls, manifest: Manifest, records: Iterable[Record], corrupt: int = 0) -> JobSummary:
        """The summary of a job from its manifest and the records found so far."""
        summary = cls(manifest.job_id, manifest.prefix, manifest.function, manifest.submitted, manifest.n_calls,
                      manifest.timeout, {**{s.value: 0 for s in CallState}, "corrupt": corrupt}, None)
        summary.add(records)
        return summary

    def add(self, records: Iterable[Record]) -> None:
        """Count more records (each call once)."""
        for record in records:
            self.counts[record.state.value] += 1
            self.last_end = record.end if self.last_end is None else max(self.last_end, record.end)

    def count(self, group: GroupView, indices: Sequence[int]) -> None:
        """Count the records of a stored group at ``indices`` (each call once), without building them."""
        everyone = len(indices) == len(group.states)
        states = Counter(group.states if everyone else (group.states[i] for i in indices))
        for state, count in states.items():
            self.counts[state.value] += count
        if indices:
            last = group.last_end(indices)
            self.last_end = last if self.last_end is None else max(self.last_end, last)

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.job_id)

    @property
    def pending(self) -> int:
        """Calls with no record yet: queued or running."""
        return self.n_calls - sum(self.counts.values())

    def encode(self, key: bytes) -> bytes:
        body = json.dumps({f: getattr(self, f) for f in self.__dataclass_fields__}).encode()
        return seal(key, f"summary/{self.job_id}", body)

    @classmethod
    def decode(cls, data: bytes, key: bytes, job_id: str) -> JobSummary:
        """Verify and parse a stored summary; `RecordError` if it is not the signed summary of ``job_id``."""
        try:
            summary = cls(**json.loads(unseal(key, f"summary/{job_id}", data)))
        except (PayloadRejectedError, ValueError, TypeError) as e:
            raise RecordError(f"the summary of job {job_id} is not valid: {e}") from None
        if summary.job_id != job_id:
            raise RecordError(f"the summary stored for job {job_id} describes another job")
        return summary

    def store(self, storage: Storage, key: bytes) -> None:
        """Keep the summary of a finished job beside it; a store that refuses only costs the next listing time."""
        if self.pending or self.counts["corrupt"]:
            return
        try:
            storage.put(self.layout.summary, self.encode(key))
        except (BurstmapError, OSError) as e:
            log.debug("burstmap: could not store the summary of job %s: %s", self.job_id, e)


@dataclass
class JobRecords:
    """A job's manifest and the status records found so far; `refresh` fetches only new ones."""

    storage: Storage
    key: bytes
    manifest: Manifest
    records: dict[int, Record] = field(default_factory=dict)
    corrupt: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls, storage: Storage, key: bytes, prefix: str, job_id: str) -> JobRecords:
        """Read and verify a job's manifest and every status record it has.

        Raises:
            JobNotFoundError: there is no job ``job_id`` under ``prefix``.
        """
        job = cls(storage, key, load_manifest(storage, key, prefix, job_id))
        job.refresh()
        return job

    @property
    def pending(self) -> int:
        """Calls with no record yet: queued or running."""
        return self.manifest.n_calls - len(self.records) - len(self.corrupt)

    def refresh(self) -> int:
        """Fetch the records that appeared since the last refresh (one LIST); return how many."""
        layout = self.manifest.layout
        new: dict[str, list[int]] = {}
        for key in self.storage.list(layout.status_prefix):
            ids = [i for i in call_ids_of(key) or () if i < self.manifest.n_calls and i not in self.records]
            if ids:
                new[key] = ids
        found = 0
        for (key, ids), blob in zip(new.items(), _fetch(self.storage, list(new))):
            if blob is None:
                continue
            try:
                records = {r.call_id: r for r in decode_records(blob, self.key, layout.job_id)}
            except (RecordError, PayloadRejectedError) as e:
                records = {}
                self.corrupt.update((i, str(e)) for i in ids)
            for call_id in ids:
                if call_id in records:
                    self.records[call_id] = records[call_id]
                    self.corrupt.pop(call_id, None)
                    found += 1
        return found

    def counts(self) -> dict[str, int]:
        """How many calls are in each state, plus ``pending`` and ``corrupt``."""
        counts = Counter(r.state.value for r in self.records.values())
        return {**{s.value: counts[s.value] for s in CallState}, "pending": self.pending, "corrupt": len(self.corrupt)}

    def summary(self) -> JobSummary:
        return JobSummary.of(self.manifest, self.records.values(), len(self.corrupt))


def _fetch(storage: Storage, keys: list[str]) -> list[bytes | None]:
    """Get keys in parallel; a key deleted since it was listed gives ``None``."""
    def get(key: str) -> bytes | None:
        try:
            return storage.get(key)
        except KeyNotFoundError:
            return None

    if len(keys) < 2:
        return [get(k) for k in keys]
    with ThreadPoolExecutor(min(_FETCHERS, len(keys))) as pool:
        return list(pool.map(get, keys))


def call_rows(manifest: Manifest, records: dict[int, Record], corrupt: Iterable[int] = ()) -> list[dict[str, Any]]:
    """One row per call of a job (see `CALL_FIELDS`); unfinished calls have ``None`` for times."""
    corrupt = set(corrupt)
    rows = []
    for call_id in range(manifest.n_calls):
        row: dict[str, Any] = dict.fromkeys(CALL_FIELDS)
        row.update(job_id=manifest.job_id, call_id=call_id, state="corrupt" if call_id in corrupt else "pending")
        record = records.get(call_id)
        if record is not None:
            row.update({k: v for k, v in record.header().items() if k in row and k != "error"})
            row.update(
                queue_wait=record.start - manifest.submitted, duration=record.duration,
                # a time of day as a float is exact to ~0.2 us: a call with no overhead may show -0.2 us
                overhead=max(0.0, record.duration - record.setup - record.compute),
                gb_seconds=gb_seconds(record),
                error=(record.error or {}).get("type"),
            )
        rows.append(row)
    return rows


def gb_seconds(record: Record, memory_mb: int | None = None) -> float | None:
    """What a call cost in Lambda compute: billed seconds × GB of memory, from what the function recorded.

    None for a call that ran elsewhere; a Lambda call with no billed time (a timeout written by the
    client) counts its whole duration. ``memory_mb`` overrides the recorded memory.
    """
    memory = memory_mb or record.info.get("memory_mb")
    if memory is None:
        return None
    billed = record.info.get("billed_ms", math.ceil(max(0.0, record.duration) * 1000))
    return billed / 1000 * memory / 1024


def summarize(rows: Sequence[dict[str, Any]], submitted: float) -> dict[str, Any]:
    """Totals over call rows of jobs submitted at ``submitted`` (the earliest, for several jobs).

    ``overhead_fraction`` is ``1 - sum(compute) / sum(duration)`` over finished calls: the share of
    the time workers spent on calls that went to anything but the user's function (reading the
    function and input, unpickling, writing the result). Queue wait is not part of it.
    ``stragglers`` are the finished calls whose duration exceeds `STRAGGLER_FACTOR` times the median
    and the median by `STRAGGLER_MARGIN` seconds, slowest first. ``cost`` is the Lambda compute cost at `PRICE_PER_GB_SECOND` (None off Lambda).
    """
    finished = [r for r in rows if r["end"] is not None]
    states = Counter(r["state"] for r in rows)
    wall = max(r["end"] for r in finished) - submitted if finished else None
    busy = sum(r["duration"] for r in finished)
    median = statistics.median(r["duration"] for r in finished) if finished else None
    lambda_rows = [r["gb_seconds"] for r in finished if r.get("gb_seconds") is not None]
    billed = sum(lambda_rows) if lambda_rows else None
    slow = [r for r in finished if median is not None
            and r["duration"] > max(STRAGGLER_FACTOR * median, median + STRAGGLER_MARGIN)]
    return {
        "calls": len(rows),
        "done": states[CallState.OK.value],
        "failed": sum(states[s] for s in FAILED_STATES),
        "pending": states["pending"],
        "corrupt": states["corrupt"],
        "states": dict(sorted(states.items())),
        "submitted": submitted,
        "wall_time": wall,
        "throughput": len(finished) / wall if wall else None,
        "median_duration": median,
        "overhead_fraction": 1 - sum(r["compute"] for r in finished) / busy if busy > 0 else None,
        "queue_wait_max": max((r["queue_wait"] for r in finished), default=None),
        "gb_seconds": billed,
        "cost": None if billed is None else billed * PRICE_PER_GB_SECOND,
        "stragglers": [{"job_id": r["job_id"], "call_id": r["call_id"], "duration": r["duration"], "worker": r["worker"]}
                       for r in sorted(slow, key=lambda r: -r["duration"])],
    }


def _report(manifests: Sequence[Manifest], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "job_ids": [m.job_id for m in manifests],
        "functions": sorted({m.function for m in manifests}),
        "summary": summarize(rows, min(m.submitted for m in manifests)),
        "calls": rows,
    }


def job_stats(storage: Storage, key: bytes, prefix: str, job_id: str) -> dict[str, Any]:
    """Statistics of one job read from the store: ``{"job_ids", "functions", "summary", "calls"}``.

    Raises:
        JobNotFoundError: there is no such job.
    """
    job = JobRecords.load(storage, key, prefix, job_id)
    return _report([job.manifest], call_rows(job.manifest, job.records, job.corrupt))


def stats(futures: Iterable[Any], key: bytes, storage: Storage | None = None) -> dict[str, Any]:
    """Statistics of the calls behind some futures, from the records they hold (same shape as `job_stats`).

    Each job's manifest is read from ``storage`` (by default the store the futures read from).
    A future that failed because its record was corrupt counts as ``corrupt``.
    """
    by_job: dict[str, list[Any]] = {}
    for future in futures:
        by_job.setdefault(future.job_id, []).append(future)
    if not by_job:
        raise ValueError("stats() needs at least one future")
    manifests, rows = [], []
    for group in by_job.values():
        store = storage or group[0].storage
        manifest = load_manifest(store, key, group[0].layout.prefix, group[0].job_id)
        records = {f.call_id: f.record for f in group if f.record is not None}
        corrupt = [f.call_id for f in group if f.record is None and f.done() and isinstance(f.exception(), RecordError)]
        wanted = {f.call_id for f in group}
        rows += [r for r in call_rows(manifest, records, corrupt) if r["call_id"] in wanted]
        manifests.append(manifest)
    return _report(manifests, rows)


def job_summary(storage: Storage, key: bytes, prefix: str, job_id: str) -> JobSummary:
    """A job's summary: the stored one of a finished job, else counted from its records (and stored if finished).

    Raises:
        JobNotFoundError: there is no job ``job_id`` under ``prefix``.
        RecordError: its manifest is not valid.
    """
    try:
        return JobSummary.decode(storage.get(Layout(prefix, job_id).summary), key, job_id)
    except (KeyNotFoundError, RecordError):
        pass
    summary = JobRecords.load(storage, key, prefix, job_id).summary()
    summary.store(storage, key)
    return summary


def list_jobs(storage: Storage, key: bytes, prefix: str) -> list[JobSummary | tuple[str, str]]:
    """Every job under ``prefix``, summarized, oldest first; an unreadable manifest is ``(job_id, error)``.

    A finished job costs one small read, whatever its size.
    """
    names = [name.rpartition("/")[2].removesuffix(".json") for name in storage.list(Layout.manifests(prefix))]

    def one(job_id: str) -> JobSummary | tuple[str, str]:
        try:
            return job_summary(storage, key, prefix, job_id)
        except (RecordError, JobNotFoundError) as e:
            return job_id, str(e)

    with ThreadPoolExecutor(_FETCHERS) as pool:
        jobs = list(pool.map(one, names))
    return sorted(jobs, key=lambda j: j.submitted if isinstance(j, JobSummary) else 0.0)
