"""Futures of calls, and the functions that wait on them: PyWren's API on `concurrent.futures`."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import logging
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from tqdm.auto import tqdm

from .errors import CallTimeoutError, PayloadRejectedError, RemoteError, SerializationError, WorkerDiedError
from .job import CallState, Layout, Record, RecordGroup, call_name
from .storage.base import Storage

__all__ = [
    "ALL_COMPLETED",
    "ANY_COMPLETED",
    "ALWAYS",
    "ResponseFuture",
    "wait",
    "get_all_results",
    "as_completed",
]

_log = logging.getLogger(__name__)
_PENDING, _RUNNING, _CANCELLED, _FINISHED = (cf._base.PENDING, cf._base.RUNNING, cf._base.CANCELLED,
                                             cf._base.FINISHED)
_ENDED = (cf._base.CANCELLED, cf._base.CANCELLED_AND_NOTIFIED, cf._base.FINISHED)
ALL_COMPLETED = cf.ALL_COMPLETED
ANY_COMPLETED = cf.FIRST_COMPLETED
ALWAYS = "ALWAYS"

_STATE_ERRORS = {
    CallState.TIMEOUT: CallTimeoutError,
    CallState.DIED: WorkerDiedError,
    CallState.REJECTED: PayloadRejectedError,
}


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker, shown as its cause."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class _Family:
    """What the futures of one job share: its layout, its store, whether to show progress, and one condition
    (a condition of its own is most of a plain future's memory, which a million-call job cannot afford)."""

    __slots__ = ("layout", "storage", "progress", "condition")

    def __init__(self, layout: Layout, storage: Storage, progress: bool | None,
                 condition: threading.Condition) -> None:
        self.layout, self.storage, self.progress, self.condition = layout, storage, progress, condition


class _MadeOnUse:
    """A list attribute created when first read: most futures never get a waiter or a callback. It lives in
    the attribute of the same name with ``_`` appended, ``None`` until then."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = name + "_"

    def __get__(self, future: Any, owner: type | None = None) -> Any:
        if future is None:
            return self
        values = getattr(future, self.slot)
        if values is None:
            values = []
            setattr(future, self.slot, values)
        return values

    def __set__(self, future: Any, values: list) -> None:
        setattr(future, self.slot, values)


class ResponseFuture(cf.Future):
    """The future of one call. It is finished when its status record appears in the store.

    It starts ``PENDING`` and can be cancelled until a backend hands the call to a worker
    (`take`); a record that appears for a call no backend reported taking finishes it all the same.

    The futures of one job share their job's layout, store and condition (`of_job`), so a pending
    future costs about 200 bytes; waiting therefore re-checks its own state. A finished one keeps
    its record as stored, with its neighbours', until `record` is read.
    """

    _waiters = _MadeOnUse()
    _done_callbacks = _MadeOnUse()

    def __init__(self, layout: Layout, call_id: int, storage: Storage, progress: bool | None = None,
                 condition: threading.Condition | None = None) -> None:
        self._join(_Family(layout, storage, progress, condition or threading.Condition()), call_id)

    @classmethod
    def of_job(cls, layout: Layout, n_calls: int, storage: Storage, progress: bool | None) -> list[ResponseFuture]:
        """The futures of a job's calls ``0 .. n_calls - 1``, sharing one family."""
        family = _Family(layout, storage, progress, threading.Condition())
        collecting = gc.isenabled()
        gc.disable()  # a million new objects would start hundreds of collections that find nothing to free
        try:
            futures = []
            for call_id in range(n_calls):  # each joined as made: one made before the class's first has its
                future = cls.__new__(cls)  # attributes would keep them in a dict of its own, 170 bytes more
                future._join(family, call_id)
                futures.append(future)
        finally:
            if collecting:
                gc.enable()
        return futures

    def _join(self, family: _Family, call_id: int) -> None:
        # What cf.Future.__init__ sets, the condition shared and the lists made on use.
        self._family = family
        self._condition = family.condition
        self.call_id = call_id
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._record: Any = None
        self._waiters_: list | None = None
        self._done_callbacks_: list | None = None

    layout = property(lambda self: self._family.layout, doc="The keys of the call's job.")
    storage = property(lambda self: self._family.storage, doc="The store the call's outcome lands in.")
    progress = property(lambda self: self._family.progress,
                        doc="Whether waiting shows a progress bar (None: when stderr is a terminal).")

    @property
    def job_id(self) -> str:
        return self._family.layout.job_id

    @property
    def record(self) -> Record | None:
        """The call's status record, once finished (built from its stored group when read)."""
        record = self._record
        return record.record_of(self.call_id) if isinstance(record, RecordGroup) else record

    @property
    def status(self) -> dict[str, Any] | None:
        """The call's status (state, start, end, host, worker, peak RSS, attempt), once finished."""
        record = self.record
        return None if record is None else record.header()

    def logs(self) -> str:
        """What the call printed to stdout and stderr (empty until it has finished)."""
        record = self.record
        return record.log.decode("utf-8", "replace") if record else ""

    def _wait(self, timeout: float | None) -> None:
        """Wait until the future ends or ``timeout`` passes; a shared condition also wakes for its siblings."""
        if self._state in _ENDED:
            return
        end = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._state not in _ENDED:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._condition.wait(left)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return super().exception(0)

    def result(self, timeout: float | None = None) -> Any:
        """The call's result; a future, or a list of futures, that the call returned is resolved too (as in Lithops)."""
        self._wait(timeout)
        if self._state == _FINISHED and self._exception is None:
            value = self._result
        else:
            value = super().result(0)
        if isinstance(value, Deferred):
            value = value.load()
            with self._condition:
                self._result = value
        if isinstance(value, ResponseFuture):
            return value.result(timeout)
        if isinstance(value, list) and value and all(isinstance(v, ResponseFuture) for v in value):
            return [v.result(timeout) for v in value]
        return value

    def __reduce__(self) -> tuple:
        """Pickle as the call's identity; unpickled, it is watched from the store there (`burstmap.travel`)."""
        from .travel import attached

        return attached, (self.layout.prefix, self.job_id, self.call_id)

    def succeeded(self) -> bool:
        """Whether the call has finished and returned (PyWren's name)."""
        return self.done() and not self.cancelled() and self.exception() is None

    def errored(self) -> bool:
        """Whether the call has finished with an error (PyWren's name)."""
        return self.done() and not self.cancelled() and self.exception() is not None

    #: How many futures were ever cancelled here: the watcher looks for cancelled calls only when it grows.
    cancellations = 0

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            ResponseFuture.cancellations += 1
        return cancelled

    def take(self) -> bool:
        """Mark the call as handed to a worker; return whether it is still wanted.

        A pending future becomes ``RUNNING``; a running one (a re-run after its worker died) stays
        wanted; a cancelled or finished one is not (a cancelled one's waiters hear of it now).
        """
        with self._condition:
            return self._take()

    def _take(self) -> bool:
        """`take`, with the condition held."""
        state = self._state
        if state == _PENDING:
            self._state = _RUNNING
            return True
        if state == _CANCELLED:
            self.set_running_or_notify_cancel()
        return state == _RUNNING

    def _finish(self, record: Record | None, value: Any = None, error: BaseException | None = None) -> None:
        """Finish with the call's outcome, unless the future was cancelled or finished already."""
        settle([(self, record, value, error)])

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.job_id}/{call_name(self.call_id)} {self._state.lower()}>"


#: A future, its record (or the stored group that holds it), and its value or error.
Outcome = tuple[ResponseFuture, Any, Any, "BaseException | None"]


def take_all(futures: Iterable[ResponseFuture]) -> set[ResponseFuture]:
    """`ResponseFuture.take` for many futures at once, under one hold of each job's condition; return those
    still wanted."""
    futures = list(futures)
    wanted = set()
    for condition, group in _by_condition(futures, [f._condition for f in futures]):
        with condition:
            wanted.update(f for f in group if f._take())
    return wanted


def _by_condition(items: list, conditions: list[threading.Condition]) -> Iterator[tuple[threading.Condition, list]]:
    """Items grouped by their futures' condition (usually one: their job's)."""
    distinct = set(conditions)
    if len(distinct) == 1:
        yield distinct.pop(), items
        return
    for condition in distinct:
        yield condition, [item for item, c in zip(items, conditions) if c is condition]


def settle(outcomes: Iterable[Outcome]) -> None:
    """Finish futures with their calls' outcomes: under one hold of each job's shared condition and one
    wake-up of its waiters, rather than one of each per future. Cancelled or finished futures are skipped."""
    outcomes = list(outcomes)
    for condition, group in _by_condition(outcomes, [outcome[0]._condition for outcome in outcomes]):
        done = []
        with condition:
            for future, record, value, error in group:
                if not future._take():
                    continue
                future._record = record
                future._state = _FINISHED
                waiters = future._waiters_
                if error is None:
                    future._result = value
                    for waiter in waiters or ():
                        waiter.add_result(future)
                else:
                    future._exception = error
                    for waiter in waiters or ():
                        waiter.add_exception(future)
                done.append(future)
            condition.notify_all()
        for future in done:
            if future._done_callbacks_:
                try:
                    future._invoke_callbacks()
                except BaseException:  # a SystemExit from one future's callback skips none of the others'
                    _log.exception("burstmap: a done callback of %r raised", future)


class Deferred:
    """A result too large to fetch with its status: loaded from the store on first `result()`."""

    def __init__(self, load: Any) -> None:
        self.load = load


def rebuild_error(record: Record, value: Any, loaded: bool) -> BaseException:
    """The exception a failed call's future raises: its own type when it unpickled, with the remote traceback.

    A `BaseException` that is not an `Exception` (``SystemExit``, ``KeyboardInterrupt``) arrives as a
    `RemoteError` naming it: raised as itself, it would end the client rather than report the call.
    """
    error = record.error or {}
    where = f"call {record.call_id} ({error.get('type', '?')})"
    if record.state in _STATE_ERRORS:
        return _STATE_ERRORS[record.state](error.get("message", where))
    if record.state is CallState.OK:
        return SerializationError(f"call {record.call_id} succeeded but its result could not be unpickled here: {value}")
    if loaded and isinstance(value, Exception):
        exc = value
    elif loaded and isinstance(value, BaseException):
        exc = RemoteError(f"call {record.call_id} raised {type(value).__qualname__}: {value}; it is not re-raised "
                          "here as itself, which would stop this program")
    else:
        exc = RemoteError(f"{error.get('type', 'exception')}: {error.get('message', '')} "
                          f"(it could not be rebuilt here: {value})")
    exc.__cause__ = RemoteTraceback(error.get("traceback", ""))
    return exc


class DoneAndNotDone(NamedTuple):
    """The futures that are done and those that are not, each in the order they were given."""

    done: list
    not_done: list


def _in_order(futures: list[cf.Future]) -> DoneAndNotDone:
    done, not_done = [], []
    for future in futures:
        ended = future._state in _ENDED if isinstance(future, ResponseFuture) else future.done()
        (done if ended else not_done).append(future)
    return DoneAndNotDone(done, not_done)


def _wait_all(futures: list[cf.Future], timeout: float | None) -> None:
    """Wait until every future is done or ``timeout`` passes. Ours wait on their job's condition, woken once
    per group of calls finished, not once per call as `concurrent.futures.wait` would be; others as it does."""
    if not all(isinstance(f, ResponseFuture) for f in futures):
        cf.wait(futures, timeout=timeout)
        return
    end = None if timeout is None else time.monotonic() + timeout
    for future in futures:
        future._wait(None if end is None else end - time.monotonic())
        if end is not None and time.monotonic() >= end:
            return


def _progress_bar(futures: list, progress: bool | None) -> tqdm | None:
    """A bar if asked for; else as the futures' executor was configured; else when stderr is a terminal."""
    if progress is None:
        progress = getattr(futures[0], "progress", None) if futures else None
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress or not futures:
        return None
    return tqdm(total=len(futures), unit="call", desc="burstmap", leave=False)


def wait(futures: Iterable[cf.Future], return_when: str = ALL_COMPLETED, timeout: float | None = None,
         progress: bool | None = None) -> DoneAndNotDone:
    """Wait for calls: all of them, any one of them, or not at all (``ALWAYS``).

    Returns ``(done, not_done)`` as `concurrent.futures.wait` does, but as lists in the order the
    futures were given, as PyWren did (code indexes them); never raises a call's error.
    """
    futures = list(futures)
    if return_when == ALWAYS:
        return _in_order(futures)
    bar = _progress_bar(futures, progress)
    if bar is None:
        if return_when == ALL_COMPLETED:
            _wait_all(futures, timeout)
        else:
            cf.wait(futures, timeout=timeout, return_when=return_when)
        return _in_order(futures)
    try:
        finished = [f for f in futures if f.done()]
        failed = sum(f.exception() is not None for f in finished)
        bar.update(len(finished))
        for future in cf.as_completed([f for f in futures if not f.done()], timeout=timeout):
            failed += future.exception() is not None
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(1)
            if return_when == ANY_COMPLETED:
                break
    except cf.TimeoutError:
        pass
    finally:
        bar.close()
    outcome = _in_order(futures)
    print(f"burstmap: {len(outcome.done)} of {len(futures)} calls done ({failed} failed) in "
          f"{bar.format_dict['elapsed']:.1f}s", file=sys.stderr)
    return outcome


def get_all_results(futures: Iterable[cf.Future], return_exceptions: bool = False,
                    timeout: float | None = None, progress: bool | None = None) -> list[Any]:
    """Wait for every call and return their results in order.

    The first failed call's error is raised, unless ``return_exceptions`` puts each error in its place.
    """
    futures = list(futures)
    done, not_done = wait(futures, ALL_COMPLETED, timeout=timeout, progress=progress)
    if not_done:
        raise cf.TimeoutError(f"{len(not_done)} of {len(futures)} calls not finished after {timeout}s")
    if not return_exceptions:
        return [f.result() for f in futures]
    return [f.exception() or f.result() for f in futures]


def as_completed(futures: Iterable[cf.Future], timeout: float | None = None) -> Iterator[cf.Future]:
    """Yield futures as their calls finish, like `concurrent.futures.as_completed`."""
    return cf.as_completed(futures, timeout=timeout)
