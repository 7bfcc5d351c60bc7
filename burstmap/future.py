"""Futures of calls, and the functions that wait on them: PyWren's API on `concurrent.futures`."""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import itertools
import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
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


# A call's state in its job's book, one byte each; the `concurrent.futures` state each stands for.
_B_PENDING, _B_RUNNING, _B_CANCELLED, _B_OK, _B_FAILED, _B_NOTIFIED = range(6)
_STATE_OF = (_PENDING, _RUNNING, _CANCELLED, _FINISHED, _FINISHED, cf._base.CANCELLED_AND_NOTIFIED)
_OPEN = re.compile(rb"[\x00\x01]")
_CANCELLED_BYTE = re.compile(rb"[\x02\x05]")
_ENDED_BYTE = re.compile(rb"[\x02-\x05]")
_REPR_CALLS = 20


class CallBook:
    """What this client knows of one job's calls: a state byte, the outcome and the stored record of each,
    about 20 bytes a call, instead of a future per call held from the start.

    A call's `ResponseFuture` is made when read (`future`). The book keeps it in step while anybody
    holds it, and holds it itself while it has waiters or done callbacks; the outcomes stay in the
    book either way, so a future dropped and read again is the same call in the same state.
    """

    def __init__(self, layout: Layout, n_calls: int, storage: Storage, progress: bool | None) -> None:
        self.layout, self.storage, self.progress = layout, storage, progress
        self.condition = threading.Condition()
        self.states = bytearray(n_calls)
        self.values: list[Any] = [None] * n_calls  # a finished call's value, or its error
        self.records: list[Any] = [None] * n_calls  # its record, or the stored group that holds it
        self.unusual = 0  # values that `result()` does more with than return: loaded late, or futures
        self._live: weakref.WeakValueDictionary[int, ResponseFuture] = weakref.WeakValueDictionary()
        self._held: dict[int, ResponseFuture] = {}

    def __len__(self) -> int:
        return len(self.states)

    def future(self, call_id: int) -> ResponseFuture:
        """The future of one call: the one somebody holds, or a new one in the call's present state."""
        with self.condition:
            future = self._live.get(call_id)
            if future is None:
                future = ResponseFuture.__new__(ResponseFuture)
                future._join(self, call_id)
        return future

    def take(self, call_ids: Sequence[int]) -> Sequence[int]:
        """Mark calls as handed to a worker; return those still wanted.

        A pending call becomes running; a running one (a re-run after its worker died) stays wanted;
        a cancelled or finished one is not (a cancelled one's waiters hear of it now). A range of
        pending calls none of whose futures is held is taken in one step.
        """
        wanted = []
        with self.condition:
            states, live = self.states, self._live or None
            if (type(call_ids) is range and call_ids.step == 1 and live is None
                    and states.count(_B_PENDING, call_ids.start, call_ids.stop) == len(call_ids)):
                states[call_ids.start:call_ids.stop] = bytes((_B_RUNNING,)) * len(call_ids)
                return call_ids
            for i in call_ids:
                state = states[i]
                if state == _B_PENDING:
                    states[i] = _B_RUNNING
                    future = live and live.get(i)
                    if future is not None:
                        future._state = _RUNNING
                elif state == _B_CANCELLED:
                    self._notify_cancelled(i)
                if state <= _B_RUNNING:
                    wanted.append(i)
        return wanted

    def _notify_cancelled(self, call_id: int) -> None:
        """A cancelled call will not run: its future's waiters hear of it (the condition is held)."""
        self.states[call_id] = _B_NOTIFIED
        future = self._live.get(call_id)
        if future is not None:
            future.set_running_or_notify_cancel()

    def cancel(self, call_ids: Iterable[int]) -> int:
        """Cancel the calls no worker has taken yet; return how many."""
        cancelled, futures = 0, []
        with self.condition:
            states = self.states
            for i in call_ids:
                if states[i] == _B_PENDING:
                    states[i] = _B_CANCELLED
                    cancelled += 1
                    future = self._live.get(i)
                    if future is not None:
                        future._state = _CANCELLED
                        futures.append(future)
            if cancelled:
                ResponseFuture.cancellations += 1
                self.condition.notify_all()
        for future in futures:
            future._run_callbacks()
        return cancelled

    def settle(self, outcomes: Iterable[tuple[int, Any, Any, BaseException | None]]) -> None:
        """Finish calls with their ``(call_id, record, value, error)``: under one hold of the condition and
        one wake-up of its waiters. Calls cancelled or finished already are skipped."""
        done = []
        with self.condition:
            states, values, records, live = self.states, self.values, self.records, self._live or None
            for i, record, value, error in outcomes:
                state = states[i]
                if state > _B_RUNNING:
                    if state == _B_CANCELLED:
                        self._notify_cancelled(i)
                    continue
                if error is None:
                    states[i], values[i] = _B_OK, value
                    if _resolves(value):
                        self.unusual += 1
                else:
                    states[i], values[i] = _B_FAILED, error
                records[i] = record
                future = live and live.get(i)
                if future is not None:
                    future._settle(record, value, error)
                    done.append(future)
            self.condition.notify_all()
        for future in done:
            future._run_callbacks()

    def settle_run(self, first: int, values: list[Any], record: Any) -> bool:
        """Finish the calls from ``first`` on, one per value, all OK with plain values, in one step; or do
        nothing and return False if some of them ended already or has a future somebody holds (`settle` then)."""
        stop = first + len(values)
        with self.condition:
            if _ENDED_BYTE.search(self.states, first, stop) or self._any_live(first, stop):
                return False
            self.states[first:stop] = bytes((_B_OK,)) * len(values)
            self.values[first:stop] = values
            self.records[first:stop] = [record] * len(values)
            self.condition.notify_all()
        return True

    def _any_live(self, first: int, stop: int) -> bool:
        """Whether any call from ``first`` to ``stop`` has a future somebody holds (the condition is held)."""
        live = self._live
        if not live:
            return False
        if stop - first < len(live):
            return any(i in live for i in range(first, stop))
        return any(first <= i < stop for i in list(live.keys()))

    def open_from(self, call_ids: Sequence[int], at: int = 0) -> int | None:
        """The position in ``call_ids`` of the first call still pending or running, from ``at`` on; None if none."""
        states = self.states
        if isinstance(call_ids, range) and call_ids.step == 1:
            found = _OPEN.search(states, call_ids.start + at, call_ids.stop)
            return None if found is None else found.start() - call_ids.start
        for k in range(at, len(call_ids)):
            if states[call_ids[k]] <= _B_RUNNING:
                return k
        return None

    def forget(self, call_id: int) -> None:
        """Drop a call's outcome, read by an iterator that alone held its future: a later read finds None."""
        with self.condition:
            self.values[call_id] = self.records[call_id] = None

    def open_calls(self) -> list[int]:
        """The calls pending or running."""
        return [m.start() for m in _OPEN.finditer(self.states)]

    def cancelled_calls(self) -> set[int]:
        """The calls cancelled."""
        return {m.start() for m in _CANCELLED_BYTE.finditer(self.states)}

    def count(self, call_ids: Sequence[int], *states: int) -> int:
        """How many of the calls are in one of ``states``."""
        if isinstance(call_ids, range) and call_ids.step == 1:
            return sum(self.states.count(state, call_ids.start, call_ids.stop) for state in states)
        return sum(self.states[i] in states for i in call_ids)

    def open_count(self, call_ids: Sequence[int]) -> int:
        """How many of the calls are pending or running."""
        return self.count(call_ids, _B_PENDING, _B_RUNNING)

    def wait_ended(self, call_ids: Sequence[int], timeout: float | None = None) -> bool:
        """Wait until none of the calls is pending or running, or ``timeout`` passes; return whether none is."""
        end = None if timeout is None else time.monotonic() + timeout
        at: int | None = 0
        with self.condition:
            while (at := self.open_from(call_ids, at)) is not None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.condition.wait(left)
        return True


def _resolves(value: Any) -> bool:
    """Whether `ResponseFuture.result` does more with a call's value than return it: load it, or wait for the
    futures it holds."""
    kind = type(value)
    if kind in _PLAIN:
        return False
    return (isinstance(value, (Deferred, ResponseFuture, Futures))
            or (kind is list and bool(value) and all(isinstance(v, ResponseFuture) for v in value)))


_PLAIN = frozenset({type(None), bool, int, float, str, bytes, tuple, dict})


class _MadeOnUse:
    """A list attribute created when first read: most futures never get a waiter or a callback. It lives in
    the attribute of the same name with ``_`` appended, ``None`` until then. A future that has one is held
    by its book, so that it is there to be finished."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = name + "_"

    def __get__(self, future: Any, owner: type | None = None) -> Any:
        if future is None:
            return self
        values = getattr(future, self.slot)
        if values is None:
            values = []
            setattr(future, self.slot, values)
            future._book._held[future.call_id] = future
        return values

    def __set__(self, future: Any, values: list) -> None:
        setattr(future, self.slot, values)


class ResponseFuture(cf.Future):
    """The future of one call. It is finished when its status record appears in the store.

    It starts ``PENDING`` and can be cancelled until a backend hands the call to a worker
    (`CallBook.take`); a record that appears for a call no backend reported taking finishes it all the same.

    A job's futures are made when read from its `Futures` and share its `CallBook` (layout, store,
    condition, outcomes), so waiting re-checks its own state. A finished one keeps its record as
    stored, with its neighbours', until `record` is read.
    """

    _waiters = _MadeOnUse()
    _done_callbacks = _MadeOnUse()

    def __init__(self, layout: Layout, call_id: int, storage: Storage, progress: bool | None = None) -> None:
        """A future of one call, on a book of its own (jobs make theirs with `Futures`)."""
        self._join(CallBook(layout, call_id + 1, storage, progress), call_id)

    def _join(self, book: CallBook, call_id: int) -> None:
        """Take the call's state from its book, and be the one the book keeps in step (the condition is held)."""
        state = book.states[call_id]
        self._book = book
        self._condition = book.condition
        self.call_id = call_id
        self._state = _STATE_OF[state]
        self._result: Any = book.values[call_id] if state == _B_OK else None
        self._exception: BaseException | None = book.values[call_id] if state == _B_FAILED else None
        self._record: Any = book.records[call_id]
        self._waiters_: list | None = None
        self._done_callbacks_: list | None = None
        book._live[call_id] = self

    layout = property(lambda self: self._book.layout, doc="The keys of the call's job.")
    storage = property(lambda self: self._book.storage, doc="The store the call's outcome lands in.")
    progress = property(lambda self: self._book.progress,
                        doc="Whether waiting shows a progress bar (None: when stderr is a terminal).")

    @property
    def job_id(self) -> str:
        return self._book.layout.job_id

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
                self._result = self._book.values[self.call_id] = value
        if isinstance(value, ResponseFuture):
            return value.result(timeout)
        if _resolves(value):
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

    #: How many cancellations there ever were here: the watcher looks for cancelled calls only when it grows.
    cancellations = 0

    def cancel(self) -> bool:
        """Cancel the call unless a worker has taken it (as `concurrent.futures.Future.cancel`)."""
        with self._condition:
            if self._state in (_RUNNING, _FINISHED):
                return False
            if self._state != _PENDING:
                return True
            self._state = _CANCELLED
            self._book.states[self.call_id] = _B_CANCELLED
            ResponseFuture.cancellations += 1
            self._condition.notify_all()
        self._run_callbacks()
        return True

    def _settle(self, record: Any, value: Any, error: BaseException | None) -> None:
        """Finish with the call's outcome and tell the waiters (the condition is held)."""
        self._record = record
        self._state = _FINISHED
        waiters = self._waiters_
        if error is None:
            self._result = value
            for waiter in waiters or ():
                waiter.add_result(self)
        else:
            self._exception = error
            for waiter in waiters or ():
                waiter.add_exception(self)

    def _run_callbacks(self) -> None:
        """Run the done callbacks, if any: one that raises, even ``SystemExit``, is logged and stops no other
        future's; then the book no longer needs to hold this future."""
        if self._done_callbacks_:
            try:
                self._invoke_callbacks()
            except BaseException:
                _log.exception("burstmap: a done callback of %r raised", self)
        self._book._held.pop(self.call_id, None)

    def _finish(self, record: Record | None, value: Any = None, error: BaseException | None = None) -> None:
        """Finish with the call's outcome, unless the future was cancelled or finished already."""
        self._book.settle([(self.call_id, record, value, error)])

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.job_id}/{call_name(self.call_id)} {self._state.lower()}>"


class Futures(Sequence[ResponseFuture]):
    """The futures of a job's calls, or of some of them, as `Executor.map` returns them: each made when read.

    It reads as a list. A call costs its job's book about 20 bytes until its future is read, and the
    future is not kept once nobody holds it, so ``for f in ex.map(...)`` over a million calls stays
    small. `get_all_results` and `wait` read the books directly, without making futures at all. The
    futures of a `map` over a generator span several jobs, one per part of the input (`job_ids`).
    """

    __slots__ = ("_parts", "_starts")

    def __init__(self, parts: Iterable[tuple[CallBook, Sequence[int]]] = ()) -> None:
        self._parts = [(book, ids) for book, ids in parts if len(ids)]
        self._starts = list(itertools.accumulate((len(ids) for _, ids in self._parts), initial=0))

    @classmethod
    def of(cls, book: CallBook) -> Futures:
        """The futures of every call in a book."""
        return cls([(book, range(len(book)))])

    @classmethod
    def chain(cls, sequences: Iterable[Futures]) -> Futures:
        """The futures of several sequences, one after the other."""
        return cls(part for futures in sequences for part in futures._parts)

    @property
    def job_ids(self) -> list[str]:
        """The jobs these calls belong to, in order (one, unless the input was streamed in parts)."""
        return list(dict.fromkeys(book.layout.job_id for book, _ in self._parts))

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self._slice(range(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("futures index out of range")
        book, call_id = self._locate(index)
        return book.future(call_id)

    def _locate(self, index: int) -> tuple[CallBook, int]:
        """The book and call id of the future at ``index`` (from 0)."""
        k = bisect.bisect_right(self._starts, index) - 1
        book, ids = self._parts[k]
        return book, ids[index - self._starts[k]]

    def _slice(self, positions: range) -> Futures:
        if positions.step != 1:
            runs: list[tuple[CallBook, list[int]]] = []
            for p in positions:
                book, call_id = self._locate(p)
                if not runs or runs[-1][0] is not book:
                    runs.append((book, []))
                runs[-1][1].append(call_id)
            return Futures(runs)
        return Futures((book, ids[max(0, positions.start - start):max(0, positions.stop - start)])
                       for (book, ids), start in zip(self._parts, self._starts))

    def __iter__(self) -> Iterator[ResponseFuture]:
        for book, ids in self._parts:
            future = book.future
            for call_id in ids:
                yield future(call_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Futures, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __add__(self, other: Iterable[ResponseFuture]) -> list[ResponseFuture]:
        return [*self, *other]

    def __radd__(self, other: Iterable[ResponseFuture]) -> list[ResponseFuture]:
        return [*other, *self]

    def __reduce__(self) -> tuple:
        """Pickle as the list of futures it stands for (each one as its call's identity)."""
        return list, (list(self),)

    def __repr__(self) -> str:
        """As a list's, unless that would be long."""
        if len(self) <= _REPR_CALLS:
            return repr(list(self))
        return f"<Futures of {len(self):,} calls of job {', '.join(self.job_ids)}>"

    def cancel(self) -> int:
        """Cancel every call here that no worker has taken yet; return how many."""
        return sum(book.cancel(ids) for book, ids in self._parts)

    def result(self, timeout: float | None = None) -> list[Any]:
        """Every call's result, in order (a call that returns futures is resolved as `ResponseFuture.result`)."""
        return get_all_results(self, timeout=timeout, progress=False)

    def _open_count(self) -> int:
        return sum(book.open_count(ids) for book, ids in self._parts)

    def _wait_ended(self, timeout: float | None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        return all(book.wait_ended(ids, None if end is None else end - time.monotonic()) for book, ids in self._parts)

    def _split(self) -> DoneAndNotDone:
        """The calls that have ended and those that have not, in order."""
        if all(book.open_from(ids) is None for book, ids in self._parts):
            return DoneAndNotDone(self, Futures())
        done, not_done = [], []
        for book, ids in self._parts:
            states = book.states
            done.append((book, [i for i in ids if states[i] > _B_RUNNING]))
            not_done.append((book, [i for i in ids if states[i] <= _B_RUNNING]))
        return DoneAndNotDone(Futures(done), Futures(not_done))

    def _failed(self) -> int:
        return sum(book.count(ids, _B_FAILED) for book, ids in self._parts)

    def _wait_all(self, timeout: float | None, progress: bool | None) -> DoneAndNotDone:
        """`wait` for all of them, on their books: woken once per group of calls finished."""
        if progress is None and self._parts:
            progress = self._parts[0][0].progress
        bar = _progress_bar(self, progress)
        if bar is None:
            self._wait_ended(timeout)
            return self._split()
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                ended = self._wait_ended(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
                bar.set_postfix(failed=self._failed(), refresh=False)
                bar.update(len(self) - self._open_count() - bar.n)
                if ended or (end is not None and time.monotonic() >= end):
                    break
        finally:
            bar.close()
        outcome = self._split()
        print(f"burstmap: {len(outcome.done)} of {len(self)} calls done ({outcome.done._failed()} failed) in "
              f"{bar.format_dict['elapsed']:.1f}s", file=sys.stderr)
        return outcome

    def _results(self, return_exceptions: bool) -> list[Any]:
        """The results of calls that have all ended, read from their books; only unusual ones make their future."""
        results: list[Any] = []
        for book, ids in self._parts:
            states, values = book.states, book.values
            if not book.unusual and isinstance(ids, range) and ids.step == 1 and book.count(ids, _B_OK) == len(ids):
                results += values[ids.start:ids.stop]
                continue
            for i in ids:
                if states[i] == _B_OK and not _resolves(values[i]):
                    results.append(values[i])
                    continue
                future = book.future(i)
                results.append((future.exception() or future.result()) if return_exceptions else future.result())
        return results

    def _consume(self, index: int, timeout: float | None) -> Any:
        """One call's result, its call cancelled if it does not come in time; then its book forgets it. For
        iterators over futures that nobody else holds (`Executor.imap`), so that results are not kept."""
        book, call_id = self._locate(index)
        future = book.future(call_id)
        try:
            return future.result(timeout)
        finally:
            future.cancel()
            book.forget(call_id)


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

    done: Sequence
    not_done: Sequence


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

    Returns ``(done, not_done)`` as `concurrent.futures.wait` does, but as sequences in the order the
    futures were given, as PyWren did (code indexes them); never raises a call's error. The futures of
    one `map` are waited for on their job's book, without making a future per call.
    """
    if isinstance(futures, Futures) and return_when != ANY_COMPLETED:
        return futures._split() if return_when == ALWAYS else futures._wait_all(timeout, progress)
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
    if not isinstance(futures, Futures):
        futures = list(futures)
    done, not_done = wait(futures, ALL_COMPLETED, timeout=timeout, progress=progress)
    if not_done:
        raise cf.TimeoutError(f"{len(not_done)} of {len(futures)} calls not finished after {timeout}s")
    if isinstance(futures, Futures):
        return futures._results(return_exceptions)
    if not return_exceptions:
        return [f.result() for f in futures]
    return [f.exception() or f.result() for f in futures]


def as_completed(futures: Iterable[cf.Future], timeout: float | None = None) -> Iterator[cf.Future]:
    """Yield futures as their calls finish, like `concurrent.futures.as_completed`."""
    return cf.as_completed(futures, timeout=timeout)
