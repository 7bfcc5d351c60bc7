"""The Dask backend on a real scheduler and worker processes: what the shared suite does not cover."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import distributed
import pytest

import burstmap
from burstmap import WorkerDiedError
from burstmap.backends.dask import DaskBackend
from burstmap.job import Layout
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET
from .test_faults import alive


def slow_square(x):
    time.sleep(0.1)
    return x * x


def end_every_seventh(args):
    """A quick call that leaves one file per run; every seventh ends its own process instead of returning."""
    folder, x = args
    (Path(folder) / f"{x}.{os.getpid()}.{time.monotonic_ns()}").write_text("ran")
    if x % 7 == 3:
        os._exit(9)
    return x


def test_a_call_that_ends_its_process_among_quick_calls_alone_is_blamed(dask_cluster, tmp_path):
    runs, store = tmp_path / "runs", tmp_path / "store"
    runs.mkdir()
    with distributed.Client(dask_cluster.address) as client:
        backend = DaskBackend(client=client, batch_size=32)
        with burstmap.Executor(backend=backend, storage=LocalStorage(store), secret_key=TEST_SECRET,
                               progress=False) as ex:
            futures = ex.map(end_every_seventh, [(str(runs), x) for x in range(96)], worker_retries=0)
            not_done = burstmap.wait(futures, timeout=120).not_done
            statuses = list(ex.storage.list(Layout(ex.config.prefix, futures[0].job_id).status_prefix))
    assert not not_done
    for x, future in enumerate(futures):
        if x % 7 == 3:
            with pytest.raises(WorkerDiedError, match="in attempt 1 of 1"):
                future.result()
            assert len(list(runs.glob(f"{x}.*"))) == 1
        else:
            assert future.result() == x
    assert len(statuses) < len(futures) // 2, "quick calls' records were not written together"


def test_a_killed_worker_process_amid_quick_calls_loses_no_call_and_takes_its_call_process(dask_cluster,
                                                                                          tmp_path):
    with distributed.Client(dask_cluster.address) as client:
        client.wait_for_workers(2, timeout=60)
        with burstmap.Executor(backend=DaskBackend(client=client, batch_size=64), storage=LocalStorage(tmp_path),
                               secret_key=TEST_SECRET, progress=False) as ex:
            futures = ex.map(time.sleep, [0.001] * 2000)
            burstmap.wait(futures, return_when=burstmap.ANY_COMPLETED, timeout=60)
            address, victim = next(iter(client.run(os.getpid).items()))
            os.kill(victim, signal.SIGKILL)
            assert burstmap.get_all_results(futures, timeout=120) == [None] * 2000
            children = {f.status["pid"] for f in futures if f.status["worker"] == f"dask-{address}"}
        client.wait_for_workers(2, timeout=60)
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a call process outlived its killed Dask worker"
        time.sleep(0.05)


def test_a_killed_worker_process_loses_no_call(dask_cluster, tmp_path):
    with distributed.Client(dask_cluster.address) as client:
        client.wait_for_workers(2, timeout=60)
        backend = DaskBackend(client=client, batch_size=4)
        with burstmap.Executor(backend=backend, storage=LocalStorage(tmp_path), secret_key=TEST_SECRET,
                               progress=False) as ex:
            futures = ex.map(slow_square, range(40))
            burstmap.wait(futures, return_when=burstmap.ANY_COMPLETED, timeout=60)
            victim = next(iter(client.run(os.getpid).values()))
            os.kill(victim, signal.SIGKILL)
            assert burstmap.get_all_results(futures, timeout=120) == [x * x for x in range(40)]
            assert max(f.status["attempt"] for f in futures) == 2
            assert {f.status["pid"] for f in futures} - {victim}
        assert client.status == "running"
        client.wait_for_workers(2, timeout=60)


def test_address_and_client_exclude_each_other(dask_cluster):
    with distributed.Client(dask_cluster.address) as client:
        with pytest.raises(ValueError, match="not both"):
            DaskBackend(address=dask_cluster.address, client=client)
    with pytest.raises(ValueError, match="batch_size"):
        DaskBackend(batch_size=0)


def test_backend_is_found_by_name_with_options_from_the_environment(dask_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("BURSTMAP_BACKEND", "dask")
    monkeypatch.setenv("BURSTMAP_BACKEND_ADDRESS", dask_cluster.address)
    with burstmap.Executor(storage=LocalStorage(tmp_path), secret_key=TEST_SECRET,
                           progress=False) as ex:
        assert isinstance(ex.backend, DaskBackend) and ex.backend.address == dask_cluster.address
        assert ex.call_async(slow_square, 3).result(timeout=60) == 9
        assert ex.backend.client is not None
    assert ex.backend.client is None
