"""Store outages: a store restarted mid-job loses no call; one that stays down fails in one line.

The `Patient` wrapper is tested here against real servers that stop and come back.
"""

from __future__ import annotations

import collections
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import KeyNotFoundError, StorageError
from burstmap.storage.patient import Patient
from burstmap.storage.redis import RedisStorage
from burstmap.storage.s3 import S3Storage

from .conftest import TEST_SECRET, free_port, start_redis, stop_redis


def nap(x):
    time.sleep(0.05)
    return x


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[int, list[subprocess.Popen]]]:
    """A redis-server with append-only persistence on its own port; the test may stop and restart it."""
    port = free_port()
    procs = [start_redis(port, tmp_path, persist=True)]
    yield port, procs
    for proc in procs:
        stop_redis(proc)


@pytest.mark.parametrize("outage", [0.3, 6.0])
def test_redis_store_down_mid_job_costs_time_not_calls(own_redis, tmp_path, outage):
    """Brief, and longer than the Redis client's own reconnects (about 3.5 s): workers wait it out."""
    port, procs = own_redis
    store = RedisStorage(f"redis://127.0.0.1:{port}/0")
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key=TEST_SECRET,
                           worker_retries=0) as ex:
        futures = ex.map(nap, range(60))
        burstmap.wait(futures, return_when=burstmap.ANY_COMPLETED, timeout=60)
        stop_redis(procs.pop())
        time.sleep(outage)  # the length of the fault itself, not a wait for anything
        procs.append(start_redis(port, tmp_path, persist=True))
        assert burstmap.get_all_results(futures, timeout=120) == list(range(60))
        assert {f.status["attempt"] for f in futures} == {1}


def test_store_that_stays_down_fails_the_job_in_one_line(own_redis):
    port, procs = own_redis
    store = RedisStorage(f"redis://127.0.0.1:{port}/0", retries=1)
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=store, secret_key=TEST_SECRET,
                           outage_limit=1.0) as ex:
        futures = ex.map(time.sleep, [5, 5])
        stop_redis(procs.pop())
        with pytest.raises(StorageError) as info:
            burstmap.get_all_results(futures, timeout=120)
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "unreachable" in message


class Waiting(logging.Handler):
    """Tells, from their log, when each of ``operations`` `Patient` store operations has waited ``rounds`` times.

    Each operation runs in its own thread; a `Patient` logs a warning when it starts to wait and a
    debug line before each pause, so ``rounds`` lines mean ``rounds - 1`` pauses (0.1 s, 0.2 s, ... each).
    """

    def __init__(self, operations: int, rounds: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self._operations, self._rounds = operations, rounds
        self._seen: collections.Counter[int] = collections.Counter()
        self.all = threading.Event()
        self._logger = logging.getLogger("burstmap.storage.patient")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        self._seen[record.thread] += 1
        if len(self._seen) == self._operations and min(self._seen.values()) >= self._rounds:
            self.all.set()

    def __enter__(self) -> Self:
        self._logger.setLevel(logging.DEBUG)
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def unreachable(call: Callable[[], Any], store: Any, limit: float) -> str:
    """Run ``call``, expect the one-line error of a `Patient` store that gave up after ``limit`` seconds."""
    with pytest.raises(StorageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"store {store!r} unreachable for over {limit:g}s: ")
    return message


def test_patient_redis_store_waits_out_a_restart(own_redis, tmp_path):
    port, procs = own_redis
    raw = RedisStorage(f"redis://127.0.0.1:{port}/0", retries=1)
    store = Patient(raw, limit=60)
    raw.put("kept", b"before")
    raw.put("doomed", b"x")
    operations = {
        "put": lambda: store.put("written", b"during"),
        "get": lambda: store.get("kept"),
        "size": lambda: store.size("kept"),
        "list": lambda: sorted(store.list("")),
        "delete": lambda: store.delete(["doomed"]),
        "read": lambda: store.open_read("kept").read(),
    }
    stop_redis(procs.pop())
    with Waiting(len(operations), rounds=6) as waiting, ThreadPoolExecutor(len(operations)) as pool:
        futures = {name: pool.submit(call) for name, call in operations.items()}
        assert waiting.all.wait(timeout=60)
        assert not any(f.done() for f in futures.values())
        procs.append(start_redis(port, tmp_path, persist=True))
        results = {name: f.result(timeout=60) for name, f in futures.items()}
    assert results["get"] == results["read"] == b"before" and results["size"] == 6
    assert results["list"] in (["doomed", "kept"], ["kept"], ["doomed", "kept", "written"], ["kept", "written"])
    assert raw.get("written") == b"during"
    assert sorted(raw.list("")) == ["kept", "written"]


def test_patient_redis_store_that_stays_down_fails_in_one_line(own_redis):
    port, procs = own_redis
    raw = RedisStorage(f"redis://127.0.0.1:{port}/0", retries=1)
    store = Patient(raw, limit=0.5)
    store.put("k", b"v")
    stop_redis(procs.pop())
    message = unreachable(lambda: store.get("k"), raw, 0.5)
    assert f"redis at 127.0.0.1:{port} is not reachable" in message


def test_patient_store_raises_missing_keys_and_lasting_errors_at_once(own_redis):
    port, _ = own_redis
    store = Patient(RedisStorage(f"redis://127.0.0.1:{port}/0", retries=1))
    with pytest.raises(KeyNotFoundError, match="nothing-here"):
        store.get("nothing-here")
    refused = Patient(RedisStorage(f"redis://someone:wrong@127.0.0.1:{port}/0", retries=1))
    with pytest.raises(StorageError, match="rejected the credentials") as info:
        refused.put("k", b"v")
    assert "unreachable for over" not in str(info.value)


def test_patient_s3_store_facing_a_stopped_endpoint_fails_in_one_line():
    endpoint = f"http://127.0.0.1:{free_port()}"
    raw = S3Storage("bucket-x", endpoint_url=endpoint, region="us-east-1", aws_access_key_id="testing",
                    aws_secret_access_key="testing", retries=0)
    store = Patient(raw, limit=0.5)
    message = unreachable(lambda: store.put("k", b"v"), raw, 0.5)
    assert f"bucket 'bucket-x' at {endpoint}: endpoint is unreachable" in message


def test_patient_s3_store_raises_a_missing_bucket_at_once(moto_server):
    store = Patient(S3Storage("no-such-bucket", endpoint_url=moto_server, region="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing"))
    with pytest.raises(StorageError, match="does not exist") as info:
        store.put("k", b"v")
    assert "unreachable for over" not in str(info.value)
