"""The Lambda backend: control plane against a real moto server (Stubber where moto cannot throttle),
data plane by running the exact entry point on Lambda-shaped events in fresh processes against moto's S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

import burstmap
from burstmap import registry
from burstmap.aws import BotoInvoker, LambdaError, lambda_client, with_backoff
from burstmap.backends.aws_lambda import LambdaBackend, estimate_cost
from burstmap.errors import (
    CallTimeoutError,
    ConfigError,
    PayloadRejectedError,
    WorkerDiedError,
)
from burstmap.job import Batch, CallState, Manifest, Record, Task
from burstmap.lambda_handler import PYTHON, handler, make_event
from burstmap.storage.local import LocalStorage
from burstmap.storage.s3 import S3Storage

from .lambda_emulator import (
    FUNCTION,
    HMAC_KEY,
    REGION,
    EmulatedInvoker,
    deploy_function,
)

ROOT = Path(__file__).resolve().parents[1]
FAKE_AWS_SECRET = "FAKEawsSECRET/never+travels0123456789abcd"

@pytest.fixture(scope="module")
def aws(moto_server: str) -> Iterator[str]:
    """Fake credentials, a bucket, and a function deployed in moto; yields the endpoint."""
    patch = pytest.MonkeyPatch()
    patch.setenv("AWS_ACCESS_KEY_ID", "testing")
    patch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_AWS_SECRET)
    patch.setenv("AWS_DEFAULT_REGION", REGION)
    patch.setenv("BURSTMAP_SECRET_KEY", HMAC_KEY)
    try:
        deploy_function(moto_server, FUNCTION, "lambda-jobs")
        yield moto_server
    finally:
        patch.undo()


def _executor(aws: str, invoker: EmulatedInvoker, **backend: object) -> burstmap.Executor:
    options = dict(function_name=FUNCTION, endpoint_url=aws, region=REGION, concurrency=8,
                   calls_per_invoke=10, poll_interval=0.05, grace=0.5, timeout=invoker.timeout)
    options.update(backend)
    storage = S3Storage("lambda-jobs", endpoint_url=aws, aws_access_key_id="testing",
                        aws_secret_access_key=FAKE_AWS_SECRET)
    return burstmap.Executor(backend=LambdaBackend(**options, invoker=invoker), storage=storage,
                             secret_key=HMAC_KEY, progress=False)


def square(x: int) -> int:
    return x * x


def picky(x: int) -> int:
    if x == 3:
        raise KeyError(f"no luck with {x}")
    return x


def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def crash(x: int) -> int:
    """Kill the process running the call when ``x`` is 7."""
    if x == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def crash_the_invocation(x: int) -> int:
    """Kill the Lambda runtime process whose call process runs this call (as Lambda kills one out of memory)."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)
    return x


def test_map_of_200_calls_runs_in_batched_invocations(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30, storage=S3Storage("lambda-jobs", endpoint_url=aws))
    with _executor(aws, invoker, concurrency=4) as ex:
        futures = ex.map(square, range(200))
        assert burstmap.get_all_results(futures, timeout=120) == [x * x for x in range(200)]
    invoker.join()
    assert len(invoker.payloads) == 20
    assert sorted(call[0] for call in invoker.calls()) == list(range(200))
    assert 2 <= invoker.most_outstanding <= 4
    records = [f.record for f in futures]
    assert {r.info["memory_mb"] for r in records} == {512}
    assert len({r.info["aws_request_id"] for r in records}) == 20
    assert all(r.info["billed_ms"] >= 1 and r.worker == f"lambda:{FUNCTION}" for r in records)
    cost = estimate_cost(records, price=1.0)
    assert cost.gb_seconds == pytest.approx(sum(r.info["billed_ms"] for r in records) / 1000 * 0.5)
    assert cost.dollars == cost.gb_seconds


def test_remote_exception_is_reraised_with_its_type(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30)
    with _executor(aws, invoker) as ex:
        futures = ex.map(picky, range(5))
        with pytest.raises(KeyError, match="no luck with 3") as caught:
            burstmap.get_all_results(futures, timeout=60)
    assert "picky" in str(caught.value.__cause__)
    assert [f.result() for f in futures if f.call_id != 3] == [0, 1, 2, 4]


def test_call_past_its_timeout_is_stopped_inside_the_function(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30)
    with _executor(aws, invoker) as ex:
        slow, quick = ex.map(sleepy, [60, 0], timeout=1)
        with pytest.raises(CallTimeoutError, match=r"call \S+/00000 ran past its timeout of 1s on Lambda"):
            slow.result(timeout=60)
        assert quick.result(timeout=60) == 0
    assert slow.record.state is CallState.TIMEOUT
    assert slow.record.info["billed_ms"] >= 900


def test_call_past_the_functions_remaining_time_is_stopped_before_lambda_ends_it(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=5)
    with _executor(aws, invoker) as ex:
        (slow,) = ex.map(sleepy, [60])
        with pytest.raises(CallTimeoutError, match=r"call \S+/00000 ran past the function's remaining time "
                                                   r"\(\d\.\ds\) on Lambda and was stopped"):
            slow.result(timeout=60)
    assert slow.record.attempt == 1
    assert slow.record.info["remaining_ms"] < 1000 and slow.record.info["billed_ms"] >= 1000


def test_calls_an_invocation_had_no_time_for_run_again_and_nobody_is_blamed(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=4)
    with _executor(aws, invoker, calls_per_invoke=10) as ex:
        futures = ex.map(sleepy, [0.8] * 10, worker_retries=0)
        assert burstmap.get_all_results(futures, timeout=120) == [0.8] * 10
    assert {f.record.attempt for f in futures} == {1}
    assert len(invoker.calls()) > 10


def test_lost_invocation_is_retried_then_recorded_as_died(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=3)
    with _executor(aws, invoker, calls_per_invoke=1) as ex:
        (future,) = ex.map(crash_the_invocation, [7], worker_retries=1)
        with pytest.raises(WorkerDiedError, match=r"call \S+/00000: its Lambda invocation died .* attempt 2 of 2"):
            future.result(timeout=60)
    assert future.record.attempt == 2
    assert [call[3] for call in invoker.calls()] == [1, 2]


def test_a_call_whose_process_dies_is_retried_within_its_invocation(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30)
    with _executor(aws, invoker) as ex:
        crashed, quick = ex.map(crash, [7, 0], worker_retries=1)
        with pytest.raises(WorkerDiedError, match=r"call \S+/00000: its process on Lambda died \(killed by SIGKILL\) "
                                                  r"while running it, in attempt 2 of 2"):
            crashed.result(timeout=60)
        assert quick.result(timeout=60) == 0
    assert crashed.record.attempt == 2
    assert [call[3] for call in invoker.calls()] == [1, 1]


def test_version_mismatch_refuses_every_call_with_a_redeploy_hint(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30, deployed_version="0.0.1")
    with _executor(aws, invoker) as ex:
        futures = ex.map(square, range(3))
        errors = [f.exception(timeout=60) for f in futures]
    assert all(isinstance(e, PayloadRejectedError) for e in errors)
    assert all(f.record.state is CallState.REJECTED for f in futures)
    assert f"worker lambda:{FUNCTION} refused the call" in str(errors[0])
    assert f"client runs burstmap {burstmap.__version__}" in str(errors[0])
    assert "function runs burstmap 0.0.1" in str(errors[0]) and "burstmap lambda deploy" in str(errors[0])


def test_failed_invoke_fails_its_calls(aws: str) -> None:
    storage = S3Storage("lambda-jobs", endpoint_url=aws)
    backend = LambdaBackend(FUNCTION, REGION, aws, invoker=Refusing(), poll_interval=0.05)
    with burstmap.Executor(backend=backend, storage=storage, secret_key=HMAC_KEY, progress=False) as ex:
        with pytest.raises(LambdaError, match="KMSDisabledException"):
            ex.map(square, [1, 2])[1].result(timeout=30)


class Refusing:
    """An invoker the Lambda control plane turns down."""

    def invoke(self, payload: bytes) -> None:
        raise LambdaError("Lambda function 'x' on invoke: KMSDisabledException")


class Lost:
    """An invoker whose invocations are accepted and never run."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    def invoke(self, payload: bytes) -> None:
        self.payloads.append(payload)


class Board:
    """A `CallBoard` that wants every call and notes, per call, the error it was failed with."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.failed: dict[int, BaseException] = {}
        self.all_failed = threading.Event()
        self._lock = threading.Lock()

    def take(self, job_id: str, call_ids: list[int]) -> list[int]:
        return list(call_ids)

    def fail(self, job_id: str, call_ids: list[int], error: BaseException) -> None:
        with self._lock:
            self.failed.update((call_id, error) for call_id in call_ids)
            if len(self.failed) >= self.expected:
                self.all_failed.set()


class FaultyS3(S3Storage):
    """The real S3 store with one operation failing with an error that is no storage error (a bug)."""

    def __init__(self, *args: object, failing: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.failing = failing

    def list(self, prefix: str) -> Iterator[str]:
        if self.failing == "list":
            raise RuntimeError("injected listing fault")
        return super().list(prefix)

    def put(self, key: str, data: bytes) -> None:
        if self.failing == "put":
            raise RuntimeError("injected write fault")
        super().put(key, data)


def _started(aws: str, storage: S3Storage, board: Board, invoker: object) -> LambdaBackend:
    backend = LambdaBackend(FUNCTION, REGION, aws, concurrency=1, poll_interval=0.05, invoker=invoker)
    backend.start(storage, HMAC_KEY.encode(), board)
    return backend


MANIFEST = Manifest("job-of-3", "direct", "square", ((0, 0), (3, 30)), 0.0, "here")


def _failed_calls(aws: str, storage: S3Storage, invoker: object) -> dict[int, BaseException]:
    """Run the 3 calls of MANIFEST on a backend that cannot finish them; the errors the board received."""
    board = Board(expected=3)
    backend = _started(aws, storage, board, invoker)
    try:
        backend.run(MANIFEST, range(3))
        assert board.all_failed.wait(60), f"only {sorted(board.failed)} failed"
    finally:
        backend.shutdown()
    return board.failed


def test_monitor_that_cannot_list_fails_the_calls_it_holds(aws: str) -> None:
    failed = _failed_calls(aws, FaultyS3("lambda-jobs", endpoint_url=aws, failing="list"), Lost())
    assert sorted(failed) == [0, 1, 2]
    error = failed[2]
    assert "lambda backend's monitor failed (RuntimeError: injected listing fault)" in str(error)
    assert isinstance(error.__cause__, RuntimeError)


def test_calls_neither_sent_nor_recorded_fail_their_futures(aws: str) -> None:
    failed = _failed_calls(aws, FaultyS3("lambda-jobs", endpoint_url=aws, failing="put"), Refusing())
    assert all(isinstance(e, LambdaError) and "KMSDisabledException" in str(e) for e in failed.values())


def touch(path: str) -> str:
    Path(path).touch()
    return path


def test_function_with_another_key_refuses_the_calls_and_runs_nothing(aws: str, tmp_path: Path) -> None:
    invoker = EmulatedInvoker(timeout=30, secret="another-key-0123456789abcdef")
    marks = [str(tmp_path / f"ran-{i}") for i in range(3)]
    with _executor(aws, invoker) as ex:
        futures = ex.map(touch, marks)
        errors = [f.exception(timeout=60) for f in futures]
    for error in errors:
        assert isinstance(error, PayloadRejectedError)
        assert f"worker 'lambda:{FUNCTION}' refused it" in str(error) and "BURSTMAP_SECRET_KEY" in str(error)
    assert not any(Path(mark).exists() for mark in marks)


class Gated(EmulatedInvoker):
    """The emulated function, whose first invocation waits until the test lets it go."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self.first = threading.Event()
        self.go = threading.Event()

    def invoke(self, payload: bytes) -> None:
        if not self.first.is_set():
            self.first.set()
            assert self.go.wait(60)
        super().invoke(payload)


def test_cancelled_calls_are_never_invoked(aws: str) -> None:
    invoker = Gated(timeout=30)
    with _executor(aws, invoker, concurrency=1, calls_per_invoke=1) as ex:
        futures = ex.map(square, range(5))
        assert invoker.first.wait(60)
        assert all(f.cancel() for f in futures[1:4])
        invoker.go.set()
        assert (futures[0].result(timeout=60), futures[4].result(timeout=60)) == (0, 16)
    invoker.join()
    assert [call[0] for call in invoker.calls()] == [0, 4]


def test_an_event_that_is_no_batch_runs_and_records_nothing(aws: str) -> None:
    storage = S3Storage("lambda-jobs", endpoint_url=aws)
    event = {"burstmap": burstmap.__version__, "python": PYTHON, "batch": "00.{not json",
             "store": {"bucket": "lambda-jobs", "endpoint_url": aws, "region": None}}
    before = set(storage.list(""))
    reply = handler(event, None)
    assert reply["calls"] == 0 and "BURSTMAP_SECRET_KEY" in reply["error"]
    assert set(storage.list("")) == before


def test_no_secret_travels_in_events_or_errors(aws: str) -> None:
    invoker = EmulatedInvoker(timeout=30)
    with _executor(aws, invoker) as ex:
        assert burstmap.get_all_results(ex.map(square, range(12)), timeout=60) == [x * x for x in range(12)]
    assert invoker.payloads
    for payload in invoker.payloads:
        event = json.loads(payload)
        assert event["store"] == {"bucket": "lambda-jobs", "endpoint_url": aws, "region": None}
        assert FAKE_AWS_SECRET.encode() not in payload and HMAC_KEY.encode() not in payload
    with pytest.raises(ConfigError) as caught:
        LambdaBackend("not-deployed", REGION, aws).start(S3Storage("lambda-jobs", endpoint_url=aws), HMAC_KEY.encode())
    assert FAKE_AWS_SECRET not in str(caught.value) and HMAC_KEY not in str(caught.value)


def test_start_reads_the_deployed_function(aws: str) -> None:
    backend = LambdaBackend(FUNCTION, REGION, aws)
    backend.start(S3Storage("lambda-jobs", endpoint_url=aws), b"k")
    assert (backend.timeout, backend.memory_mb) == (5.0, 512)
    assert isinstance(backend._invoker, BotoInvoker)


@pytest.mark.parametrize("make, message", [
    (lambda aws: (LambdaBackend(FUNCTION, REGION, aws), LocalStorage("/tmp/x")), "needs an S3 store"),
    (lambda aws: (LambdaBackend("nothing-here", REGION, aws), S3Storage("b", endpoint_url=aws)),
     r"'nothing-here' is not deployed in us-east-1; deploy it with: burstmap lambda deploy"),
    (lambda aws: (LambdaBackend(FUNCTION, "mars-north-1"), S3Storage("b")), "unknown AWS region 'mars-north-1'"),
])
def test_start_refuses_bad_setups_in_one_line(aws: str, make: object, message: str) -> None:
    backend, storage = make(aws)
    with pytest.raises(ConfigError, match=message) as caught:
        backend.start(storage, b"k")
    assert "\n" not in str(caught.value)


def test_start_without_credentials_says_so(aws: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigError, match="no AWS credentials found"):
        LambdaBackend(FUNCTION, REGION, aws).start(S3Storage("lambda-jobs", endpoint_url=aws), b"k")


def test_oversized_batches_are_refused_before_any_job() -> None:
    with pytest.raises(ConfigError, match="256 KiB"):
        LambdaBackend(calls_per_invoke=5000)
    batch = Batch("p", "j", tuple(Task("p", "j", 10**12 + 2 * i, 10**12, 10**12 + 1) for i in range(6000)))  # no runs
    with pytest.raises(LambdaError, match="over Lambda's 256 KiB limit"):
        make_event(S3Storage("b"), batch, b"k")


def _stubbed_invoker(codes: list[str]) -> tuple[BotoInvoker, Stubber, list[float]]:
    client = lambda_client(REGION, "http://127.0.0.1:1")
    stubber = Stubber(client)
    for code in codes:
        if code == "ok":
            stubber.add_response("invoke", {"StatusCode": 202}, {"FunctionName": "f", "InvocationType": "Event",
                                                                 "Payload": b"{}"})
        else:
            stubber.add_client_error("invoke", code, "slow down", 429 if code == "TooManyRequestsException" else 400)
    sleeps: list[float] = []
    return BotoInvoker(client, "f", attempts=4, sleep=sleeps.append), stubber, sleeps


def test_invoke_backs_off_on_throttling_then_succeeds() -> None:
    invoker, stubber, sleeps = _stubbed_invoker(["TooManyRequestsException", "TooManyRequestsException", "ok"])
    with stubber:
        invoker.invoke(b"{}")
        stubber.assert_no_pending_responses()
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.1 and 0 <= sleeps[1] <= 0.2


def test_invoke_gives_up_after_its_attempts_in_one_line() -> None:
    invoker, stubber, sleeps = _stubbed_invoker(["TooManyRequestsException"] * 4)
    with stubber, pytest.raises(LambdaError, match="on invoke: TooManyRequestsException: slow down"):
        invoker.invoke(b"{}")
    assert len(sleeps) == 3


def test_invoke_does_not_retry_a_missing_function() -> None:
    invoker, stubber, sleeps = _stubbed_invoker(["ResourceNotFoundException"])
    with stubber, pytest.raises(ConfigError, match="not deployed"):
        invoker.invoke(b"{}")
    assert sleeps == []


def test_backoff_delays_grow_and_stay_under_the_cap() -> None:
    sleeps: list[float] = []
    failures = iter(range(6))

    def flaky() -> str:
        if next(failures) < 5:
            raise TimeoutError("transient")
        return "done"

    assert with_backoff(flaky, lambda e: isinstance(e, TimeoutError), attempts=6, base=1.0, cap=4.0,
                        sleep=sleeps.append) == "done"
    assert len(sleeps) == 5
    assert all(0 <= s <= min(4.0, 2 ** n) for n, s in enumerate(sleeps))


def test_estimate_cost_uses_recorded_memory_and_billed_time() -> None:
    records = [
        Record(0, CallState.OK, info={"billed_ms": 2000, "memory_mb": 1024}),
        Record(1, CallState.OK, info={"billed_ms": 1000, "memory_mb": 512}),
        Record(2, CallState.TIMEOUT, start=10.0, end=13.0),
    ]
    cost = estimate_cost(records, price=0.5)
    assert cost.gb_seconds == pytest.approx(2.0 + 0.5 + 3.0 * 128 / 1024)
    assert cost.dollars == pytest.approx(cost.gb_seconds * 0.5)
    assert estimate_cost(records, memory_mb=2048).gb_seconds == pytest.approx(2 * (2 + 1 + 3))


def test_registry_finds_the_lambda_backend() -> None:
    assert registry.load("backend", "lambda") is LambdaBackend


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burstmap.deploy", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60)


def test_deploy_dry_run_prints_the_package_and_its_size() -> None:
    result = _cli("deploy", "--dry-run", "--runtime", "python3.12", "--architecture", "arm64")
    assert result.returncode == 0, result.stderr
    assert "burstmap" in result.stdout and "cloudpickle" in result.stdout
    assert "package:" in result.stdout and "KiB zipped" in result.stdout
    assert "python3.12 arm64" in result.stdout


def test_deploy_creates_updates_and_removes_the_function(aws: str) -> None:
    target = ["--function-name", "deployed", "--endpoint-url", aws, "--region", REGION]
    env = {"AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET, "BURSTMAP_SECRET_KEY": HMAC_KEY}
    missing = _cli("deploy", *target, "--role", "absent-role", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == ("Error: IAM role 'absent-role' does not exist; pass --create-role to create "
                                      "it, or --role with an existing one")
    created = _cli("deploy", *target, "--role", "made-role", "--create-role", "--memory", "2048", "--timeout",
                   "60", env=env)
    assert created.returncode == 0, created.stderr
    assert "created IAM role made-role" in created.stdout and "created Lambda function deployed" in created.stdout
    client = boto3.client("lambda", endpoint_url=aws)
    configuration = client.get_function(FunctionName="deployed")["Configuration"]
    assert configuration["Handler"] == "burstmap.lambda_handler.handler"
    assert (configuration["MemorySize"], configuration["Timeout"]) == (2048, 60)
    assert configuration["Environment"]["Variables"]["BURSTMAP_SECRET_KEY"] == HMAC_KEY
    assert client.get_function_event_invoke_config(FunctionName="deployed")["MaximumRetryAttempts"] == 0
    updated = _cli("deploy", *target, "--role", "made-role", "--memory", "512", env=env)
    assert updated.returncode == 0, updated.stderr
    assert "updated Lambda function deployed" in updated.stdout
    assert client.get_function(FunctionName="deployed")["Configuration"]["MemorySize"] == 512
    removed = _cli("remove", *target, "--delete-role", "made-role", env=env)
    assert removed.returncode == 0, removed.stderr
    assert "removed Lambda function deployed" in removed.stdout and "removed IAM role made-role" in removed.stdout
    gone = _cli("remove", *target, env=env)
    assert gone.returncode == 1 and "is not deployed" in gone.stderr
    for result in (missing, created, updated, removed, gone):
        assert FAKE_AWS_SECRET not in result.stdout + result.stderr
        assert HMAC_KEY not in result.stdout + result.stderr
