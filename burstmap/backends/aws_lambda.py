"""The AWS Lambda backend, and the Lambda entry point that runs its calls.

The client puts inputs in an S3 store and invokes the deployed function asynchronously
(``InvocationType='Event'``) with a small JSON event: the store's bucket/endpoint/region, the job,
and a batch of ``(call_id, start, end, attempt)``. Credentials never travel: on Lambda the function's
IAM role reaches S3 and the HMAC key comes from the function's ``BURSTMAP_SECRET_KEY`` variable.

A monitor thread lists the statuses of in-flight invocations; it frees their concurrency slots, and
re-invokes (up to the job's ``max_retries``) or records as ``timeout`` calls whose status is still
missing after the function's timeout plus a grace period. Inside the function, `handler` stops a call
that would outlive the invocation and records it as ``timeout`` itself.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    NoCredentialsError,
    NoRegionError,
)

from .. import __version__
from ..errors import BurstmapError, CallTimeoutError, ConfigError, WorkerDiedError
from ..stats import PRICE_PER_GB_SECOND, gb_seconds
from ..job import CHUNK, CallState, Manifest, Record, call_name, call_ids_of
from ..storage.base import Storage
from ..storage.s3 import S3Storage
from ..worker import Handler, Task
from .base import Backend

__all__ = [
    "LambdaBackend",
    "LambdaError",
    "VersionMismatchError",
    "BotoInvoker",
    "Invoker",
    "Cost",
    "estimate_cost",
    "with_backoff",
    "explain",
    "handler",
    "lambda_client",
    "MAX_EVENT_BYTES",
    "PRICE_PER_GB_SECOND",
]

#: The largest event an asynchronous invocation accepts.
MAX_EVENT_BYTES = 256 * 1024
_MAX_CALLS_PER_INVOKE = 1000  # keeps any event far below MAX_EVENT_BYTES (about 60 bytes per call)
_TRANSIENT = {
    "TooManyRequestsException", "ThrottlingException", "Throttling", "ServiceException",
    "EC2ThrottledException", "ENILimitReachedException", "RequestTimeout", "InternalFailure",
}
_MARGIN = 1.0  # seconds kept at the end of an invocation to write the last record (at most 10% of it)


class LambdaError(BurstmapError):
    """The Lambda control plane refused a request, or an invocation could not be made."""


class VersionMismatchError(BurstmapError):
    """The deployed function runs another burstmap or Python version than the client."""


class Invoker(Protocol):
    """Starts one asynchronous invocation of the function with an event; returns at once."""

    def invoke(self, payload: bytes) -> None: ...


def with_backoff(action: Callable[[], Any], retryable: Callable[[Exception], bool], attempts: int = 8,
                 base: float = 0.1, cap: float = 20.0, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``action``; on a retryable error sleep a random time up to ``base * 2**n`` (capped) and retry.

    "Full jitter" spreads the retries of many threads apart, so a throttled burst does not return
    as one. The last error is raised when ``attempts`` are used up.
    """
    for n in range(attempts - 1):
        try:
            return action()
        except Exception as e:
            if not retryable(e):
                raise
        sleep(random.uniform(0, min(cap, base * 2 ** n)))
    return action()


def _error_code(error: Exception) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return type(error).__name__


def _transient(error: Exception) -> bool:
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return _error_code(error) in _TRANSIENT or status >= 500
    return isinstance(error, BotoConnectionError)


def lambda_client(region: str | None, endpoint_url: str | None, service: str = "lambda") -> Any:
    """A boto3 client for Lambda (or IAM) with botocore's own retries off: burstmap backs off itself.

    Raises:
        ConfigError: no region is configured, or the region is not one where Lambda runs.
    """
    session = boto3.session.Session(region_name=region)
    if service == "lambda" and endpoint_url is None and session.region_name:
        known = session.get_available_regions("lambda") + session.get_available_regions("lambda", "aws-us-gov") \
            + session.get_available_regions("lambda", "aws-cn")
        if session.region_name not in known:
            raise ConfigError(f"unknown AWS region {session.region_name!r} for Lambda; e.g. us-east-1, eu-west-1")
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=70,
                    max_pool_connections=64)
    try:
        return session.client(service, endpoint_url=endpoint_url, config=config)
    except NoRegionError:
        raise ConfigError("no AWS region: pass region= or set AWS_DEFAULT_REGION") from None


def explain(error: Exception, function_name: str, where: str) -> LambdaError | ConfigError:
    """One line that says what went wrong with a Lambda or IAM request, without any secret."""
    if isinstance(error, NoCredentialsError):
        return ConfigError("no AWS credentials found: run `aws configure`, or set AWS_PROFILE or "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(error, BotoConnectionError):
        return LambdaError(f"cannot reach Lambda {where}: {type(error).__name__}")
    code = _error_code(error)
    if code == "ResourceNotFoundException":
        return ConfigError(f"Lambda function {function_name!r} is not deployed {where}; "
                           f"deploy it with: burstmap lambda deploy --function-name {function_name}")
    if code in {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}:
        return ConfigError(f"AWS refused the credentials {where} ({code})")
    if code in {"AccessDeniedException", "AccessDenied"}:
        return ConfigError(f"the AWS credentials may not use Lambda function {function_name!r} {where} ({code})")
    message = error.response.get("Error", {}).get("Message", "") if isinstance(error, ClientError) else ""
    return LambdaError(f"Lambda function {function_name!r} {where}: {code}{': ' + message if message else ''}")


class BotoInvoker:
    """Invokes the deployed function through boto3, backing off on throttling and transient errors."""

    def __init__(self, client: Any, function_name: str, attempts: int = 8,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.function_name = function_name
        self.attempts = attempts
        self._sleep = sleep

    def invoke(self, payload: bytes) -> None:
        """Queue one asynchronous invocation; raise `LambdaError` or `ConfigError` if it cannot be."""
        try:
            with_backoff(
                lambda: self.client.invoke(FunctionName=self.function_name, InvocationType="Event", Payload=payload),
                _transient, self.attempts, sleep=self._sleep,
            )
        except (ClientError, BotoCoreError) as e:
            raise explain(e, self.function_name, "on invoke") from None


@dataclass(eq=False)
class _Invocation:
    """One batch of tasks sent in one event, and which of them have no status yet."""

    manifest: Manifest
    tasks: list[Task]
    missing: set[int] = field(default_factory=set)
    deadline: float = math.inf

    def __post_init__(self) -> None:
        self.missing = {task.call_id for task in self.tasks}


class LambdaBackend(Backend):
    """Runs calls as asynchronous invocations of a deployed Lambda function; needs an `S3Storage`.

    Args:
        function_name: the deployed function (see ``burstmap lambda deploy``).
        region: its AWS region (default: boto3's configuration).
        endpoint_url: a Lambda endpoint other than AWS's (for tests).
        concurrency: most invocations in flight at once.
        calls_per_invoke: calls run one after another in one invocation (batch tiny calls).
        invoke_threads: threads that send invocations.
        timeout: the function's timeout in seconds (default: read from the deployed function).
        grace: seconds past ``timeout`` before a missing status counts as lost.
        poll_interval: seconds between listings of in-flight statuses.
        invoker: sends the events (default: `BotoInvoker`); tests substitute an emulated one.
    """

    name = "lambda"

    def __init__(self, function_name: str = "burstmap", region: str | None = None, endpoint_url: str | None = None,
                 concurrency: int = 100, calls_per_invoke: int = 1, invoke_threads: int = 16,
                 timeout: float | None = None, grace: float = 30.0, poll_interval: float = 1.0,
                 invoker: Invoker | None = None) -> None:
        for label, value in (("concurrency", concurrency), ("calls_per_invoke", calls_per_invoke),
                             ("invoke_threads", invoke_threads)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive integer, not {value!r}")
        if calls_per_invoke > _MAX_CALLS_PER_INVOKE:
            raise ConfigError(f"calls_per_invoke={calls_per_invoke} would make events larger than Lambda's "
                              f"{MAX_EVENT_BYTES // 1024} KiB limit; use at most {_MAX_CALLS_PER_INVOKE}")
        if timeout is not None and not 0 < timeout <= 900:
            raise ConfigError(f"timeout must be 1 to 900 seconds (Lambda's limit), not {timeout!r}")
        self.function_name = function_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.concurrency = concurrency
        self.calls_per_invoke = calls_per_invoke
        self.invoke_threads = invoke_threads
        self.timeout = timeout
        self.grace = grace
        self.poll_interval = poll_interval
        self.memory_mb: int | None = None
        self._invoker = invoker
        self._monitor: _Monitor | None = None
        self._lock = threading.Lock()

    def start(self, storage: Storage, key: bytes) -> None:
        """Check the store is S3 and the function is deployed (one ``get_function``), before any job starts."""
        if not isinstance(storage, S3Storage):
            raise ConfigError(f"the lambda backend needs an S3 store (storage: s3), not {storage!r}")
        super().start(storage, key)
        client = lambda_client(self.region, self.endpoint_url)
        try:
            reply = with_backoff(lambda: client.get_function(FunctionName=self.function_name), _transient, 4)
        except (ClientError, BotoCoreError) as e:
            raise explain(e, self.function_name, f"in {client.meta.region_name}") from None
        configuration = reply["Configuration"]
        self.timeout = self.timeout or float(configuration.get("Timeout", 3))
        self.memory_mb = int(configuration.get("MemorySize", 128))
        if self._invoker is None:
            self._invoker = BotoInvoker(client, self.function_name)

    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        with self._lock:
            if self._monitor is None:
                self._monitor = _Monitor(self)
            monitor = self._monitor
        monitor.add(manifest, call_ids)

    def shutdown(self, wait: bool = True) -> None:
        """Stop sending and watching; invocations already sent run to their end on Lambda."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
        if monitor:
            monitor.close(wait)

    def event(self, manifest: Manifest, tasks: Sequence[Task]) -> bytes:
        """The JSON event of one invocation: where the store is and which calls to run, never a secret."""
        store = self.storage
        assert isinstance(store, S3Storage)
        event = {
            "burstmap": __version__,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "store": {"bucket": store.bucket, "endpoint_url": store.endpoint_url, "region": store.region},
            "prefix": manifest.prefix,
            "job_id": manifest.job_id,
            "timeout": manifest.timeout,
            "calls": [[t.call_id, t.start, t.end, t.attempt] for t in tasks],
        }
        payload = json.dumps(event, separators=(",", ":")).encode()
        if len(payload) > MAX_EVENT_BYTES:
            raise LambdaError(f"an event of {len(tasks)} calls is {len(payload)} bytes, over Lambda's "
                              f"{MAX_EVENT_BYTES // 1024} KiB limit; lower calls_per_invoke")
        return payload

    def __repr__(self) -> str:
        return f"LambdaBackend(function_name={self.function_name!r}, region={self.region!r})"


class _Monitor:
    """Sends batches as invocations within the concurrency cap, and watches their statuses."""

    def __init__(self, backend: LambdaBackend) -> None:
        self._backend = backend
        self._handler = Handler(backend.storage, backend._key, f"lambda-monitor:{os.getpid()}")
        self._pool = ThreadPoolExecutor(backend.invoke_threads, thread_name_prefix="burstmap-invoke")
        self._pending: deque[tuple[Manifest, Task]] = deque()
        self._flying: list[_Invocation] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="burstmap-lambda", daemon=True)
        self._thread.start()

    def add(self, manifest: Manifest, call_ids: Iterable[int]) -> None:
        with self._lock:
            self._pending.extend((manifest, Task(manifest.prefix, manifest.job_id, i, *manifest.data_range(i)))
                                 for i in call_ids)
        self._wake.set()

    def close(self, wait: bool) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _loop(self) -> None:
        while not self._closed:
            self._dispatch()
            if self._flying:
                self._check()
            self._wake.wait(self._backend.poll_interval)
            self._wake.clear()

    def _dispatch(self) -> None:
        backend = self._backend
        with self._lock:
            while self._pending and len(self._flying) < backend.concurrency:
                manifest = self._pending[0][0]
                tasks: list[Task] = []
                while self._pending and len(tasks) < backend.calls_per_invoke and self._pending[0][0] is manifest:
                    tasks.append(self._pending.popleft()[1])
                invocation = _Invocation(manifest, tasks)
                self._flying.append(invocation)
                self._pool.submit(self._send, invocation)

    def _send(self, invocation: _Invocation) -> None:
        backend = self._backend
        try:
            assert backend._invoker is not None
            backend._invoker.invoke(backend.event(invocation.manifest, invocation.tasks))
        except Exception as e:
            start = time.time()
            for task in invocation.tasks:
                self._handler.write_failure(task, CallState.ERROR, e, start)
            self._settle([invocation], [])
            return
        invocation.deadline = time.monotonic() + (backend.timeout or 900) + backend.grace

    def _check(self) -> None:
        """List the statuses of in-flight calls; settle invocations that finished or ran out of time."""
        with self._lock:
            flying = list(self._flying)
        done = self._listed(flying)
        now = time.monotonic()
        finished, retry = [], []
        for invocation in flying:
            invocation.missing -= done.get(invocation.manifest.job_id, set())
            if not invocation.missing:
                finished.append(invocation)
            elif now > invocation.deadline:
                finished.append(invocation)
                retry.extend(self._expired(invocation))
        self._settle(finished, retry)

    def _settle(self, finished: list[_Invocation], retry: list[tuple[Manifest, Task]]) -> None:
        """Free the slots of finished invocations (once each) and queue calls to re-run first."""
        with self._lock:
            self._flying = [invocation for invocation in self._flying if invocation not in finished]
            self._pending.extendleft(reversed(retry))
        if finished:
            self._wake.set()

    def _listed(self, flying: list[_Invocation]) -> dict[str, set[int]]:
        """The call ids with a status, per job: one LIST per status group with calls in flight."""
        groups = {(inv.manifest.job_id, call_id // CHUNK): inv.manifest for inv in flying for call_id in inv.missing}
        done: dict[str, set[int]] = {}
        for (job_id, chunk), manifest in groups.items():
            for key in self._backend.storage.list(manifest.layout.status_chunk(chunk)):
                done.setdefault(job_id, set()).update(call_ids_of(key) or ())
        return done

    def _expired(self, invocation: _Invocation) -> list[tuple[Manifest, Task]]:
        """Calls of an invocation with no status after its deadline: re-run them, or record their death.

        Calls past their own timeout are stopped and recorded inside the function, so an invocation
        that leaves no status crashed (out of memory, killed) or was lost. Calls run in order, so the
        first one without a status is the one it died in: only that one spends an attempt.
        """
        manifest, backend = invocation.manifest, self._backend
        missing = [task for task in invocation.tasks if task.call_id in invocation.missing]
        if not missing:
            return []
        first, rest = missing[0], [(manifest, task) for task in missing[1:]]
        if first.attempt <= manifest.max_retries:
            return [(manifest, Task(**{**first.__dict__, "attempt": first.attempt + 1})), *rest]
        error = WorkerDiedError(
            f"call {manifest.job_id}/{call_name(first.call_id)}: its Lambda invocation died (no status within "
            f"function {backend.function_name!r}'s timeout of {backend.timeout:g}s + {backend.grace:g}s grace) "
            f"in attempt {first.attempt} of {manifest.max_retries + 1}: it crashed, ran out of memory, or was "
            f"lost (see the function's CloudWatch logs)"
        )
        self._handler.write_failure(first, CallState.DIED, error, time.time())
        return rest


class Cost(NamedTuple):
    """What the calls of a job cost in Lambda compute: GB-seconds, and dollars at a given price."""

    gb_seconds: float
    dollars: float


def estimate_cost(records: Iterable[Record], memory_mb: int | None = None,
                  price: float = PRICE_PER_GB_SECOND) -> Cost:
    """GB-seconds of the calls × ``price`` per GB-second (requests and S3 are not counted).

    Each record's billed milliseconds and memory are those the function recorded in ``info``;
    ``memory_mb`` overrides the memory (128 MB when neither says).
    """
    total = sum(gb_seconds(r, memory_mb or r.info.get("memory_mb") or 128) for r in records)
    return Cost(total, total * price)


class _LambdaHandler(Handler):
    """The worker handler with Lambda's request id, memory and billed time in each record's ``info``.

    A call that would outlive the invocation (or its job's timeout) is stopped by SIGALRM a little
    before the end and recorded as ``timeout``; later calls of the batch are left to the client.
    """

    def __init__(self, storage: Storage, key: bytes) -> None:
        super().__init__(storage, key, f"lambda:{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', 'burstmap')}")
        self.context: Any = None
        self._call_began = 0
        self._limit = (0.0, False)

    def serve(self, tasks: list[Task], context: Any, call_timeout: float | None) -> None:
        """Run the tasks of one invocation, each under an alarm."""
        self.context = context
        margin = min(_MARGIN, context.get_remaining_time_in_millis() / 10000)
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            for task in tasks:
                left = context.get_remaining_time_in_millis() / 1000 - margin
                if left <= 0:
                    return
                limit = min(left, call_timeout) if call_timeout else left
                self._call_began = context.get_remaining_time_in_millis()
                self._limit = (limit, bool(call_timeout) and limit >= call_timeout)
                signal.setitimer(signal.ITIMER_REAL, limit)
                try:
                    self.run_task(task)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)

    def refuse(self, tasks: list[Task], context: Any, error: BaseException) -> None:
        """Record every task of an invocation as failed with ``error``, running none of them."""
        self.context, self._call_began = context, 0
        start = time.time()
        for task in tasks:
            self.write_failure(task, CallState.ERROR, error, start)

    def annotate(self, task: Task, record: Record) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        error = record.error or {}
        if record.state is CallState.ERROR and error.get("type") == f"{__name__}._Alarm":
            limit, own = self._limit
            why = f"its timeout of {limit:g}s" if own else f"the function's remaining time ({limit:.1f}s)"
            record.state = CallState.TIMEOUT
            record.error = {**error, "type": "burstmap.errors.CallTimeoutError",
                            "message": f"call {task.job_id}/{call_name(task.call_id)} ran past {why} on Lambda "
                                       "and was stopped"}
            record.output = b""
        context = self.context
        remaining = context.get_remaining_time_in_millis()
        record.info.update(
            aws_request_id=context.aws_request_id,
            memory_mb=int(context.memory_limit_in_mb),
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
    """The Lambda entry point (``burstmap.backends.aws_lambda.handler``): run the event's calls.

    The store and job come from the event, the HMAC key from ``BURSTMAP_SECRET_KEY``; the handler
    and its cached function live on in a warm container.
    """
    secret = os.environ.get("BURSTMAP_SECRET_KEY")
    if not secret:
        raise ConfigError("the function has no BURSTMAP_SECRET_KEY variable; redeploy with: burstmap lambda deploy")
    store = event["store"]
    cache_key = (store["bucket"], store.get("endpoint_url"), store.get("region"), secret)
    worker = _handlers.get(cache_key)
    if worker is None:
        storage = S3Storage(store["bucket"], endpoint_url=store.get("endpoint_url"), region=store.get("region"))
        worker = _handlers[cache_key] = _LambdaHandler(storage, secret.encode())
    tasks = [Task(event["prefix"], event["job_id"], *call) for call in event["calls"]]
    mismatch = _mismatch(event)
    if mismatch:
        worker.refuse(tasks, context, VersionMismatchError(mismatch))
        return {"calls": len(tasks), "error": mismatch}
    worker.serve(tasks, context, event.get("timeout"))
    return {"calls": len(tasks)}


def _mismatch(event: dict[str, Any]) -> str | None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if event.get("burstmap") == __version__ and event.get("python") == here:
        return None
    return (f"the client runs burstmap {event.get('burstmap')} on Python {event.get('python')}, but the deployed "
            f"function runs burstmap {__version__} on Python {here}; redeploy it with: burstmap lambda deploy "
            f"--runtime python{event.get('python')}")
