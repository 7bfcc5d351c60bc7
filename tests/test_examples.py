"""Every workload in examples/ runs unchanged, at a small size, on the local, Dask and stand-alone backends."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXECUTORS

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))

import flops  # the examples are scripts, importable once their folder is on the path
import gemm
import sort
import storage_bandwidth
import sweep


@pytest.fixture(scope="module", params=["local", "dask", "standalone"])
def ex(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    executor = EXECUTORS[request.param](request, tmp_path_factory.mktemp(f"examples-{request.param}"))
    try:
        yield executor
    finally:
        executor.shutdown()


def test_flops(ex):
    f = flops.run(ex, calls=3, n=96, loops=2)
    assert f["tflop"] == pytest.approx(3 * 2 * 2 * 96**3 / 1e12)
    assert 0 < f["effective_gflops"] <= f["peak_gflops"]


def test_storage_bandwidth(ex):
    f = storage_bandwidth.run(ex, calls=2, mb=2)
    assert f["mb"] == 4 and f["aggregate"] > 0 and f["read_per_call"] > 0


def test_sort(ex):
    with ex.scratch() as space:
        f = sort.run(ex, records=3_000, maps=3, reducers=4, space=space)
        assert f["gb"] == pytest.approx(3e-4)
        runs = b"".join(space.get(name) for name in space.names("sorted/"))
        inputs = b"".join(space.get(name) for name in space.names("input/"))
    lines = runs.splitlines()
    assert lines == sorted(inputs.splitlines()) and len(lines) == 3_000


def test_sort_check_catches_disorder(ex):
    with ex.scratch() as space:
        space.put("sorted/00000", b"b" * 99 + b"\n" + b"a" * 99 + b"\n")
        with pytest.raises(ValueError, match="out of order at record 1"):
            ex.call_async(sort.check_run, 0, extra_args=(space,)).result()
    with pytest.raises(ValueError, match="checksum"):
        sort.validate([{"first": b"a", "last": b"b", "count": 1, "checksum": 5}], expected=6, count=1)


def test_gemm(ex):
    f = gemm.run(ex, n=128, t=32, worker_mb=0.1)
    assert f["gflops"] > 0 and f["compute"] > 0
    with pytest.raises(ValueError, match="exceed one worker"):
        gemm.run(ex, n=128, t=32, worker_mb=1000)


def test_gemm_check_catches_a_wrong_tile(tmp_path):
    from burstmap import Scratch
    from burstmap.storage.local import LocalStorage

    space = Scratch("g", "p", LocalStorage(tmp_path), b"k" * 32)
    for index in range(8):
        gemm.make_tile(index, space, 2, 4)
    for index in range(4):
        gemm.multiply_tile(index, space, 2, 4)
    gemm.freivalds(space, 2, 4)
    space.put(gemm.tile_name("C", 1, 0), (gemm.read_tile(space, "C", 1, 0, 4) + 1e-3).tobytes())
    with pytest.raises(ValueError, match="C is not A @ B"):
        gemm.freivalds(space, 2, 4)


def test_sweep(ex):
    f = sweep.run(ex, points=4, samples=300)
    assert f["fits"] == 4 and 0.5 < f["accuracy"] <= 1
