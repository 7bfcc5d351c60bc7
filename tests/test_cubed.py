"""Cubed arrays computed by `burstmap.cubed.BurstmapExecutor`, in a temporary zarr store."""

import cubed
import cubed.array_api as xp
import numpy as np
import pytest
from cubed.runtime.types import Callback

from burstmap.cubed import BurstmapExecutor

@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


class Tasks(Callback):
    """Remembers every task-end event Cubed sends."""

    def __init__(self):
        self.events = []

    def on_task_end(self, event):
        self.events.append(event)


def test_array_computations_match_numpy(executor, tmp_path):
    spec = cubed.Spec(work_dir=str(tmp_path), allowed_mem="100MB", executor=BurstmapExecutor(executor))
    a_np = np.arange(36.0).reshape(6, 6)
    a = xp.asarray(a_np, chunks=(2, 3), spec=spec)
    b = xp.asarray(a_np.T, chunks=(2, 3), spec=spec)
    tasks = Tasks()
    added, product, total = cubed.compute(xp.add(a, b), xp.matmul(a, b), xp.sum(a), callbacks=[tasks])
    np.testing.assert_array_equal(added, a_np + a_np.T)
    np.testing.assert_allclose(product, a_np @ a_np.T)
    assert total == a_np.sum()
    assert tasks.events and all(e.function_end_tstamp >= e.function_start_tstamp > 0 for e in tasks.events)
    assert all(e.peak_measured_mem_end > 0 for e in tasks.events)


def fail_once(block, marker):
    if not marker.exists():
        marker.write_text("failed once")
        raise OSError("a transient failure")
    return block + 1


@pytest.mark.parametrize("near_executor", ["local"], indirect=True)
def test_cubed_retries_are_burstmap_retries(executor, tmp_path):
    marker = tmp_path / "marker"
    for retries, works in ((0, False), (1, True)):
        marker.unlink(missing_ok=True)
        spec = cubed.Spec(work_dir=str(tmp_path), allowed_mem="100MB",
                          executor=BurstmapExecutor(executor, retries=retries))
        a = xp.ones((4,), chunks=(4,), spec=spec)
        result = cubed.map_blocks(fail_once, a, dtype=a.dtype, marker=marker)
        if works:
            np.testing.assert_array_equal(result.compute(), np.full(4, 2.0))
        else:
            with pytest.raises(OSError, match="transient"):
                result.compute()


def test_name_and_options():
    executor = BurstmapExecutor(retries=5)
    assert executor.name == "burstmap" and executor.kwargs == {"retries": 5}
