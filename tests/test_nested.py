"""Calls that start executors of their own on the local backend, and futures that travel."""

import os
import signal

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET


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


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[1].split()[0] != "Z"


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
