"""Store outages: a Redis store restarted mid-job loses no call; one that stays down fails the job in one line."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import StorageError
from burstmap.storage.redis import RedisStorage

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


def test_redis_store_restarted_mid_job_loses_no_call(own_redis, tmp_path):
    port, procs = own_redis
    store = RedisStorage(f"redis://127.0.0.1:{port}/0")
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=store, secret_key=TEST_SECRET) as ex:
        futures = ex.map(nap, range(60))
        burstmap.wait(futures, return_when=burstmap.ANY_COMPLETED, timeout=60)
        stop_redis(procs.pop())
        time.sleep(0.3)
        procs.append(start_redis(port, tmp_path, persist=True))
        assert burstmap.get_all_results(futures, timeout=120) == list(range(60))


def test_store_that_stays_down_fails_the_job_in_one_line(own_redis):
    port, procs = own_redis
    store = RedisStorage(f"redis://127.0.0.1:{port}/0", retries=1)
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=store, secret_key=TEST_SECRET) as ex:
        ex._watcher.outage_limit = 1.0
        futures = ex.map(time.sleep, [5, 5])
        stop_redis(procs.pop())
        with pytest.raises(StorageError) as info:
            burstmap.get_all_results(futures, timeout=120)
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message and "unreachable" in message
