"""Jobs and calls: the manifest of a job, the storage key layout, and the per-call status record.

Every key burstmap writes is built here::

    <prefix>/manifests/<shard>/<job_id>.json   the job's manifest, written last (a job is listed once it can run)
    <prefix>/jobs/<shard>/<job_id>/func.pickle   the function, signed (with the job's ``extra_args``)
    <prefix>/jobs/<shard>/<job_id>/summary.json  counts by state, written once every call has a record
    <prefix>/jobs/<shard>/<job_id>/data.pickle   the calls' inputs, in signed blocks of ~64 KB (`Manifest.blocks`)
    <prefix>/jobs/<shard>/<job_id>/lease         until when the client watches the job
    <prefix>/jobs/<shard>/<job_id>/status/<m>/<k>/<call_id>   the status record: header, captured output, result
    <prefix>/jobs/<shard>/<job_id>/out/<m>/<k>/<call_id>      a result too large to keep inside the record
    <prefix>/jobs/<shard>/<job_id>/deliveries/<shard>/<batch>/<n>   delivery n of a batch re-delivered whole

No folder holds more than a few thousand entries, so a directory store stays fast with a million
jobs of ten million calls each. ``<shard>`` is the first `SHARD` characters of the (random hex) job
or delivery id: 4,096 folders, each holding about 250 of a million jobs. Call ``c`` is in status
chunk ``c // CHUNK``, whose folder is ``<m>/<k>`` = ``<chunk // CHUNK>/<chunk % CHUNK>``: at most
`CHUNK` (1,000) entries per folder for jobs of up to a billion calls, and one LIST per chunk.

A status record is written last, once per attempt, and its existence marks the call complete. It
holds the result itself unless the result is large, so a finished call costs one write. Quick
consecutive calls of one worker may share one object, ``status/<m>/<k>/<first>-<last>`` (a group
commit), so that ten thousand tiny calls are not ten thousand writes.
"""

from __future__ import annotations

import array
import bisect
import enum
import functools
import itertools
import json
import pickle
import re
import reprlib
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

from .errors import BurstmapError, JobNotFoundError, KeyNotFoundError, PayloadRejectedError
from .serialize import MAC_SIZE, load_stream, seal, unseal
from .versions import RUNTIME

__all__ = ["Batch", "CallState", "GroupView", "Manifest", "Record", "RecordGroup", "Layout", "OutputRefs", "RecordError",
           "Task", "call_ids_of", "call_name", "decode_group", "decode_records", "encode_group", "encode_records",
           "finished_calls", "load_manifest", "load_output", "new_job_id", "read_record"]

RECORD_MAGIC = b"BMS3\n"
GROUP_MAGIC = b"BMG5\n"
_SAFE_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: Statuses are grouped by this many calls so that a poll lists only groups with calls pending; the
#: folders of chunks are grouped by as many again, so that none holds more than this many entries.
CHUNK = 1000
#: Jobs (and re-delivered batches) are spread over 16**SHARD folders by the first SHARD hex digits of their id.
SHARD = 3


class CallState(str, enum.Enum):
    """How one attempt of a call ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    DIED = "died"
    REJECTED = "rejected"


class RecordError(BurstmapError, ValueError):
    """Bytes that should be a status record or manifest are not one."""


def call_name(call_id: int) -> str:
    """The key segment of a call: zero-padded so keys sort in call order."""
    return f"{call_id:05d}"


def call_ids_of(status_key: str) -> range | None:
    """The calls whose records a status key holds (one, or a group), or None for a key that is not a status."""
    first, dash, last = status_key.rpartition("/")[2].partition("-")
    if not first.isdigit() or (dash and not last.isdigit()):
        return None
    return range(int(first), int(last if dash else first) + 1)


@dataclass(frozen=True)
class Layout:
    """The keys of one job under one prefix."""

    prefix: str
    job_id: str

    @staticmethod
    def manifests(prefix: str) -> str:
        """The prefix of every job's manifest under ``prefix``: listing it (recursively) lists the jobs."""
        return f"{prefix}/manifests/"

    @property
    def root(self) -> str:
        return f"{self.prefix}/jobs/{_sharded(self.job_id)}/"

    @property
    def manifest(self) -> str:
        return f"{self.manifests(self.prefix)}{_sharded(self.job_id)}.json"

    @property
    def func(self) -> str:
        return self.root + "func.pickle"

    @property
    def summary(self) -> str:
        return self.root + "summary.json"

    @property
    def data(self) -> str:
        return self.root + "data.pickle"

    @property
    def status_prefix(self) -> str:
        return self.root + "status/"

    @property
    def lease(self) -> str:
        """The client's lease on the job (see `burstmap.lease`)."""
        return self.root + "lease"

    def status_chunk(self, chunk: int) -> str:
        """The prefix of the statuses of calls ``chunk * CHUNK`` to ``chunk * CHUNK + CHUNK - 1``: one LIST page."""
        return f"{self.status_prefix}{_nested(chunk)}/"

    def status(self, call_id: int) -> str:
        return self.status_chunk(call_id // CHUNK) + call_name(call_id)

    def status_group(self, first: int, last: int) -> str:
        """The key of one object holding the records of calls ``first`` to ``last`` (a group commit)."""
        return f"{self.status_chunk(first // CHUNK)}{call_name(first)}-{call_name(last)}"

    def out(self, call_id: int) -> str:
        return f"{self.root}out/{_nested(call_id // CHUNK)}/{call_name(call_id)}"

    def delivery(self, batch: str, n: int) -> str:
        """The marker of delivery ``n`` of the batch whose delivery id is ``batch`` (see `burstmap.attempts`)."""
        return f"{self.root}deliveries/{_sharded(batch)}/{n}"


def _sharded(name: str) -> str:
    """``name`` inside its shard folder, named by its first `SHARD` characters (random hex for jobs and batches)."""
    return f"{name[:SHARD]}/{name}"


def _nested(chunk: int) -> str:
    """The folder of a status chunk, two levels deep so that neither level holds more than `CHUNK` entries."""
    return f"{chunk // CHUNK}/{chunk % CHUNK}"


@dataclass(frozen=True)
class Manifest:
    """What a job is, stored as JSON so that any process can re-attach to it from storage alone."""

    job_id: str
    prefix: str
    function: str
    blocks: tuple[tuple[int, int], ...]  # (first call, first byte) of each block of inputs, then (calls, bytes)
    submitted: float
    host: str
    timeout: float | None = None
    worker_retries: int = 2
    kind: str = "map"
    versions: dict[str, str] = field(default_factory=lambda: dict(RUNTIME), compare=False)  # of the client

    @property
    def n_calls(self) -> int:
        return self.blocks[-1][0]

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.job_id)

    def data_range(self, call_id: int) -> tuple[int, int]:
        """The byte range of the block that holds call ``call_id``'s input, inside the data object."""
        return self.block_of(call_id)[2:]

    def block_of(self, call_id: int) -> tuple[int, int, int, int]:
        """The calls (first, past the last) and the byte range of the block that holds call ``call_id``'s input."""
        i = bisect.bisect_right(self._firsts, call_id) - 1
        (first, start), (stop, end) = self.blocks[i], self.blocks[i + 1]
        return first, stop, start, end

    @functools.cached_property
    def _firsts(self) -> list[int]:
        return [first for first, _ in self.blocks]

    def encode(self, key: bytes) -> bytes:
        """The signed JSON form: no one without the key can swap the job, its calls or its inputs' blocks."""
        body = json.dumps({f.name: getattr(self, f.name) for f in fields(self)}).encode()
        return seal(key, f"manifest/{self.job_id}", body)

    @classmethod
    def decode(cls, data: bytes, key: bytes, job_id: str) -> Manifest:
        """Verify and parse the stored manifest of ``job_id``; raise `RecordError` on anything else."""
        try:
            body = unseal(key, f"manifest/{job_id}", data)
        except PayloadRejectedError:
            raise RecordError(f"the manifest of job {job_id} failed HMAC verification (tampered, or written "
                              "with another secret key)") from None
        try:
            fields = json.loads(body)
            fields["blocks"] = tuple((int(first), int(start)) for first, start in fields["blocks"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise RecordError(f"not a burstmap job manifest: {e}") from None


class Task(NamedTuple):
    """One attempt of one call: where the block holding its input lies in the job's data object.

    A named tuple, not a dataclass: a batch makes one per call, and a million calls notice the difference.
    """

    prefix: str
    job_id: str
    call_id: int
    start: int
    end: int
    attempt: int = 1


#: A `Task` from a tuple of all its fields, in C: a batch makes one per call.
_task = functools.partial(tuple.__new__, Task)


@dataclass(frozen=True)
class Batch:
    """Calls of one job in flight, with their attempt numbers, the job's timeout and retry budget.

    It is the unit that crosses every seam, in one signed encoding whatever carries it (a pipe, a Dask
    task, a queue message, a Lambda event). ``delivery`` names one sending, so that a copy of a message
    is recognisable as the same delivery.
    """

    prefix: str
    job_id: str
    tasks: tuple[Task, ...]
    timeout: float | None = None
    worker_retries: int = 2
    delivery: str = field(default_factory=lambda: secrets.token_hex(8))
    versions: Mapping[str, str] | None = field(default=None, compare=False)  # of the client, from the manifest

    @classmethod
    def of(cls, manifest: Manifest, call_ids: Iterable[int], attempts: Mapping[int, int] | None = None) -> Batch:
        """The batch of ``call_ids`` of a job (each at attempt 1 unless ``attempts`` says otherwise)."""
        tasks, first, stop, start, end = [], 0, 0, 0, 0
        for c in call_ids:
            if not first <= c < stop:  # calls come in runs: a block is looked up once per run, not per call
                first, stop, start, end = manifest.block_of(c)
            tasks.append(_task((manifest.prefix, manifest.job_id, c, start, end, attempts.get(c, 1) if attempts else 1)))
        return cls(manifest.prefix, manifest.job_id, tuple(tasks), manifest.timeout, manifest.worker_retries,
                   versions=manifest.versions)

    def encode(self, key: bytes) -> bytes:
        """``<hex MAC>.<JSON>``: JSON, never a pickle, signed with the job's key."""
        body = json.dumps({
            "v": 3, "prefix": self.prefix, "job": self.job_id, "timeout": self.timeout,
            "worker_retries": self.worker_retries, "delivery": self.delivery,
            "calls": _runs(self.tasks), "versions": self.versions,
        }, separators=(",", ":")).encode()
        return seal(key, "batch", body)[:MAC_SIZE].hex().encode() + b"." + body

    @classmethod
    def decode(cls, key: bytes, blob: bytes) -> Batch:
        """Verify and parse an encoded batch; `PayloadRejectedError` for anything not signed by ``key``."""
        mac, _, body = blob.partition(b".")
        try:
            unseal(key, "batch", bytes.fromhex(mac.decode("ascii")) + body)
            fields = json.loads(body)
            prefix, job = str(fields["prefix"]), str(fields["job"])
            tasks = tuple(_task((prefix, job, c, int(s), int(e), int(a)))
                          for first, n, s, e, a in fields["calls"] for c in range(int(first), int(first) + int(n)))
            if not tasks:
                raise ValueError("no calls")
            timeout = None if fields["timeout"] is None else float(fields["timeout"])
            versions = fields.get("versions")
            if versions is not None and not isinstance(versions, dict):
                raise TypeError("versions is not a mapping")
            return cls(prefix, job, tasks, timeout, int(fields["worker_retries"]), str(fields["delivery"]), versions)
        except PayloadRejectedError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError) as e:
            raise PayloadRejectedError(f"not a burstmap batch ({type(e).__name__})") from None

    @staticmethod
    def peek(blob: bytes) -> Batch | None:
        """What an encoded batch claims, unverified: only to tell its owner it was refused. ``None`` if unreadable."""
        try:
            fields = json.loads(blob.partition(b".")[2])
            prefix, job = str(fields["prefix"]), str(fields["job"])
            tasks = tuple(Task(prefix, job, c, 0, 0) for first, n, *_ in fields["calls"]
                          for c in range(int(first), int(first) + int(n)))
            return Batch(prefix, job, tasks, None, 0, "") if tasks and _SAFE_ID.fullmatch(job) else None
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError):
            return None


def _runs(tasks: Iterable[Task]) -> list[list[int]]:
    """Tasks as runs ``[first call, calls, start, end, attempt]`` of consecutive calls in one block at one attempt:
    a batch's encoding grows with its blocks, not its calls."""
    runs: list[list[int]] = []
    last = None
    for t in tasks:
        if (last is not None and t.call_id == last[0] + last[1] and t.start == last[2] and t.end == last[3]
                and t.attempt == last[4]):
            last[1] += 1
        else:
            last = [t.call_id, 1, t.start, t.end, t.attempt]
            runs.append(last)
    return runs


@dataclass(slots=True)
class Record:
    """One attempt of one call: its outcome, where and when it ran, its captured output and result.

    Slotted, and its host and worker names interned when read: a client may hold a million of them.
    """

    call_id: int
    state: CallState
    attempt: int = 1
    start: float = 0.0
    end: float = 0.0
    host: str = ""
    worker: str = ""
    pid: int = 0
    peak_rss: int = 0
    setup: float = 0.0
    compute: float = 0.0
    error: dict[str, str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    log: bytes = b""
    output: bytes = b""
    output_key: str | None = None

    def encode(self, key: bytes, job_id: str) -> bytes:
        """The signed form: magic, a MAC over everything after it, the JSON header, the log, the result."""
        return RECORD_MAGIC + seal(key, f"{job_id}/status", self._body())

    def _body(self) -> bytes:
        header = self.header()
        header["log_len"] = len(self.log)
        return b"".join((json.dumps(header).encode(), b"\n", self.log, self.output))

    def header(self) -> dict[str, Any]:
        """Every field but the captured output and the result, as plain data."""
        header = {name: getattr(self, name) for name in _HEADER_FIELDS}
        header["state"] = self.state.value
        return header

    @classmethod
    def decode(cls, data: bytes, key: bytes, job_id: str) -> Record:
        """Verify and parse a stored status record of job ``job_id``.

        Raises:
            RecordError: the bytes are not a record, or it was altered.
            PayloadRejectedError: a worker that holds another key wrote that it refused the call.
        """
        if not data.startswith(RECORD_MAGIC):
            raise RecordError("not a burstmap status record (bad magic)")
        sealed = data[len(RECORD_MAGIC):]
        try:
            body = unseal(key, f"{job_id}/status", sealed)
        except PayloadRejectedError:
            raise _unverified(sealed[MAC_SIZE:], job_id) from None
        return cls._parse(body)

    @classmethod
    def _parse(cls, body: bytes) -> Record:
        line_end = body.find(b"\n")
        try:
            header = json.loads(body[:line_end])
            log_len = int(header.pop("log_len"))
            header["state"] = CallState(header["state"])
            header["host"], header["worker"] = sys.intern(header["host"]), sys.intern(header["worker"])
            rest = body[line_end + 1:]
            if line_end < 0 or log_len < 0 or log_len > len(rest):
                raise ValueError("truncated record")
            return cls(**header, log=rest[:log_len], output=rest[log_len:])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise RecordError(f"corrupt burstmap status record: {e}") from None

    @property
    def duration(self) -> float:
        return self.end - self.start


_HEADER_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("log", "output"))
_TABLE_FIELDS = tuple(f for f in _HEADER_FIELDS if f not in ("start", "end", "setup", "compute"))


def _unverified(body: bytes, job_id: str) -> RecordError | PayloadRejectedError:
    """The error for a record that failed verification; nothing in it is trusted beyond naming it."""
    try:
        record = Record._parse(body)
    except RecordError:
        record = None
    if record is None or record.state is not CallState.REJECTED:
        return RecordError(f"a status record of job {job_id} failed HMAC verification (tampered, or written with "
                           "another secret key); it was not used")
    return PayloadRejectedError(
        f"call {job_id}/{call_name(record.call_id)}: worker {reprlib.repr(record.worker)} refused it: its payload "
        "did not verify with the worker's key; the worker most likely has a different BURSTMAP_SECRET_KEY"
    )


def encode_records(records: list[Record], key: bytes, job_id: str) -> bytes:
    """One object holding several records, column by column, under one MAC.

    A field equal in every record is written once, and times are a block of 64-bit nanoseconds
    (`encode_group`). So a quick call's record costs tens of bytes, not hundreds.
    """
    return GROUP_MAGIC + seal(key, f"{job_id}/status", _records_body(records))


def _records_body(records: list[Record]) -> bytes:
    table = {name: [getattr(r, name) for r in records] for name in _TABLE_FIELDS}
    table["state"] = [state.value for state in table["state"]]
    starts = [int(r.start * 1e9) for r in records]
    began = [start + int(r.setup * 1e9) for start, r in zip(starts, records)]
    returned = [at + int(r.compute * 1e9) for at, r in zip(began, records)]
    times = (starts, began, returned, [int(r.end * 1e9) for r in records])
    return _group_body(table, times, [r.log for r in records], [r.output for r in records])


def encode_group(table: dict[str, list], times: tuple[Sequence[int], ...], logs: list[bytes], outputs: list[Any],
                 key: bytes, job_id: str, values: bool = False) -> bytes:
    """`encode_records` from the records' columns: ``table`` holds every header field but the times, ``times``
    when each call started, began to run, returned and ended (nanoseconds since the epoch), ``logs`` their
    captured output and ``outputs`` their pickled results; or, with ``values``, their results themselves,
    all plain (None, bool, int, float, str, bytes), stored as one pickle that a client loads in one step."""
    return GROUP_MAGIC + seal(key, f"{job_id}/status", _group_body(table, times, logs, outputs, values))


def _group_body(table: dict[str, list], times: tuple[Sequence[int], ...], logs: list[bytes], outputs: list,
                values: bool = False) -> bytes:
    ids = table.pop("call_id")
    n = len(ids)
    common, columns = {}, {}
    for name, column in table.items():
        if column.count(column[0]) == n:
            common[name] = column[0]
        else:
            columns[name] = column
    head: dict[str, Any] = {"n": n, "common": common, "columns": columns}
    if ids == list(range(ids[0], ids[0] + n)):
        head["first"] = ids[0]
    else:
        columns["call_id"] = ids
    if any(logs):
        head["log"] = [len(log) for log in logs]
    else:
        logs = []
    if values:
        outputs = [pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)]
        head["values"] = len(outputs[0])
    else:
        head["output"] = [len(output) for output in outputs]
    block = array.array("q", itertools.chain.from_iterable(times))
    if sys.byteorder != "little":
        block.byteswap()
    return b"".join((json.dumps(head, separators=(",", ":")).encode(), b"\n", block.tobytes(), *logs, *outputs))


class RecordGroup:
    """The verified records of one status object, kept as the bytes stored: tens of bytes a call.

    A client holding a million finished calls keeps them in this form. It is parsed when read
    (`view`), and only the few groups read last stay parsed; a `Record` is built only when asked for.
    """

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body
        _view(self)  # parsed now: a corrupt group is refused when it is found, not when first read

    @property
    def view(self) -> GroupView:
        return _view(self)

    def record_of(self, call_id: int) -> Record:
        """The record of call ``call_id``, built now."""
        view = _view(self)
        return view.record(view.call_ids.index(call_id))


@functools.lru_cache(maxsize=8)
def _view(group: RecordGroup) -> GroupView:
    """The parsed form of a group; the last few stay parsed, while their calls are finished or read in turn."""
    body = group._body
    line_end = body.find(b"\n")
    try:
        head = json.loads(body[:line_end])
        n, common, columns = int(head["n"]), head["common"], head["columns"]
        first = int(head.get("first", 0))
        call_ids = range(first, first + n) if "first" in head else [int(i) for i in columns.pop("call_id")]
        times, at = array.array("q"), line_end + 1 + 4 * _NS_SIZE * n
        times.frombytes(body[line_end + 1:at])
        if sys.byteorder != "little":
            times.byteswap()
        logs, at = _split(body, at, head["log"], n) if "log" in head else (None, at)
        if "values" in head:
            end = at + int(head["values"])
            values, outputs = pickle.loads(body[at:end]), None
            if type(values) is not list or len(values) != n:
                raise ValueError("bad values")
        else:
            values, (outputs, end) = None, _split(body, at, head["output"], n)
        if line_end < 0 or end != len(body):
            raise ValueError("truncated group")
        return GroupView(common, columns, body, call_ids, times, logs, outputs, values)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, EOFError, pickle.UnpicklingError) as e:
        raise RecordError(f"corrupt burstmap record group: {e}") from None


_NS_SIZE = array.array("q").itemsize


class GroupView:
    """A group of records parsed, column by column: the state and result of each are at hand without
    building its record. ``values`` holds the results themselves when the group stored them so (all
    plain: see `encode_group`); ``None`` otherwise."""

    def __init__(self, common: dict[str, Any], columns: dict[str, list], body: bytes, call_ids: Sequence[int],
                 times: array.array, logs: list[tuple[int, int]] | None, outputs: list[tuple[int, int]] | None,
                 values: list[Any] | None) -> None:
        n = len(call_ids)
        if n < 1 or len(times) != 4 * n or any(len(c) != n for c in columns.values()):
            raise ValueError("truncated group")
        self.call_ids = call_ids
        self.states: list[CallState] = ([CallState(v) for v in columns["state"]] if "state" in columns
                                        else [CallState(common["state"])] * n)
        self.values = values
        self._common, self._columns, self._times = common, columns, times
        self._body, self._logs, self._outputs = body, logs, outputs
        for name in ("host", "worker"):
            if name in common:
                common[name] = sys.intern(str(common[name]))
        self.record(0)  # every field is checked once here, not when a record is first asked for

    def column(self, name: str) -> list[Any]:
        """One header field of every record."""
        column = self._columns.get(name)
        return [self._common[name]] * len(self.call_ids) if column is None else column

    def last_end(self, indices: Sequence[int]) -> float:
        """When the last of the calls at ``indices`` ended."""
        n = len(self.call_ids)
        ends = self._times[3 * n:]
        return (max(ends) if len(indices) == n else max(ends[i] for i in indices)) / 1e9

    def output(self, i: int) -> bytes:
        """The i-th call's inline result or error, as pickled (covered by the group's MAC)."""
        if self.values is not None:
            return pickle.dumps(self.values[i], protocol=pickle.HIGHEST_PROTOCOL)
        return self._body[slice(*self._outputs[i])]

    def record(self, i: int) -> Record:
        """The i-th record, built now."""
        row = {**self._common, **{name: values[i] for name, values in self._columns.items()}}
        row["call_id"], row["state"] = self.call_ids[i], self.states[i]
        n, times = len(self.call_ids), self._times
        start, began, returned, end = times[i], times[n + i], times[2 * n + i], times[3 * n + i]
        row.update(start=start / 1e9, end=end / 1e9, setup=(began - start) / 1e9, compute=(returned - began) / 1e9)
        row["host"], row["worker"] = sys.intern(row["host"]), sys.intern(row["worker"])
        log = self._body[slice(*self._logs[i])] if self._logs else b""
        return Record(**row, log=log, output=self.output(i))


def decode_group(data: bytes, key: bytes, job_id: str) -> RecordGroup:
    """The verified records in a status object, one or a group; raise as `Record.decode` does."""
    if not data.startswith(GROUP_MAGIC):
        if data.startswith(GROUP_MAGIC[:3]):
            raise RecordError(f"a status record group of job {job_id} is in another burstmap version's format "
                              f"({data[:4].decode(errors='replace')}); read it with the version that ran the job")
        return RecordGroup(_records_body([Record.decode(data, key, job_id)]))
    try:
        body = unseal(key, f"{job_id}/status", data[len(GROUP_MAGIC):])
    except PayloadRejectedError:
        raise RecordError(f"a status record group of job {job_id} failed HMAC verification (tampered, or "
                          "written with another secret key); it was not used") from None
    return RecordGroup(body)


def decode_records(data: bytes, key: bytes, job_id: str) -> list[Record]:
    """The verified records in a status object, one or a group; raise as `Record.decode` does."""
    view = decode_group(data, key, job_id).view
    return [view.record(i) for i in range(len(view.call_ids))]


def _split(body: bytes, at: int, sizes: list[int], n: int) -> tuple[list[tuple[int, int]], int]:
    """The ``(start, end)`` of ``n`` consecutive parts of the given sizes from ``at``, and where they end."""
    if len(sizes) != n or any(not isinstance(size, int) or size < 0 for size in sizes):
        raise ValueError("bad part sizes")
    spans = []
    for size in sizes:
        spans.append((at, at + size))
        at += size
    return spans, at


def read_record(storage: Any, key: bytes, layout: Layout, call_id: int) -> Record:
    """Read and verify the record of one call, whether it was stored alone or in a group."""
    try:
        return Record.decode(storage.get(layout.status(call_id)), key, layout.job_id)
    except KeyError:
        for name in storage.list(layout.status_chunk(call_id // CHUNK)):
            ids = call_ids_of(name)
            if ids is not None and len(ids) > 1 and call_id in ids:
                records = decode_records(storage.get(name), key, layout.job_id)
                return next(r for r in records if r.call_id == call_id)
        raise


def finished_calls(storage: Any, layout: Layout, call_ids: Iterable[int]) -> set[int]:
    """Which of ``call_ids`` have a durable status: one LIST per status group they fall in."""
    chunks = {call_id // CHUNK for call_id in call_ids}
    return {i for chunk in chunks for name in storage.list(layout.status_chunk(chunk)) for i in call_ids_of(name) or ()}


def new_job_id() -> str:
    """A fresh job id: 96 random bits, so that two jobs never share one."""
    return secrets.token_hex(12)


def load_manifest(storage: Any, key: bytes, prefix: str, job_id: str) -> Manifest:
    """The verified manifest of a job; `JobNotFoundError` if the store has none."""
    layout = Layout(prefix, job_id)
    try:
        data = storage.get(layout.manifest)
    except KeyNotFoundError:
        raise JobNotFoundError(f"no job {job_id!r} under prefix {prefix!r} in {storage!r}; "
                               "`burstmap jobs` lists the jobs there") from None
    manifest = Manifest.decode(data, key, job_id)
    if manifest.job_id != job_id or manifest.prefix != prefix:
        raise RecordError(f"the manifest stored for job {job_id} describes another job")
    return manifest


def load_output(storage: Any, key: bytes, identity: str, record: Record) -> Any:
    """Unpickle a call's result or error from a verified record: inline in it (the record's MAC covers it),
    or verified while streamed from its own object."""
    if not record.output_key:
        if not record.output:
            raise PayloadRejectedError(f"payload {identity} is missing from its record")
        return pickle.loads(record.output)
    with storage.open_read(record.output_key) as source:
        return load_stream(key, identity, source)


@dataclass(frozen=True)
class OutputRefs:
    """Stands in a call's input for the results of other calls, which the worker loads itself."""

    refs: tuple[tuple[str, str, int], ...]  # (prefix, job_id, call_id)
