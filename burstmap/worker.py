"""The one worker handler: runs calls of a job the same way inside every backend.

It reads the job's function (once per job) and each call's input range, runs the call with its
stdout/stderr captured, and writes the call's status record last, as the completion marker.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import socket
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .call import call_begins, call_ends
from .errors import KeyNotFoundError, PayloadRejectedError, StorageError
from .job import (CHUNK, CallState, Layout, OutputRefs, Record, Task, encode_group, encode_records, load_output,
                  read_record)
from .piece import DataPiece
from .scratch import Scratch
from .serialize import MAC_SIZE, InputBlock, Spool, loads, spool_value
from .storage import Patient
from .storage.base import Storage

__all__ = ["Handler", "INLINE_LIMIT", "Trailing"]

#: Results up to this size live inside the status record; larger ones get their own object.
INLINE_LIMIT = 1 << 20
_GROUP_BYTES = 8 << 20  # a group takes no more calls once its results and logs are this large
_RSS_FRESH = 0.1  # seconds
_HOST = socket.gethostname()


class Trailing:
    """Calls a function with the job's ``extra_args`` after each item's: they travel with the function,
    so they are stored once per job and read once per worker, not copied into every call's input."""

    def __init__(self, fn: Callable, extra: tuple) -> None:
        self.fn = fn
        self.extra = extra

    def __call__(self, item: Any) -> Any:
        return self.fn(item, *self.extra)


class Handler:
    """Runs tasks against a store; caches each job's function and reads each batch's inputs at once.

    Its store waits out outages (`Patient`): a store down for less than the outage limit costs time,
    never a result; one down for longer ends the delivery with a `StorageError`, never the call.

    With a ``group_window`` (seconds), the records of quick consecutive calls are written together
    as one object, a group commit: a finished call waits at most that long for company. Calls that
    take longer than the window are written one by one, as without it.
    """

    def __init__(self, storage: Storage, key: bytes, worker: str = "", group_window: float = 0.0) -> None:
        self.storage = storage if isinstance(storage, Patient) else Patient(storage)
        self._key = key
        self.worker = worker or f"{_HOST}:{os.getpid()}"
        self.group_window = group_window
        self._functions: OrderedDict[str, Any] = OrderedDict()
        self._window: tuple[str, int, bytes] | None = None
        self._block: InputBlock | None = None
        self._rss, self._rss_read = 0, -_RSS_FRESH
        self._log = io.StringIO()  # what calls print; emptied whenever one did

    def run(self, tasks: Sequence[Task], on_start: Callable[[int], None] | None = None,
            on_durable: Callable[[int], None] | None = None) -> None:
        """Run tasks in order; ``on_start(i)`` before the i-th starts, ``on_durable(n)`` once the first n are stored."""
        self._prefetch(tasks)
        group, quick, last = _Group(), not self.annotates, len(tasks) - 1
        try:
            for i, task in enumerate(tasks):
                if on_start:
                    on_start(i)
                outcome = self.execute(task, quick)
                if group.tasks and not group.joins(task):
                    self._write(group)
                    group = _Group()
                    if on_durable:
                        on_durable(i)
                group.add(task, outcome, self)
                if i == last or time.time() >= group.due:
                    self._write(group)
                    group = _Group()
                    if on_durable:
                        on_durable(i + 1)
        finally:
            self._window = self._block = None  # a large input is not kept past its batch

    def run_task(self, task: Task) -> Record:
        """Run one task and write its status record; user errors become records, not exceptions."""
        try:
            outcome = self.execute(task, not self.annotates)
        finally:
            self._block = None  # a large input is not kept past its call
        record = outcome if type(outcome) is Record else self.quick_record(task, outcome)
        self._write_one(task, record)
        return record

    def execute(self, task: Task, quick: bool) -> Record | _Quick:
        """Run one task and return its finished record, not yet written; or, if ``quick`` allows, for a quick
        call (it ended OK with a small plain result and printed nothing) only its times and result.

        While its input is unpickled and it runs, the call knows itself (`burstmap.current_call`).
        """
        token = call_begins(task.job_id, task.call_id, self.storage, self._key)
        try:
            return self._execute(task, quick)
        finally:
            call_ends(token)

    @property
    def annotates(self) -> bool:
        """Whether `annotate` adds to records (a quick call gets no record otherwise)."""
        return type(self).annotate is not Handler.annotate

    def _execute(self, task: Task, quick: bool) -> Record | _Quick:
        start = time.time_ns()
        try:
            func, args, kwargs = self.load(task)
        except PayloadRejectedError as e:
            record = self._record(task, start, CallState.REJECTED, e)
            return self._complete(task, record)
        except Exception as e:
            if isinstance(e, StorageError) and not isinstance(e, KeyNotFoundError):
                raise  # an unreachable store is never a call's result: the delivery ends instead
            record = self._record(task, start, CallState.ERROR, e)
            self._store_value(task, e, record)
            return self._complete(task, record)
        log = self._log
        mark = log.tell()
        began = time.time_ns()
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            value, error = func(*args, **kwargs), None
        except BaseException as e:
            value = error = e
        finally:
            sys.stdout, sys.stderr = saved
        end = time.time_ns()
        printed = log.tell() != mark
        if error is None and not printed and quick and _small(value):
            return start, began, end, value
        record = self._record(task, start, CallState.OK if error is None else CallState.ERROR, error)
        record.setup, record.compute = (began - start) / 1e9, (end - began) / 1e9
        if printed:
            log.seek(mark)
            record.log = log.read().encode("utf-8", "replace")
            log.seek(0)
            log.truncate()
        self._store_value(task, value, record)
        return self._complete(task, record)

    def _record(self, task: Task, start: int, state: CallState, error: BaseException | None = None) -> Record:
        """A record of a task begun at ``start`` (nanoseconds), ended in ``state`` (with ``error``, if any)."""
        return Record(task.call_id, state, task.attempt, start / 1e9, host=_HOST, worker=self.worker,
                      pid=os.getpid(), error=None if error is None else _error_fields(error))

    def quick_record(self, task: Task, quick: _Quick) -> Record:
        """The record of a quick call, built from what `execute` returned for it."""
        start, began, end, value = quick
        record = self._record(task, start, CallState.OK)
        record.end, record.setup, record.compute = end / 1e9, (began - start) / 1e9, (end - began) / 1e9
        record.output = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return record

    def load(self, task: Task) -> tuple[Callable, tuple, dict]:
        """Read, verify and unpickle a task's function and arguments."""
        func = self._function(task)
        args, kwargs = self._inputs(task).load(task.call_id)
        if kwargs or len(args) != 1 or type(args[0]) not in _PLAIN and isinstance(args[0], _BOUND):
            return self._bound(func, args, kwargs)
        return func, args, kwargs

    def _bound(self, func: Callable, args: tuple, kwargs: dict) -> tuple[Callable, tuple, dict]:
        """A call's arguments with what travels in them bound to this worker (data pieces, scratch, results)."""
        if any(isinstance(a, _BOUND) for a in args) or any(isinstance(v, _BOUND) for v in kwargs.values()):
            return func, tuple(self._resolve(a) for a in args), {k: self._resolve(v) for k, v in kwargs.items()}
        return func, args, kwargs

    def write_failure(self, task: Task, state: CallState, error: BaseException, start: float) -> None:
        """Record that a task ended outside the handler (its worker died or was stopped)."""
        record = self._record(task, int(start * 1e9), state, error)
        record.end = time.time()
        self._store_value(task, error, record)
        self._write_one(task, self._complete(task, record))

    def annotate(self, task: Task, record: Record) -> None:
        """Add what a backend knows about a finished call to its record (``record.info``); nothing by default."""

    def _store_value(self, task: Task, value: Any, record: Record) -> None:
        """Seal a result or error into the record, or into its own object when large (streamed, never copied whole)."""
        if _small(value):
            record.output = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # the record's own MAC covers it
            return
        with self._seal_value(task, value, record) as spool:
            if MAC_SIZE + spool.size <= INLINE_LIMIT:
                record.output = spool.payload()  # the record's own MAC covers it
                return
            record.output_key = Layout(task.prefix, task.job_id).out(task.call_id)
            with self.storage.open_write(record.output_key) as f:
                spool.copy_to(f)

    def _seal_value(self, task: Task, value: Any, record: Record) -> Spool:
        """Pickle and seal a result or error; one that cannot be pickled turns the call into an error."""
        identity = f"{task.job_id}/out/{task.call_id}"
        try:
            return spool_value(self._key, identity, value, INLINE_LIMIT)
        except Exception as e:
            substitute = _unpicklable(value, e)
            if record.error is None:
                record.state, record.error = CallState.ERROR, _error_fields(substitute)
            return spool_value(self._key, identity, substitute, INLINE_LIMIT)

    def _complete(self, task: Task, record: Record) -> Record:
        """Stamp the end time."""
        record.end = record.end or time.time()
        self.annotate(task, record)
        return record

    def _write(self, group: _Group) -> None:
        """Store a group's records, stamped with the process's peak RSS so far."""
        peak_rss = self._peak_rss(group.longest() >= _RSS_FRESH)
        first, last = group.tasks[0], group.tasks[-1]
        layout = Layout(first.prefix, first.job_id)
        if group.records is None and len(group.tasks) > 1:
            n = len(group.tasks)
            table = {name: [value] * n for name, value in self._record(first, 0, CallState.OK).header().items()
                     if name not in ("start", "end", "setup", "compute")}
            table["peak_rss"] = [peak_rss] * n
            table["call_id"] = [task.call_id for task in group.tasks]
            table["attempt"] = [task.attempt for task in group.tasks]
            starts, began, ends, values = zip(*group.quick)
            blob = encode_group(table, (starts, began, ends, ends), [], list(values), self._key, first.job_id,
                                values=True)
            self.storage.put(layout.status_group(first.call_id, last.call_id), blob)
            return
        records = group.as_records(self)
        for record in records:
            record.peak_rss = record.peak_rss or peak_rss
        if len(records) == 1:
            self.storage.put(layout.status(first.call_id), records[0].encode(self._key, first.job_id))
        else:
            blob = encode_records(records, self._key, first.job_id)
            self.storage.put(layout.status_group(first.call_id, last.call_id), blob)

    def _write_one(self, task: Task, record: Record) -> None:
        group = _Group()
        group.add(task, record, self)
        self._write(group)

    def _peak_rss(self, fresh: bool) -> int:
        """The process's peak RSS: read again after a call that ran `_RSS_FRESH` seconds or more, else at most
        that often. Reading it can block for a millisecond after file writes (seen on Firecracker VMs),
        longer than a thousand quick calls take to run; a quick call cannot have grown the process much."""
        now = time.monotonic()
        if fresh or now - self._rss_read >= _RSS_FRESH:
            self._rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self._rss_read = now
        return self._rss

    def _function(self, task: Task) -> Callable:
        func = self._functions.get(task.job_id)
        if func is None:
            blob = self.storage.get(Layout(task.prefix, task.job_id).func)
            func = loads(self._key, f"{task.job_id}/func", blob)
            if isinstance(func, Trailing):
                func.extra = tuple(self._resolve(a) for a in func.extra)
            self._functions[task.job_id] = func
            if len(self._functions) > 8:
                self._functions.popitem(last=False)
        return func

    def _prefetch(self, tasks: Sequence[Task]) -> None:
        """Read the inputs of a batch of one job with one ranged read, not one read per call."""
        self._window = None
        if len(tasks) < 2 or any(t.job_id != tasks[0].job_id for t in tasks):
            return
        start, end = min(t.start for t in tasks), max(t.end for t in tasks)
        if end - start <= 8 * INLINE_LIMIT:
            data = self.storage.get_range(Layout(tasks[0].prefix, tasks[0].job_id).data, start, end)
            self._window = (tasks[0].job_id, start, data)

    def _inputs(self, task: Task) -> InputBlock:
        """The verified block that holds a task's input (the last one used, most of the time)."""
        block = self._block
        if block is None or block.start != task.start or block.job_id != task.job_id:
            block = self._block = InputBlock(self._key, task.job_id, task.start, self._read_block(task))
        return block

    def _read_block(self, task: Task) -> bytes | memoryview:
        """The bytes of a task's block of inputs: from the batch's window when it holds them, else read alone."""
        if self._window and self._window[0] == task.job_id:
            _, start, data = self._window
            if start <= task.start and task.end <= start + len(data):
                return memoryview(data)[task.start - start:task.end - start]
        return self.storage.get_range(Layout(task.prefix, task.job_id).data, task.start, task.end)

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, DataPiece):
            return arg.bind(self.storage)
        if isinstance(arg, Scratch):
            return arg.bind(self.storage, self._key)
        if not isinstance(arg, OutputRefs):
            return arg
        return [self.load_result(prefix, job_id, call_id) for prefix, job_id, call_id in arg.refs]

    def load_result(self, prefix: str, job_id: str, call_id: int) -> Any:
        """Load another call's result from its record; re-raise its error if it failed."""
        record = read_record(self.storage, self._key, Layout(prefix, job_id), call_id)
        value = load_output(self.storage, self._key, f"{job_id}/out/{call_id}", record)
        if record.state is not CallState.OK:
            raise value
        return value


#: What a worker binds to its store, or loads from it, before a call sees it.
_BOUND = (DataPiece, Scratch, OutputRefs)
_ATOMS = (type(None), bool, float)
_SIZED = (str, bytes)
_PLAIN = frozenset({*_ATOMS, int, str, bytes, tuple, list, dict})  # an argument of these kinds is never bound


def _small(value: Any) -> bool:
    """Whether a value is of a plain kind that pickles in far less than `INLINE_LIMIT` (no spool needed)."""
    kind = type(value)
    return (kind in _ATOMS or (kind is int and value.bit_length() <= 4096)
            or ((kind is str or kind is bytes) and len(value) <= INLINE_LIMIT // 8))


#: What `Handler.execute` returns for a quick call: when it started, began to run and ended (nanoseconds
#: since the epoch), and its result.
_Quick = tuple[int, int, int, Any]


class _Group:
    """The finished calls to be stored in one object: quick ones as `_Quick` tuples, until a call that is not
    quick joins; from then on, every call as a `Record`. It holds calls of one status chunk, up to
    `_GROUP_BYTES` of results, and is ``due`` to be stored `group_window` after its first call ended."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []
        self.quick: list[_Quick] = []
        self.records: list[Record] | None = None
        self.due = 0.0
        self.size = 0  # bytes of results and logs
        self._stop = 0  # the call past the last that may join: the end of the first's status chunk

    def add(self, task: Task, outcome: Record | _Quick, handler: Handler) -> None:
        if self.records is None and type(outcome) is tuple:
            self.quick.append(outcome)
            if type(outcome[3]) in _SIZED:
                self.size += len(outcome[3])
        else:
            self.records = self.as_records(handler)
            record = outcome if type(outcome) is Record else handler.quick_record(task, outcome)
            self.records.append(record)
            self.size += len(record.output) + len(record.log)
            self.quick = []
        if not self.tasks:
            end = outcome[2] / 1e9 if type(outcome) is tuple else outcome.end
            self.due = end + handler.group_window
            self._stop = (task.call_id // CHUNK + 1) * CHUNK
        self.tasks.append(task)

    def joins(self, task: Task) -> bool:
        """Whether a task's record may be stored in the same object as the group's: the next call of its job."""
        last = self.tasks[-1]
        return (task.call_id == last.call_id + 1 and task.call_id < self._stop and self.size < _GROUP_BYTES
                and task.job_id == last.job_id and task.prefix == last.prefix)

    def as_records(self, handler: Handler) -> list[Record]:
        """Every call's record, built now for quick calls."""
        if self.records is not None:
            return self.records
        return [handler.quick_record(task, quick) for task, quick in zip(self.tasks, self.quick)]

    def longest(self) -> float:
        """The longest a call of the group took, in seconds."""
        if self.records is None:
            return max(end - start for start, _, end, _ in self.quick) / 1e9
        return max(record.duration for record in self.records)


def _error_fields(error: BaseException) -> dict[str, str]:
    return {
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)),
    }


def _unpicklable(value: Any, error: Exception) -> Exception:
    if isinstance(value, BaseException):
        return RuntimeError(f"{type(value).__qualname__}: {value} (the exception itself could not be pickled)")
    return TypeError(f"the result {type(value).__qualname__} could not be pickled: {error}")

