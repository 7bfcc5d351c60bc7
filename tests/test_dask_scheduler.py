"""Dask graphs run with burstmap as their scheduler: ``dask.compute(..., scheduler=ex.as_executor())``."""

import os

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest

@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


def where(word):
    return word.upper(), os.getpid()


def test_array_and_bag_graphs(executor):
    x = da.from_array(np.arange(400.0).reshape(20, 20), chunks=(5, 5))
    bag = db.from_sequence(["a", "b", "c", "d", "e", "f"], npartitions=3).map(where)
    product, mean, words = dask.compute(x @ x.T, (x + 1).mean(axis=0), bag, scheduler=executor.as_executor())
    plain = np.arange(400.0).reshape(20, 20)
    np.testing.assert_array_equal(product, plain @ plain.T)
    np.testing.assert_array_equal(mean, (plain + 1).mean(axis=0))
    assert [w for w, _ in words] == ["A", "B", "C", "D", "E", "F"]
    assert os.getpid() not in {pid for _, pid in words}


def fail(x):
    raise ZeroDivisionError(f"task {x}")


def test_a_task_error_is_raised_as_itself(executor):
    with pytest.raises(ZeroDivisionError, match="task 2"):
        db.from_sequence([1, 2, 3], npartitions=3).map(lambda v: v if v != 2 else fail(v)).compute(
            scheduler=executor.as_executor())
