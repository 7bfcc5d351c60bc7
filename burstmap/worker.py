"""The one worker handler: runs calls of a job the same way inside every backend.

It reads the job's function (once per job) and each call's input range, runs the call with its
stdout/stderr captured, and writes the call's status record last, as the completion marker.
"""

from __future__ import annotations

import contextlib
import io
import os
import resource
import socket
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import PayloadRejectedError
from .job import CallState, Layout, OutputRefs, Record
from .piece import DataPiece
from .serialize import loads, seal_value
from .storage.base import Storage

__all__ = ["Task", "Handler", "INLINE_LIMIT"]

#: Results up to this size live inside the status record; larger ones get their own object.
INLINE_LIMIT = 1 << 20
_HOST = socket.gethostname()


@dataclass(frozen=True)
class Task:
    """One attempt of one call, as a backend hands it to a worker."""

    prefix: str
    job_id: str
    call_id: int
    start: int
    end: int
    attempt: int = 1


class Handler:
    """Runs tasks against a store; caches each job's function and small data objects."""

    def __init__(self, storage: Storage, key: bytes, worker: str = "") -> None:
        self.storage = storage
        self._key = key
        self.worker = worker or f"{_HOST}:{os.getpid()}"
        self._functions: OrderedDict[str, Any] = OrderedDict()
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def run(self, tasks: Iterable[Task], on_start: Callable[[int], None] | None = None) -> None:
        """Run tasks in order; ``on_start(i)`` is called before the i-th starts."""
        for i, task in enumerate(tasks):
            if on_start:
                on_start(i)
            self.run_task(task)

    def run_task(self, task: Task) -> Record:
        """Run one task and write its status record; user errors become records, not exceptions."""
        record = Record(task.call_id, CallState.OK, task.attempt, time.time(), host=_HOST, worker=self.worker,
                        pid=os.getpid())
        try:
            func, args, kwargs = self.load(task)
        except PayloadRejectedError as e:
            record.state, record.error = CallState.REJECTED, _error_fields(e)
            return self._finish(task, record)
        except Exception as e:
            record.state, record.error = CallState.ERROR, _error_fields(e)
            record.output = self._seal_value(task, e, record)
            return self._finish(task, record)
        log = io.StringIO()
        began = time.time()
        record.setup = began - record.start
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                value = func(*args, **kwargs)
        except BaseException as e:
            record.state, record.error = CallState.ERROR, _error_fields(e)
            value = e
        record.compute = time.time() - began
        record.log = log.getvalue().encode("utf-8", "replace")
        record.output = self._seal_value(task, value, record)
        return self._finish(task, record)

    def load(self, task: Task) -> tuple[Callable, tuple, dict]:
        """Read, verify and unpickle a task's function and arguments."""
        func = self._function(task)
        args, kwargs = loads(self._key, f"{task.job_id}/data/{task.call_id}", self._input(task))
        return func, tuple(self._resolve(a) for a in args), kwargs

    def write_failure(self, task: Task, state: CallState, error: BaseException, start: float) -> None:
        """Record that a task ended outside the handler (its worker died or was stopped)."""
        record = Record(task.call_id, state, task.attempt, start, time.time(), host=_HOST, worker=self.worker,
                        error=_error_fields(error))
        self._finish(task, record)

    def _seal_value(self, task: Task, value: Any, record: Record) -> bytes:
        """Pickle and seal a result or error; one that cannot be pickled turns the call into an error."""
        identity = f"{task.job_id}/out/{task.call_id}"
        try:
            return seal_value(self._key, identity, value)
        except Exception as e:
            substitute = _unpicklable(value, e)
            if record.error is None:
                record.state, record.error = CallState.ERROR, _error_fields(substitute)
            return seal_value(self._key, identity, substitute)

    def _finish(self, task: Task, record: Record) -> Record:
        layout = Layout(task.prefix, task.job_id)
        if len(record.output) > INLINE_LIMIT:
            record.output_key = layout.out(task.call_id)
            self.storage.put(record.output_key, record.output)
            record.output = b""
        record.end = record.end or time.time()
        record.peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.storage.put(layout.status(task.call_id), record.encode())
        return record

    def _function(self, task: Task) -> Callable:
        func = self._functions.get(task.job_id)
        if func is None:
            blob = self.storage.get(Layout(task.prefix, task.job_id).func)
            func = loads(self._key, f"{task.job_id}/func", blob)
            self._functions[task.job_id] = func
            if len(self._functions) > 8:
                self._functions.popitem(last=False)
        return func

    def _input(self, task: Task) -> bytes:
        key = Layout(task.prefix, task.job_id).data
        data = self._data.get(task.job_id)
        if data is None and task.start == 0:
            if self.storage.size(key) <= 8 * INLINE_LIMIT:
                data = self._data[task.job_id] = self.storage.get(key)
                if len(self._data) > 4:
                    self._data.popitem(last=False)
        if data is not None:
            return data[task.start:task.end]
        return self.storage.get_range(key, task.start, task.end)

    def _resolve(self, arg: Any) -> Any:
        if isinstance(arg, DataPiece):
            return arg.bind(self.storage)
        if not isinstance(arg, OutputRefs):
            return arg
        return [self.load_result(prefix, job_id, call_id) for prefix, job_id, call_id in arg.refs]

    def load_result(self, prefix: str, job_id: str, call_id: int) -> Any:
        """Load another call's result from its record; re-raise its error if it failed."""
        layout = Layout(prefix, job_id)
        record = Record.decode(self.storage.get(layout.status(call_id)))
        blob = self.storage.get(record.output_key) if record.output_key else record.output
        value = loads(self._key, f"{job_id}/out/{call_id}", blob)
        if record.state is not CallState.OK:
            raise value
        return value


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

