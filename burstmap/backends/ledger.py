"""Re-running a batch whose worker vanished: which calls remain, and their attempt numbers.

Some backends can only deliver a batch again as a whole (a Dask task rescheduled after its worker
died, a queue message reclaimed after its lease expired) and cannot see which call the dead worker
was running. Calls of a batch run in order and each writes its status last, so the first call
without a status when a delivery begins is the one the previous delivery was running when it
vanished. Each delivery leaves a small marker in the store naming that call; a call's attempt
number is one more than the deaths blamed on it, and a call blamed more than ``max_retries`` times
gets a ``died`` record instead of another run.

A delivery that ended on purpose (a timeout that stopped its worker) says so in its marker, and
the call after the stopped one is then not blamed. A worker that vanishes *between* two calls gets
the next call blamed: an extra attempt, never a lost call.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

from ..errors import KeyNotFoundError, WorkerDiedError
from ..job import CHUNK, CallState, Layout, call_ids_of, call_name
from ..storage.base import Storage
from ..worker import Handler, Task

__all__ = ["Ledger"]


class Ledger:
    """The deliveries of one batch of tasks (all of one job), kept as markers beside its statuses."""

    def __init__(self, storage: Storage, key: bytes, tasks: Sequence[Task], max_retries: int, worker: str) -> None:
        self.storage = storage
        self.tasks = list(tasks)
        self.max_retries = max_retries
        self._key = key
        self._worker = worker
        self._layout = Layout(self.tasks[0].prefix, self.tasks[0].job_id)
        self._first = self.tasks[0].call_id

    def _marker(self, n: int) -> dict | None:
        try:
            return json.loads(self.storage.get(self._layout.delivery(self._first, n)))
        except KeyNotFoundError:
            return None

    def _write(self, n: int, resume: int, ended: str | None = None) -> None:
        body = json.dumps({"resume": resume, "ended": ended, "at": time.time()}).encode()
        self.storage.put(self._layout.delivery(self._first, n), body)

    def next_delivery(self) -> int:
        """Count the deliveries so far by their markers (for backends that cannot count them)."""
        n = 1
        while self._marker(n) is not None:
            n += 1
        return n

    def begin(self, delivery: int, mark: bool = True) -> list[Task]:
        """Start delivery ``delivery``: return the tasks still to run, with their attempt numbers.

        Delivery 1 runs every task and costs nothing unless ``mark`` asks for its marker (needed
        when deliveries are counted by `next_delivery`). A later one lists the batch's statuses,
        writes its marker, and writes a ``died`` record for a call out of retries.
        """
        if delivery <= 1:
            if mark:
                self._write(1, self._first)
            return self.tasks
        todo = self.unfinished()
        if not todo:
            return []
        first = todo[0]
        self._write(delivery, first.call_id)
        deaths = self._deaths(delivery, first.call_id)
        if deaths == 0:
            return todo
        if deaths > self.max_retries:
            self._record_death(dataclasses.replace(first, attempt=deaths))
            return todo[1:]
        return [dataclasses.replace(first, attempt=deaths + 1), *todo[1:]]

    def end_by_timeout(self, delivery: int, resume: int) -> None:
        """Mark delivery ``delivery`` as ended on purpose, so the next one blames no call for it."""
        self._write(delivery, resume, ended="timeout")

    def unfinished(self) -> list[Task]:
        """The tasks of the batch whose call has no status record yet."""
        chunks = {self._layout.status_chunk(t.call_id // CHUNK) for t in self.tasks}
        done = {i for chunk in chunks for key in self.storage.list(chunk) for i in call_ids_of(key) or ()}
        return [t for t in self.tasks if t.call_id not in done]

    def _deaths(self, delivery: int, call_id: int) -> int:
        """How many earlier deliveries vanished while running ``call_id``."""
        markers = [self._marker(n) for n in range(1, delivery)]
        resumes = [m["resume"] if m else None for m in markers[1:]] + [call_id]
        return sum(
            1 for marker, died_at in zip(markers, resumes)
            if died_at == call_id and not (marker and marker.get("ended"))
        )

    def _record_death(self, task: Task) -> None:
        error = WorkerDiedError(
            f"call {task.job_id}/{call_name(task.call_id)}: its worker died (or vanished) while running it, "
            f"in attempt {task.attempt} of {self.max_retries + 1}"
        )
        Handler(self.storage, self._key, self._worker).write_failure(task, CallState.DIED, error, time.time())
