"""The executor's calls take the same options: map, call_async, submit (through options) and map_reduce."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET


def flaky(marker):
    """Fail the first time (leaving a mark), succeed the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("first try fails")
    return "second try"


def count_lines(piece):
    return sum(1 for _ in piece.lines())


def test_call_async_and_map_reduce_take_the_options_map_takes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path / "store"),
                           secret_key=TEST_SECRET, progress=False) as ex:
        retried = ex.call_async(flaky, str(tmp_path / "mark"), retries=1, retry_on=(ConnectionError,), worker_retries=0)
        assert retried.result(timeout=60) == "second try"
        total = ex.map_reduce(count_lines, str(data), sum, chunk_size=1000, retries=1, worker_retries=1)
        assert total.result(timeout=60) == 1000
        assert len(ex.map(count_lines, str(data), chunk_size=1000)) == 9


def test_submit_takes_maps_options_through_options(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path / "store"),
                           secret_key=TEST_SECRET, progress=False) as ex:
        patient = ex.options(retries=1, retry_on=(ConnectionError,))
        assert patient.submit(flaky, marker=str(tmp_path / "mark")).result(timeout=60) == "second try"
        with pytest.raises(burstmap.CallTimeoutError):
            ex.options(timeout=0.5).submit(time.sleep, 30).result(timeout=60)
        assert ex.submit(flaky, str(tmp_path / "mark")).result(timeout=60) == "second try"  # plain submit as before
