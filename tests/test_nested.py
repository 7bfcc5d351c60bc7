"""Calls that start executors of their own on the local backend, and futures that travel."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET, subprocess_env


def inner_square_sum(n, store):
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(store), secret_key=TEST_SECRET,
                           progress=False) as inner:
        return sum(burstmap.get_all_results(inner.map(pow, range(n), [2]))), os.getpid()


def leave_inner_running(store):
    inner = burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(store), secret_key=TEST_SECRET,
                              progress=False)
    inner.call_async(abs, -1).result()
    leave_inner_running.kept = inner  # keeps its workers up after this call returns
    return inner.backend.worker_pids()


@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[1].split()[0] != "Z"
    except FileNotFoundError:  # reaped between the two looks
        return False


@pytest.fixture
def one_worker(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(tmp_path / "outer"),
                           secret_key=TEST_SECRET, progress=False) as ex:
        yield ex


def test_a_call_runs_a_nested_map_on_the_local_backend(one_worker, tmp_path):
    futures = one_worker.map(inner_square_sum, [3, 4], extra_args=[str(tmp_path / "inner")])
    results = burstmap.get_all_results(futures)
    assert [total for total, _ in results] == [0 + 1 + 4, 0 + 1 + 4 + 9]
    assert {pid for _, pid in results} == set(one_worker.backend.worker_pids())


def test_nested_workers_die_with_their_owner(one_worker, tmp_path):
    inner_pids = one_worker.call_async(leave_inner_running, str(tmp_path / "inner")).result()
    (outer,) = one_worker.backend.worker_pids()
    assert inner_pids and all(alive(pid) for pid in inner_pids)
    os.kill(outer, signal.SIGKILL)
    while any(alive(pid) for pid in inner_pids):
        pass
    assert one_worker.call_async(abs, -2).result() == 2


def slow_square(x):
    time.sleep(0.3)
    return x * x


def doubled(future):
    return 2 * future.result()


def inner_futures(n):
    with burstmap.Executor(backend=LocalBackend(workers=1), progress=False) as inner:
        return inner.map(slow_square, range(n))


@pytest.fixture
def configured(tmp_path, monkeypatch):
    """An executor whose store and key come from the environment, so any process here can find its calls."""
    env = {"BURSTMAP_STORAGE": "local", "BURSTMAP_STORAGE_PATH": str(tmp_path / "store"),
           "BURSTMAP_SECRET_KEY": TEST_SECRET}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with burstmap.Executor(backend=LocalBackend(workers=2), progress=False) as ex:
        yield ex


def test_a_future_travels_to_another_process(configured):
    future = configured.call_async(slow_square, 7)
    blob = pickle.dumps(future)
    assert b"secret" not in blob.lower() and len(blob) < 300
    reader = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).result())"
    run = subprocess.run([sys.executable, "-c", reader], input=blob, capture_output=True, env=subprocess_env())
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == "49" and future.result() == 49


def test_a_future_travels_into_a_call(executor):
    assert executor.call_async(doubled, executor.call_async(slow_square, 3)).result() == 18


def test_futures_a_call_returns_are_resolved(configured):
    assert configured.call_async(inner_futures, 3).result() == [0, 1, 4]
