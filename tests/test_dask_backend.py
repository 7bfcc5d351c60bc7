"""The Dask backend on a real scheduler and worker processes: what the shared suite does not cover."""

from __future__ import annotations

import os
import signal
import time

import distributed
import pytest

import burstmap
from burstmap.backends.dask import DaskBackend
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET


def slow_square(x):
    time.sleep(0.1)
    return x * x


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
