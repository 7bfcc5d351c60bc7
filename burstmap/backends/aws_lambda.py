"""The AWS Lambda backend: calls run as asynchronous invocations of a deployed function.

The client puts inputs in an S3 store and invokes the function (``InvocationType='Event'``) with
a small event: where the store is, and one signed `Batch` of calls (see `burstmap.lambda_handler`,
the entry point that runs them). Credentials never travel.

A monitor thread sends batches within the concurrency cap, leaving out calls cancelled meanwhile,
and lists the statuses of in-flight invocations to free their slots. A call whose status is still
missing after the function's timeout plus a grace period is reported to `Attempts`, which re-runs
it or records it as ``died``. The monitor is supervised: an error it cannot handle (a store
unreachable past its outage limit, a bug) fails every call it holds, loudly, instead of leaving
their futures waiting.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from ..attempts import Attempts
from ..aws import BotoInvoker, Invoker, explain, lambda_client, transient, with_backoff
from ..errors import BurstmapError, ConfigError, StorageError
from ..job import Batch, Manifest, Record, finished_calls
from ..lambda_handler import MAX_EVENT_BYTES, make_event
from ..lambda_package import recorded_packages, version_drift
from ..stats import PRICE_PER_GB_SECOND, gb_seconds
from ..storage.base import Storage
from ..storage.patient import Patient
from ..storage.s3 import S3Storage
from .base import Backend, CallBoard, fail_held

__all__ = ["Cost", "LambdaBackend", "estimate_cost"]

log = logging.getLogger(__name__)
_MAX_CALLS_PER_INVOKE = 1000  # keeps any event far below MAX_EVENT_BYTES (about 60 bytes per call)


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
        invoker: sends the events (default: `burstmap.aws.BotoInvoker`); tests substitute an emulated one.
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
        self.packages: dict[str, str] = {}  # libraries deployed with the function: {distribution: version}
        self._checked: set[str] = set()  # jobs whose function was compared with them
        self._invoker = invoker
        self._monitor: _Monitor | None = None
        self._lock = threading.Lock()

    def start(self, storage: Storage, key: bytes, board: CallBoard | None = None) -> None:
        """Check the store is S3 and the function is deployed (one ``get_function``), before any job starts."""
        self._s3 = _s3_store(storage)
        super().start(storage, key, board)
        client = lambda_client(self.region, self.endpoint_url)
        try:
            reply = with_backoff(lambda: client.get_function(FunctionName=self.function_name), transient, 4)
        except (ClientError, BotoCoreError) as e:
            raise explain(e, self.function_name, f"in {client.meta.region_name}") from None
        configuration = reply["Configuration"]
        self.timeout = self.timeout or float(configuration.get("Timeout", 3))
        self.memory_mb = int(configuration.get("MemorySize", 128))
        self.packages = recorded_packages(configuration.get("Environment", {}).get("Variables", {}))
        if self._invoker is None:
            self._invoker = BotoInvoker(client, self.function_name)

    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        self._warn_drift(manifest)
        with self._lock:
            if self._monitor is None or self._monitor.broken:
                self._monitor = _Monitor(self)
            monitor = self._monitor
        monitor.add(manifest, call_ids)

    def shutdown(self, wait: bool = True) -> None:
        """Stop sending and watching; invocations already sent run to their end on Lambda."""
        with self._lock:
            monitor, self._monitor = self._monitor, None
        if monitor:
            monitor.close(wait)

    def _warn_drift(self, manifest: Manifest) -> None:
        """Warn once per job when a library its function uses has another version on the function than here.

        Costs one read of the pickled function per job, and only when the function was deployed with libraries;
        a store that cannot give it now only skips the check, the job goes on.
        """
        if not self.packages or manifest.job_id in self._checked:
            return
        self._checked.add(manifest.job_id)
        try:
            function = self.storage.get(manifest.layout.func)
        except StorageError as e:
            log.warning("burstmap: job %s: versions not compared with the function's: %s", manifest.job_id, e)
            return
        for line in version_drift(function, self.packages):
            log.warning("burstmap: job %s: %s; results may differ, redeploy with your versions "
                        "(burstmap lambda deploy --requirements ...)", manifest.job_id, line)

    def invoke(self, batch: Batch) -> None:
        """Send one batch as one asynchronous invocation; raise `burstmap.aws.LambdaError` if it cannot be."""
        assert self._invoker is not None, "start() the backend first"
        self._invoker.invoke(make_event(self._s3, batch, self._key))

    def __repr__(self) -> str:
        return f"LambdaBackend(function_name={self.function_name!r}, region={self.region!r})"


def _s3_store(storage: Storage) -> S3Storage:
    """The S3 store behind ``storage`` (seen through a `Patient` wrapper); `ConfigError` for any other store."""
    inner = storage.store if isinstance(storage, Patient) else storage
    if not isinstance(inner, S3Storage):
        raise ConfigError(f"the lambda backend needs an S3 store (storage: s3), not {storage!r}")
    return inner


@dataclass(eq=False)
class _Invocation:
    """One batch sent in one event, which of its calls have no status yet, and when it is lost."""

    manifest: Manifest
    batch: Batch
    missing: set[int] = field(default_factory=set)
    deadline: float = math.inf

    def __post_init__(self) -> None:
        self.missing = {task.call_id for task in self.batch.tasks}


_Call = tuple[Manifest, int, int]  # a call waiting to be sent: its job, its id, its attempt


class _Monitor:
    """Sends batches as invocations within the concurrency cap, and watches their statuses."""

    def __init__(self, backend: LambdaBackend) -> None:
        self._backend = backend
        store = backend.storage if isinstance(backend.storage, Patient) else Patient(backend.storage)
        self._store = store
        self._attempts = Attempts(store, backend._key, f"lambda-monitor:{os.getpid()}")
        self._pool = ThreadPoolExecutor(backend.invoke_threads, thread_name_prefix="burstmap-invoke")
        self._pending: deque[_Call] = deque()
        self._flying: list[_Invocation] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self.broken: BaseException | None = None
        self._thread = threading.Thread(target=self._supervised, name="burstmap-lambda", daemon=True)
        self._thread.start()

    def add(self, manifest: Manifest, call_ids: Iterable[int]) -> None:
        """Queue calls to send (at attempt 1); fail them at once if the monitor has failed."""
        call_ids = list(call_ids)
        with self._lock:
            if self.broken is None:
                self._pending.extend((manifest, call_id, 1) for call_id in call_ids)
                self._wake.set()
                return
        self._backend.board.fail(manifest.job_id, call_ids, _broken(self.broken))

    def close(self, wait: bool) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _supervised(self) -> None:
        """The monitor loop; if it fails, every call it holds fails with its error instead of hanging."""
        try:
            self._loop()
        except BaseException as e:
            log.exception("burstmap: the Lambda backend's monitor failed; failing the calls it holds")
            with self._lock:
                self.broken = e
                held = [(m, c) for m, c, _ in self._pending]
                held += [(i.manifest, c) for i in self._flying for c in sorted(i.missing)]
                self._pending.clear()
                self._flying.clear()
            fail_held(self._backend.board, held, _broken(e))

    def _loop(self) -> None:
        while not self._closed:
            self._dispatch()
            if self._flying:
                self._check()
            self._wake.wait(self._backend.poll_interval)
            self._wake.clear()

    def _dispatch(self) -> None:
        """Send batches while calls wait and slots are free; calls cancelled meanwhile are left out."""
        while True:
            with self._lock:
                if not self._pending or len(self._flying) >= self._backend.concurrency:
                    return
                calls = self._next_calls()
            manifest = calls[0][0]
            try:
                wanted = self._backend.board.take(manifest.job_id, [call_id for _, call_id, _ in calls])
            except BaseException:
                with self._lock:
                    self._pending.extendleft(reversed(calls))
                raise
            if not wanted:
                continue
            invocation = _Invocation(manifest, Batch.of(manifest, wanted, {c: a for _, c, a in calls}))
            with self._lock:
                self._flying.append(invocation)
            self._pool.submit(self._send, invocation)

    def _next_calls(self) -> list[_Call]:
        """Take the next calls of one job off the queue, up to ``calls_per_invoke`` (the lock is held)."""
        manifest = self._pending[0][0]
        calls: list[_Call] = []
        while self._pending and len(calls) < self._backend.calls_per_invoke and self._pending[0][0] is manifest:
            calls.append(self._pending.popleft())
        return calls

    def _send(self, invocation: _Invocation) -> None:
        """Invoke the function with one batch; the calls of one that cannot be sent get an ``error`` record."""
        backend = self._backend
        try:
            backend.invoke(invocation.batch)
        except Exception as e:
            self._not_sent(invocation, e)
            return
        invocation.deadline = time.monotonic() + (backend.timeout or 900) + backend.grace

    def _not_sent(self, invocation: _Invocation, error: Exception) -> None:
        """Record calls that could not be sent as failed; if the store cannot take that, fail their futures."""
        batch = invocation.batch
        try:
            self._attempts.failed(batch.tasks, error)
        except Exception as e:
            log.error("burstmap: could not record that %d calls of job %s were not sent (%s): %s",
                      len(batch.tasks), batch.job_id, error, e)
            self._backend.board.fail(batch.job_id, [t.call_id for t in batch.tasks], error)
        finally:
            self._settle([invocation], [])

    def _check(self) -> None:
        """List the statuses of in-flight calls; settle invocations that finished or ran out of time."""
        with self._lock:
            flying = list(self._flying)
        done = self._finished(flying)
        now = time.monotonic()
        finished: list[_Invocation] = []
        retry: list[_Call] = []
        for invocation in flying:
            invocation.missing -= done[invocation.batch.job_id]
            if not invocation.missing:
                finished.append(invocation)
            elif now > invocation.deadline:
                retry.extend(self._expired(invocation))
                finished.append(invocation)
        self._settle(finished, retry)

    def _finished(self, flying: list[_Invocation]) -> dict[str, set[int]]:
        """The calls in flight with a durable status, per job: one LIST per status group with calls in flight."""
        jobs: dict[str, tuple[Manifest, set[int]]] = {}
        for invocation in flying:
            jobs.setdefault(invocation.batch.job_id, (invocation.manifest, set()))[1].update(invocation.missing)
        return {job_id: finished_calls(self._store, manifest.layout, ids) for job_id, (manifest, ids) in jobs.items()}

    def _settle(self, finished: list[_Invocation], retry: list[_Call]) -> None:
        """Free the slots of finished invocations (once each) and queue calls to re-run first."""
        with self._lock:
            self._flying = [invocation for invocation in self._flying if invocation not in finished]
            self._pending.extendleft(reversed(retry))
        if finished:
            self._wake.set()

    def _expired(self, invocation: _Invocation) -> list[_Call]:
        """Calls of an invocation with no status after its deadline: the ones to send again.

        Calls past their own timeout are stopped and recorded inside the function, and one that ran
        out of time for the rest of its batch says so in the store; otherwise an invocation that leaves
        no status crashed (out of memory, killed) or was lost. Calls run in order, so the first one
        without a status is the one it died in: `Attempts` gives it another attempt or records its
        death; the others run again at the attempt they were at.
        """
        backend = self._backend
        missing = [task for task in invocation.batch.tasks if task.call_id in invocation.missing]
        if self._attempts.ended_on_purpose(invocation.batch):
            tasks = missing  # the function ran out of time for them: nobody is blamed
        else:
            how = (f"no status within function {backend.function_name!r}'s timeout of {backend.timeout:g}s + "
                   f"{backend.grace:g}s grace: it crashed, ran out of memory or was lost; see its CloudWatch logs")
            again = self._attempts.died(missing[0], invocation.manifest.worker_retries, "its Lambda invocation", how)
            tasks = ([again] if again else []) + missing[1:]
        return [(invocation.manifest, task.call_id, task.attempt) for task in tasks]


def _broken(error: BaseException) -> BurstmapError:
    failure = BurstmapError(f"the lambda backend's monitor failed ({type(error).__name__}: {error}); the calls it "
                            "held were abandoned (any already invoked may still run on Lambda)")
    failure.__cause__ = error
    return failure


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
