"""The joblib backend with real joblib and scikit-learn, on the local and Dask backends."""

import hashlib
import os
import pickle
import time

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

import burstmap.joblib
from burstmap.joblib import BurstmapBackend

@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


def pid_and_square(x):
    return os.getpid(), x * x


def sleep_then_fail_if_negative(x):
    time.sleep(abs(x))
    if x < 0:
        raise KeyError("negative")
    return x


def total(array, offset):
    return float(array.sum()) + offset


def test_parallel_runs_tasks_in_other_processes(executor):
    with joblib.parallel_config(backend="burstmap", executor=executor, n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(pid_and_square)(i) for i in range(30))
    assert [square for _, square in out] == [i * i for i in range(30)]
    assert os.getpid() not in {pid for pid, _ in out}


def test_grid_search_matches_a_sequential_one(executor):
    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    grid = {"C": [0.1, 1, 10], "gamma": [1e-3, 1e-4]}
    expected = GridSearchCV(SVC(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="burstmap", executor=executor):
        search = GridSearchCV(SVC(), grid, cv=3, n_jobs=-1).fit(X, y)
    assert search.best_params_ == expected.best_params_
    assert list(search.cv_results_["mean_test_score"]) == list(expected.cv_results_["mean_test_score"])


def test_a_task_error_is_raised_as_itself(executor):
    with joblib.parallel_config(backend="burstmap", executor=executor, n_jobs=2):
        with pytest.raises(KeyError, match="negative"):
            joblib.Parallel()(joblib.delayed(sleep_then_fail_if_negative)(i) for i in [0, 0, -0.01, 0])


@pytest.mark.parametrize("near_executor", ["local"], indirect=True)
def test_a_task_error_cancels_the_tasks_no_worker_took(executor):
    seen = []

    class Recording(BurstmapBackend):
        def submit(self, func, callback=None):
            seen.append(super().submit(func, callback))
            return seen[-1]

    with pytest.raises(KeyError, match="negative"):
        with joblib.parallel_config(backend=Recording(executor=executor), n_jobs=2):
            joblib.Parallel(batch_size=1, pre_dispatch="all")(
                joblib.delayed(sleep_then_fail_if_negative)(i) for i in [-1] + [0.2] * 40)
    assert len(seen) == 41 and sum(f.cancelled() for f in seen) > 20


def test_a_large_shared_array_is_stored_once(executor):
    array = np.random.default_rng(0).random(100_000)
    seen = []

    class Recording(BurstmapBackend):
        def submit(self, func, callback=None):
            seen.append(super().submit(func, callback))
            return seen[-1]

    with joblib.parallel_config(backend=Recording(executor=executor), n_jobs=2):
        out = joblib.Parallel(batch_size=1)(joblib.delayed(total)(array, i) for i in range(6))
    assert out == [float(array.sum()) + i for i in range(6)]
    digest = hashlib.sha256(pickle.dumps(array, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()
    shared = [k for k in executor.storage.list(f"{executor.config.prefix}/shared/") if k.endswith(digest)]
    assert len(shared) == 1 and executor.storage.size(shared[0]) >= array.nbytes
    assert len(seen) == 6 and all(executor.storage.size(f.layout.data) < array.nbytes / 10 for f in seen)


def test_a_tampered_shared_array_is_refused(tmp_path):
    from burstmap.call import call_begins, call_ends
    from burstmap.storage.local import LocalStorage

    store = LocalStorage(tmp_path)
    store.put("shared/abc", b"not what was signed")
    token = call_begins("job", 0, store, b"key")
    try:
        with pytest.raises(burstmap.PayloadRejectedError, match="does not match"):
            burstmap.joblib._load_shared("shared/abc", "0" * 64)
    finally:
        call_ends(token)


def test_n_jobs_and_shared_memory():
    backend = BurstmapBackend(executor=burstmap.Executor(backend={"name": "local", "workers": 3}))
    assert backend.effective_n_jobs(-1) == 3 and backend.effective_n_jobs(-2) == 2 and backend.effective_n_jobs(5) == 5
    with pytest.raises(ValueError, match="no meaning"):
        backend.effective_n_jobs(0)
    with pytest.raises(ValueError, match="no shared memory"):
        backend.configure(2, require="sharedmem")
