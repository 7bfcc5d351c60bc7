"""Jobs and calls: the manifest of a job, the storage key layout, and the per-call status record.

Every key burstmap writes is built here::

    <prefix>/manifests/<job_id>.json         the job's manifest, written first
    <prefix>/jobs/<job_id>/func.pickle        the function, signed
    <prefix>/jobs/<job_id>/data.pickle        every call's signed input; call i reads bytes offsets[i:i+2]
    <prefix>/jobs/<job_id>/status/<chunk>/<call_id>   the status record: header, captured output, result
    <prefix>/jobs/<job_id>/out/<call_id>      a result too large to keep inside the record
    <prefix>/jobs/<job_id>/deliveries/<first_call>/<n>   delivery n of a batch re-delivered whole

A status record is written last, once per attempt, and its existence marks the call complete. It
holds the result itself unless the result is large, so a finished call costs one write. Quick
consecutive calls of one worker may share one object, ``status/<chunk>/<first>-<last>`` (a group
commit), so that ten thousand tiny calls are not ten thousand writes.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import BurstmapError
from .serialize import load_stream, loads

__all__ = ["CallState", "Manifest", "Record", "Layout", "OutputRefs", "RecordError", "call_ids_of", "call_name",
           "decode_records", "encode_records", "read_record", "load_output"]

RECORD_MAGIC = b"BMS1\n"
GROUP_MAGIC = b"BMG1\n"
#: Statuses are grouped by this many calls so that a poll lists only groups with calls pending.
CHUNK = 1000


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

    @property
    def root(self) -> str:
        return f"{self.prefix}/jobs/{self.job_id}/"

    @property
    def manifest(self) -> str:
        return f"{self.prefix}/manifests/{self.job_id}.json"

    @property
    def func(self) -> str:
        return self.root + "func.pickle"

    @property
    def data(self) -> str:
        return self.root + "data.pickle"

    @property
    def status_prefix(self) -> str:
        return self.root + "status/"

    def status_chunk(self, chunk: int) -> str:
        """The prefix of the statuses of calls ``chunk * 1000`` to ``chunk * 1000 + 999``: one LIST page."""
        return f"{self.status_prefix}{chunk}/"

    def status(self, call_id: int) -> str:
        return self.status_chunk(call_id // CHUNK) + call_name(call_id)

    def status_group(self, first: int, last: int) -> str:
        """The key of one object holding the records of calls ``first`` to ``last`` (a group commit)."""
        return f"{self.status_chunk(first // CHUNK)}{call_name(first)}-{call_name(last)}"

    def out(self, call_id: int) -> str:
        return self.root + "out/" + call_name(call_id)

    def delivery(self, first_call: int, n: int) -> str:
        """The marker of delivery ``n`` of the batch that starts at ``first_call`` (see `backends.ledger`)."""
        return f"{self.root}deliveries/{call_name(first_call)}/{n}"


@dataclass(frozen=True)
class Manifest:
    """What a job is, stored as JSON so that any process can re-attach to it from storage alone."""

    job_id: str
    prefix: str
    function: str
    offsets: tuple[int, ...]
    submitted: float
    host: str
    timeout: float | None = None
    max_retries: int = 2
    kind: str = "map"

    @property
    def n_calls(self) -> int:
        return len(self.offsets) - 1

    @property
    def layout(self) -> Layout:
        return Layout(self.prefix, self.job_id)

    def data_range(self, call_id: int) -> tuple[int, int]:
        """The byte range of call ``call_id``'s input inside the data object."""
        return self.offsets[call_id], self.offsets[call_id + 1]

    def encode(self) -> bytes:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse a stored manifest; raise `RecordError` on anything else."""
        try:
            fields = json.loads(data)
            fields["offsets"] = tuple(int(o) for o in fields["offsets"])
            return cls(**fields)
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise RecordError(f"not a burstmap job manifest: {e}") from None


@dataclass
class Record:
    """One attempt of one call: its outcome, where and when it ran, its captured output and result."""

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

    def encode(self) -> bytes:
        header = self.header()
        header["log_len"] = len(self.log)
        return b"".join((RECORD_MAGIC, json.dumps(header).encode(), b"\n", self.log, self.output))

    def header(self) -> dict[str, Any]:
        """Every field but the captured output and the result, as plain data."""
        header = {name: getattr(self, name) for name in _HEADER_FIELDS}
        header["state"] = self.state.value
        return header

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Parse a stored status record; raise `RecordError` on anything else."""
        if not data.startswith(RECORD_MAGIC):
            raise RecordError("not a burstmap status record (bad magic)")
        line_end = data.find(b"\n", len(RECORD_MAGIC))
        try:
            header = json.loads(data[len(RECORD_MAGIC):line_end])
            log_len = int(header.pop("log_len"))
            header["state"] = CallState(header["state"])
            body = data[line_end + 1:]
            if line_end < 0 or log_len < 0 or log_len > len(body):
                raise ValueError("truncated record")
            return cls(**header, log=body[:log_len], output=body[log_len:])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            raise RecordError(f"corrupt burstmap status record: {e}") from None

    @property
    def duration(self) -> float:
        return self.end - self.start


_HEADER_FIELDS = tuple(f.name for f in fields(Record) if f.name not in ("log", "output"))


def encode_records(records: list[Record]) -> bytes:
    """One object holding several records: the group magic, then each record after its length."""
    parts = [GROUP_MAGIC]
    for record in records:
        data = record.encode()
        parts += [len(data).to_bytes(8, "big"), data]
    return b"".join(parts)


def decode_records(data: bytes) -> list[Record]:
    """The records in a status object, one or a group; raise `RecordError` on anything else."""
    if not data.startswith(GROUP_MAGIC):
        return [Record.decode(data)]
    records, at = [], len(GROUP_MAGIC)
    while at < len(data):
        size = int.from_bytes(data[at:at + 8], "big")
        if at + 8 + size > len(data):
            raise RecordError("corrupt burstmap record group: truncated")
        records.append(Record.decode(data[at + 8:at + 8 + size]))
        at += 8 + size
    return records


def read_record(storage: Any, layout: Layout, call_id: int) -> Record:
    """Read the record of one call, whether it was stored alone or in a group."""
    try:
        return Record.decode(storage.get(layout.status(call_id)))
    except KeyError:
        for key in storage.list(layout.status_chunk(call_id // CHUNK)):
            ids = call_ids_of(key)
            if ids is not None and len(ids) > 1 and call_id in ids:
                return next(r for r in decode_records(storage.get(key)) if r.call_id == call_id)
        raise


def load_output(storage: Any, key: bytes, identity: str, record: Record) -> Any:
    """Verify and unpickle a call's result or error: inline in its record, or streamed from its own object."""
    if not record.output_key:
        return loads(key, identity, record.output)
    with storage.open_read(record.output_key) as source:
        return load_stream(key, identity, source)


@dataclass(frozen=True)
class OutputRefs:
    """Stands in a call's input for the results of other calls, which the worker loads itself."""

    refs: tuple[tuple[str, str, int], ...]  # (prefix, job_id, call_id)
