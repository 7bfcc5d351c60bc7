"""The one attempts policy: what becomes of a call whose delivery did not end normally, on every backend.

Backends only report what they saw: the delivery ended while a call ran (its process died, its
invocation vanished), a call passed its deadline, a payload was refused. This module turns each
report into a re-run or a final ``died`` / ``timeout`` / ``rejected`` record, written with one
message format. A call whose status is already durable is final: it is never blamed, re-run or
overwritten (a worker killed right after writing a status did not die *in* that call).

Worker deaths are budgeted by the job's ``worker_retries`` (a call runs at most ``worker_retries + 1``
times); exceptions a call raises are a separate, opt-in budget (``map(..., retries=)``).

Some transports can only deliver a batch again as a whole (a Dask task rescheduled after its worker
died, a queue message whose lease ran out) and cannot see which call the lost delivery was running.
Calls of a batch run in order and each writes its status last, so the first call without a status
when a delivery begins is the one the previous delivery was running when it vanished. Each
re-delivery leaves a small marker in the store naming that call (`begin`); a call's attempt number
is one more than the deliveries lost while it ran. A delivery that ended on purpose (a timeout that
stopped its worker) says so in its marker (`end_by_timeout`), and then no call is blamed for it.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Sequence

from .errors import CallTimeoutError, KeyNotFoundError, PayloadRejectedError, WorkerDiedError
from .job import Batch, CallState, Layout, Task, call_name, finished_calls
from .storage.base import Storage
from .versions import mismatch
from .worker import Handler

__all__ = ["Attempts", "OUTAGE_EXIT", "how_it_ended"]

#: The exit code of a worker process that gave up on a store unreachable past its outage limit:
#: an outage, never a death, so nobody is blamed and its calls run again.
OUTAGE_EXIT = 75


def how_it_ended(exitcode: int | None) -> str:
    """A process's end in words: ``killed by SIGKILL``, ``exit code 3``."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class Attempts:
    """Decides re-runs and writes final records for the calls a backend (or a worker) reports on."""

    def __init__(self, storage: Storage, key: bytes, worker: str) -> None:
        self._handler = Handler(storage, key, worker)
        self.storage = self._handler.storage  # waits out store outages, as the handler does
        self.worker = worker

    def remaining(self, batch: Batch) -> list[Task]:
        """The tasks of a batch whose call has no durable status yet (a re-delivery runs only these)."""
        done = finished_calls(self.storage, Layout(batch.prefix, batch.job_id), (t.call_id for t in batch.tasks))
        return [t for t in batch.tasks if t.call_id not in done]

    def begin(self, batch: Batch, delivery: int | None = None) -> list[Task]:
        """Start a delivery of ``batch``: the tasks still to run, with their attempt numbers.

        A batch of a job submitted on other Python, cloudpickle or burstmap versions runs nothing:
        each call gets a ``rejected`` record naming both sides' versions.

        ``delivery`` is the transport's count (a queue's delivery count), or ``None`` to count the
        deliveries through their markers (Dask). A first delivery costs no store operation when the
        transport counts; a later one lists the batch's statuses, writes its marker, and settles the
        call the lost delivery died in (a re-run, or a ``died`` record once out of retries).
        """
        refusal = mismatch(batch.versions)
        if refusal:
            self.rejected(list(batch.tasks), refusal)
            return []
        layout = Layout(batch.prefix, batch.job_id)
        if delivery is None:
            delivery = 1
            while self._marker(layout, batch, delivery) is not None:
                delivery += 1
            if delivery == 1:
                self._mark(layout, batch, 1, batch.tasks[0].call_id)
                return list(batch.tasks)
        elif delivery <= 1:
            return list(batch.tasks)
        todo = self.remaining(batch)
        if not todo:
            return []
        first = todo[0]
        self._mark(layout, batch, delivery, first.call_id)
        lost = self._lost_in(layout, batch, delivery, first.call_id)
        if lost == 0:
            return todo
        retry = self.died(first._replace(attempt=lost), batch.worker_retries,
                          "the worker that held its batch", "it vanished")
        return ([retry] if retry else []) + todo[1:]

    def end_by_timeout(self, batch: Batch, delivery: int, call_id: int) -> None:
        """Mark a delivery as ended on purpose at ``call_id``, so the next one blames no call for it."""
        self._mark(Layout(batch.prefix, batch.job_id), batch, delivery, call_id, ended="timeout")

    def ended_on_purpose(self, batch: Batch, delivery: int = 1) -> bool:
        """Whether a delivery of ``batch`` said it stopped on purpose (`end_by_timeout`): nobody died."""
        marker = self._marker(Layout(batch.prefix, batch.job_id), batch, delivery)
        return bool(marker and marker.get("ended"))

    def _marker(self, layout: Layout, batch: Batch, n: int) -> dict | None:
        try:
            return json.loads(self.storage.get(layout.delivery(batch.delivery, n)))
        except KeyNotFoundError:
            return None

    def _mark(self, layout: Layout, batch: Batch, n: int, resume: int, ended: str | None = None) -> None:
        body = json.dumps({"resume": resume, "ended": ended, "at": time.time()}).encode()
        self.storage.put(layout.delivery(batch.delivery, n), body)

    def _lost_in(self, layout: Layout, batch: Batch, delivery: int, call_id: int) -> int:
        """How many earlier deliveries vanished while running ``call_id``."""
        markers = [self._marker(layout, batch, n) for n in range(1, delivery)]
        resumes = [m["resume"] if m else None for m in markers[1:]] + [call_id]
        return sum(1 for marker, died_at in zip(markers, resumes)
                   if died_at == call_id and not (marker and marker.get("ended")))

    def is_final(self, task: Task) -> bool:
        """Whether the call already has a durable status."""
        return task.call_id in finished_calls(self.storage, Layout(task.prefix, task.job_id), (task.call_id,))

    def died(self, task: Task, worker_retries: int, where: str, how: str, start: float | None = None) -> Task | None:
        """The delivery ended while ``task`` ran: the next attempt to run, or ``None`` (a ``died`` record written).

        Returns ``None`` without writing anything when the call's status is already durable.
        """
        if self.is_final(task):
            return None
        if task.attempt <= worker_retries:
            return task._replace(attempt=task.attempt + 1)
        error = WorkerDiedError(
            f"call {task.job_id}/{call_name(task.call_id)}: {where} died ({how}) while running it, "
            f"in attempt {task.attempt} of {worker_retries + 1}"
        )
        self._write(task, CallState.DIED, error, start)
        return None

    def timed_out(self, task: Task, timeout: float, where: str, start: float | None = None) -> None:
        """``task`` ran past its timeout and was stopped: a ``timeout`` record, unless it finished first."""
        if self.is_final(task):
            return
        error = CallTimeoutError(
            f"call {task.job_id}/{call_name(task.call_id)} ran past its timeout of {timeout:g}s and "
            f"{where} was stopped"
        )
        self._write(task, CallState.TIMEOUT, error, start)

    def rejected(self, tasks: Sequence[Task], reason: str) -> None:
        """This worker refused a batch it could not verify: a ``rejected`` record for each call without a status.

        The record is signed with this worker's key; a client with another key cannot verify it and
        says so (see `burstmap.job.Record.decode`), which is how a key mismatch reaches the user.
        """
        if not tasks:
            return
        done = finished_calls(self.storage, Layout(tasks[0].prefix, tasks[0].job_id), (t.call_id for t in tasks))
        error = PayloadRejectedError(f"worker {self.worker} refused the call: {reason}")
        for task in tasks:
            if task.call_id not in done:
                self._write(task, CallState.REJECTED, error, None)

    def failed(self, tasks: Sequence[Task], error: BaseException, state: CallState = CallState.ERROR) -> None:
        """Calls that could not be delivered at all (the transport refused them): a final record each."""
        for task in tasks:
            self._write(task, state, error, None)

    def _write(self, task: Task, state: CallState, error: BaseException, start: float | None) -> None:
        self._handler.write_failure(task, state, error, time.time() if start is None else start)
