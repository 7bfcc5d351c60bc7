"""The AWS Lambda entry point, ``burstmap.lambda_handler.handler``, and the event it takes.

An event is ``{"burstmap": version, "python": "3.11", "store": {bucket, endpoint_url, region},
"batch": "<signed batch>"}``: where the store is, and the calls to run as one signed `Batch`.
Credentials never travel: the function's IAM role reaches S3, and the HMAC key comes from the
function's ``BURSTMAP_SECRET_KEY`` variable. An event whose batch does not verify with that key, or
that comes from another burstmap or Python version, runs nothing: each call it names gets a
``rejected`` record, signed with the function's key, that tells the client why.

A call that would outlive the invocation (or its job's timeout) is stopped by SIGALRM a little
before the end and recorded as ``timeout``; calls of the batch left without time are left to the
client's monitor, which invokes them again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import Any

from . import __version__
from .attempts import Attempts
from .aws import LambdaError
from .errors import CallTimeoutError, ConfigError, PayloadRejectedError
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


class _LambdaHandler(Handler):
    """The worker handler with Lambda's request id, memory and billed time in each record's ``info``."""

    def __init__(self, storage: Patient, key: bytes) -> None:
        super().__init__(storage, key, f"lambda:{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', 'burstmap')}")
        self.attempts = Attempts(storage, key, self.worker)
        self.context: Any = None
        self._call_began = 0
        self._limit = (0.0, False)

    def serve(self, batch: Batch, context: Any) -> None:
        """Run the calls of one invocation in order, each under an alarm set to the time it may take."""
        self.context = context
        margin = min(_MARGIN, context.get_remaining_time_in_millis() / 10000)
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            for task in batch.tasks:
                left = context.get_remaining_time_in_millis() / 1000 - margin
                if left <= 0:
                    return
                self._run_until(task, min(left, batch.timeout) if batch.timeout else left, batch.timeout)
        finally:
            signal.signal(signal.SIGALRM, previous)

    def _run_until(self, task: Task, limit: float, timeout: float | None) -> None:
        self._call_began = self.context.get_remaining_time_in_millis()
        self._limit = (limit, bool(timeout) and limit >= timeout)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            self.run_task(task)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

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
        """Turn a call stopped by the alarm into a ``timeout``; add Lambda's request id, memory and billed time."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        error = record.error or {}
        if record.state is CallState.ERROR and error.get("type") == f"{_Alarm.__module__}.{_Alarm.__qualname__}":
            limit, own = self._limit
            why = f"its timeout of {limit:g}s" if own else f"the function's remaining time ({limit:.1f}s)"
            record.state = CallState.TIMEOUT
            record.error = {**error, "type": "burstmap.errors.CallTimeoutError",
                            "message": f"call {task.job_id}/{call_name(task.call_id)} ran past {why} on Lambda "
                                       "and was stopped"}
            record.output = b""
        remaining = self.context.get_remaining_time_in_millis()
        record.info.update(
            aws_request_id=self.context.aws_request_id,
            memory_mb=int(self.context.memory_limit_in_mb),
            billed_ms=max(1, self._call_began - remaining) if self._call_began else 1,
            remaining_ms=remaining,
        )


class _Alarm(CallTimeoutError):
    """Raised inside a call by SIGALRM when it reaches its time limit."""


def _alarm(signum: int, frame: Any) -> None:
    raise _Alarm("the call reached its time limit on Lambda (the job's timeout, or the function's "
                 "remaining time) and was stopped")


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
    mismatch = _mismatch(event)
    if mismatch:
        worker.refuse(blob, mismatch)
        return {"calls": 0, "error": mismatch}
    try:
        batch = worker.verify(blob)
    except PayloadRejectedError as e:
        reason = f"{e}; is the function's BURSTMAP_SECRET_KEY the same as the client's?"
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
