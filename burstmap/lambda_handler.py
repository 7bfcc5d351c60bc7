"""The AWS Lambda entry point, ``burstmap.lambda_handler.handler``, and the event it takes.

An event is ``{"burstmap": version, "python": "3.11", "store": {bucket, endpoint_url, region},
"batch": "<signed batch>"}``: where the store is, and the calls to run as one signed `Batch`.
Credentials never travel: the function's IAM role reaches S3, and the HMAC key comes from the
function's ``BURSTMAP_SECRET_KEY`` variable. An event whose batch does not verify with that key, or
that comes from another burstmap or Python version, runs nothing: each call it names gets a
``rejected`` record, signed with the function's key, that tells the client why.

Each call runs in a child process of the invocation (`burstmap.child.CallProcess`, kept warm with
the container), so that a call past its limit is stopped whatever it does, even holding the GIL in
C code, together with every process it started. Lambda allows subprocesses and pipes (not
``/dev/shm``, so no `multiprocessing` queues), which is all `CallProcess` uses. A call's limit is its
job's timeout or the function's remaining time less a margin, whichever is sooner; a call stopped at
it is recorded as ``timeout``, naming the limit it hit, unless only the remaining time stopped it and
earlier calls had used some of it. A call whose process died runs again within the invocation as
`Attempts` decides. Calls of the batch left without time are marked in the store as left on purpose
(`Attempts.end_by_timeout`), and the client's monitor invokes them again without blaming any.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import __version__
from .versions import mismatch
from .attempts import Attempts
from .aws import LambdaError
from .child import CallProcess
from .errors import CallTimeoutError, ConfigError, PayloadRejectedError, StorageError
from .job import Batch, CallState, Record, Task, call_name
from .storage.patient import Patient
from .storage.s3 import S3Storage
from .worker import Handler

__all__ = ["MAX_EVENT_BYTES", "PYTHON", "handler", "make_event"]

log = logging.getLogger(__name__)

#: The largest event an asynchronous invocation accepts.
MAX_EVENT_BYTES = 256 * 1024
#: The Python minor version of this process: pickles load only on the version that made them.
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
_MARGIN = 1.0  # seconds kept at the end of an invocation to write the last record (at most 10% of it)


def make_event(store: S3Storage, batch: Batch, key: bytes) -> bytes:
    """The JSON event of one invocation: where the store is and the signed batch, never a secret.

    Raises:
        LambdaError: the event would be larger than Lambda accepts.
    """
    event = {
        "burstmap": __version__,
        "python": PYTHON,
        "store": {"bucket": store.bucket, "endpoint_url": store.endpoint_url, "region": store.region},
        "batch": batch.encode(key).decode(),
    }
    payload = json.dumps(event, separators=(",", ":")).encode()
    if len(payload) > MAX_EVENT_BYTES:
        raise LambdaError(f"an event of {len(batch.tasks)} calls is {len(payload)} bytes, over Lambda's "
                          f"{MAX_EVENT_BYTES // 1024} KiB limit; lower calls_per_invoke")
    return payload


@dataclass(frozen=True)
class _Invocation:
    """The invocation a call runs in, as its records tell it; picklable, so the call's process annotates too."""

    request_id: str
    memory_mb: int
    deadline: float  # the `time.time` at which the function's time runs out

    @classmethod
    def of(cls, context: Any) -> _Invocation:
        """The invocation Lambda's ``context`` describes."""
        remaining = context.get_remaining_time_in_millis() / 1000
        return cls(context.aws_request_id, int(context.memory_limit_in_mb), time.time() + remaining)

    def remaining(self) -> float:
        """Seconds left before Lambda ends the invocation."""
        return self.deadline - time.time()

    def annotate(self, record: Record) -> None:
        """Add Lambda's request id, memory, the call's billed time and the time left to the record's ``info``."""
        now = time.time()
        record.info.update(
            aws_request_id=self.request_id,
            memory_mb=self.memory_mb,
            billed_ms=max(1, int((now - record.start) * 1000)),
            remaining_ms=max(0, int((self.deadline - now) * 1000)),
        )


class _LambdaHandler(Handler):
    """Runs the calls of each invocation in the container's call process, and records the ones it stops."""

    def __init__(self, storage: Patient, key: bytes) -> None:
        super().__init__(storage, key, f"lambda:{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', 'burstmap')}")
        self.attempts = Attempts(storage, key, self.worker)
        self.calls = CallProcess(storage, key, self.worker)
        self.invocation = _Invocation("", 0, 0.0)

    def serve(self, batch: Batch, context: Any) -> None:
        """Run the calls of one invocation in order while it has time left for them."""
        self.invocation = _Invocation.of(context)
        margin = min(_MARGIN, self.invocation.remaining() / 10)
        for i, task in enumerate(batch.tasks):
            if not self._run_to_end(batch, task, margin, first=i == 0):
                self.attempts.end_by_timeout(batch, 1, task.call_id)
                return

    def _run_to_end(self, batch: Batch, task: Task | None, margin: float, first: bool) -> bool:
        """Run a call until it has a final outcome; ``False`` if the invocation has no time left for it.

        A call stopped by the function's remaining time is recorded as ``timeout`` only when it had
        the whole invocation (it is the ``first``): a later one is sent again in an invocation of its own.

        Raises:
            StorageError: the store stayed unreachable past its outage limit; the client's monitor
                sends the calls again.
        """
        while task is not None:
            self.calls.start()
            left = self.invocation.remaining() - margin
            if left <= 0:
                return False
            limit = min(left, batch.timeout or left)
            start = time.time()
            ended = self.calls.run(task, limit, self.invocation.annotate)
            if ended.how == "died":
                task = self.attempts.died(task, batch.worker_retries, "its process on Lambda", ended.detail, start)
                continue
            if ended.how == "outage":
                raise StorageError(f"the store stayed unreachable while call {task.job_id}/"
                                   f"{call_name(task.call_id)} ran ({ended.detail})")
            if ended.how == "timeout":
                own = limit == batch.timeout
                if not (own or first):
                    return False
                self._stopped(task, f"its timeout of {limit:g}s" if own else
                              f"the function's remaining time ({limit:.1f}s)", start)
            return True
        return True

    def _stopped(self, task: Task, why: str, start: float) -> None:
        """A ``timeout`` record for a call stopped at ``why``, unless it finished first."""
        if not self.attempts.is_final(task):
            error = CallTimeoutError(f"call {task.job_id}/{call_name(task.call_id)} ran past {why} on Lambda "
                                     "and was stopped")
            self.write_failure(task, CallState.TIMEOUT, error, start)

    def verify(self, blob: bytes) -> Batch:
        """The batch an event carries, verified with the function's key; `PayloadRejectedError` otherwise."""
        return Batch.decode(self._key, blob)

    def refuse(self, blob: bytes, reason: str) -> None:
        """Run nothing; record each call the event names as ``rejected`` with ``reason``."""
        claimed = Batch.peek(blob)
        log.warning("burstmap: refused a batch of %s: %s", claimed.job_id if claimed else "unknown calls", reason)
        if claimed is not None:
            self.attempts.rejected(list(claimed.tasks), reason)

    def annotate(self, task: Task, record: Record) -> None:
        """Add the invocation's facts to the records this handler writes (of calls it stopped)."""
        self.invocation.annotate(record)


_handlers: dict[tuple, _LambdaHandler] = {}


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point: verify the event's batch with the function's key and run its calls.

    The handler, its store client and its cached functions live on in a warm container.
    """
    secret = os.environ.get("BURSTMAP_SECRET_KEY")
    if not secret:
        raise ConfigError("the function has no BURSTMAP_SECRET_KEY variable; redeploy with: burstmap lambda deploy")
    worker = _handler(event["store"], secret)
    blob = str(event.get("batch", "")).encode()
    stale = _mismatch(event)
    if stale:
        worker.refuse(blob, stale)
        return {"calls": 0, "error": stale}
    try:
        batch = worker.verify(blob)
    except PayloadRejectedError as e:
        reason = f"{e}; is the function's BURSTMAP_SECRET_KEY the same as the client's?"
        worker.refuse(blob, reason)
        return {"calls": 0, "error": reason}
    reason = mismatch(batch.versions, who="the deployed function")
    if reason:
        worker.refuse(blob, reason)
        return {"calls": 0, "error": reason}
    worker.serve(batch, context)
    return {"calls": len(batch.tasks)}


def _handler(store: dict[str, Any], secret: str) -> _LambdaHandler:
    """The warm container's handler for a store (one per store and key)."""
    cache_key = (store["bucket"], store.get("endpoint_url"), store.get("region"), secret)
    worker = _handlers.get(cache_key)
    if worker is None:
        storage = S3Storage(store["bucket"], endpoint_url=store.get("endpoint_url"), region=store.get("region"))
        worker = _handlers[cache_key] = _LambdaHandler(Patient(storage), secret.encode())
    return worker


def _mismatch(event: dict[str, Any]) -> str | None:
    """Why an event from another burstmap or Python version cannot run here, or ``None``."""
    if event.get("burstmap") == __version__ and event.get("python") == PYTHON:
        return None
    return (f"the client runs burstmap {event.get('burstmap')} on Python {event.get('python')}, but the deployed "
            f"function runs burstmap {__version__} on Python {PYTHON}; redeploy it with: burstmap lambda deploy "
            f"--runtime python{event.get('python')}")
