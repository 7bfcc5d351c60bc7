"""Statistics of real jobs read from status records: from the store and from futures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from burstmap.errors import JobNotFoundError
from burstmap.job import Layout
from burstmap.stats import job_stats, stats, summarize
from burstmap.storage.local import LocalStorage

from .real_jobs import FAILING, N_CALLS, SECRET, SLOW, new_executor, square, unstarted_job, wait_done

KEY = SECRET.encode()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def executor(store: Path) -> Iterator:
    ex = new_executor(store)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def futures(executor) -> list:
    return wait_done(executor.map(square, range(N_CALLS)))


def test_counts_by_state(store, futures):
    summary = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)["summary"]
    assert summary["states"] == {"ok": N_CALLS - 1, "error": 1}
    assert (summary["calls"], summary["done"], summary["failed"], summary["pending"], summary["corrupt"]) == (
        N_CALLS, N_CALLS - 1, 1, 0, 0)


def test_per_call_times_add_up(store, futures):
    calls = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)["calls"]
    assert [c["call_id"] for c in calls] == list(range(N_CALLS))
    for c in calls:
        assert c["queue_wait"] >= 0 and c["setup"] >= 0 and c["compute"] >= 0 and c["overhead"] >= 0
        # times of day as floats are exact to ~0.2 us, so the parts add up to the whole within a microsecond
        assert c["setup"] + c["compute"] + c["overhead"] == pytest.approx(c["duration"], abs=1e-6)
        assert c["worker"] and c["host"] and c["attempt"] == 1 and c["peak_rss"] > 0
    assert calls[SLOW]["compute"] >= 1.0
    assert calls[FAILING]["state"] == "error" and calls[FAILING]["error"] == "builtins.ValueError"


def test_job_totals(store, futures):
    summary = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)["summary"]
    calls = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)["calls"]
    assert summary["wall_time"] >= max(c["duration"] for c in calls)
    assert summary["throughput"] == pytest.approx(N_CALLS / summary["wall_time"])
    assert 0 <= summary["overhead_fraction"] < 1
    assert summary["queue_wait_max"] == max(c["queue_wait"] for c in calls)


def test_the_slow_call_is_the_only_straggler(store, futures):
    summary = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)["summary"]
    assert [s["call_id"] for s in summary["stragglers"]] == [SLOW]
    assert summary["stragglers"][0]["duration"] >= 1.0


def test_stats_of_futures_matches_the_store(store, futures):
    from_futures = stats(futures, KEY)
    from_store = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)
    assert from_futures["calls"] == from_store["calls"]
    assert from_futures["summary"] == from_store["summary"]
    subset = stats(futures[:3], KEY)
    assert [c["call_id"] for c in subset["calls"]] == [0, 1, 2] and subset["summary"]["calls"] == 3


def test_stats_of_futures_of_two_jobs(executor, futures):
    more = wait_done(executor.map(square, [10, 11]))
    report = stats([*futures, *more], KEY)
    assert report["job_ids"] == [futures[0].job_id, more[0].job_id]
    assert report["summary"]["calls"] == N_CALLS + 2 and report["summary"]["done"] == N_CALLS + 1


def test_a_job_that_has_not_run_is_all_pending(store):
    unstarted_job(LocalStorage(store), "unstarted-0000", time.time(), n_calls=4)
    summary = job_stats(LocalStorage(store), KEY, "burstmap", "unstarted-0000")["summary"]
    assert summary["pending"] == 4 and summary["done"] == 0
    assert summary["wall_time"] is None and summary["throughput"] is None and summary["stragglers"] == []


def test_corrupt_records_are_counted_from_the_store_and_from_futures(store, executor):
    job = wait_done(executor.map(square, [0, 1, 2]))[0].job_id
    storage = LocalStorage(store)
    storage.put(Layout("burstmap", job).status(2), b"BMS1\n{not json")
    assert job_stats(storage, KEY, "burstmap", job)["summary"]["corrupt"] == 1
    attached = wait_done(executor.attach(job))
    summary = stats(attached, KEY)["summary"]
    assert (summary["done"], summary["corrupt"]) == (2, 1)


def test_unknown_job(store):
    with pytest.raises(JobNotFoundError, match="no job 'nope'"):
        job_stats(LocalStorage(store), KEY, "burstmap", "nope")


def test_stragglers_are_calls_over_twice_the_median():
    rows = [{"job_id": "j", "call_id": i, "state": "ok", "end": 10.0 + d, "duration": d, "compute": d / 2,
             "queue_wait": 0.5, "worker": "w"} for i, d in enumerate([1.0, 1.0, 1.0, 2.0, 2.1, 5.0, 1.0])]
    summary = summarize(rows, submitted=9.0)
    assert [s["call_id"] for s in summary["stragglers"]] == [5, 4]
    assert summary["overhead_fraction"] == pytest.approx(0.5)
    assert summary["wall_time"] == pytest.approx(6.0)
    assert summary["cost"] is None


def test_lambda_calls_add_up_to_a_cost():
    from burstmap.job import CallState, Record
    from burstmap.stats import PRICE_PER_GB_SECOND, gb_seconds

    record = Record(0, CallState.OK, start=1.0, end=2.0, info={"billed_ms": 1500, "memory_mb": 2048})
    assert gb_seconds(record) == pytest.approx(3.0)
    assert gb_seconds(Record(1, CallState.OK, start=1.0, end=2.0)) is None
    rows = [{"job_id": "j", "call_id": 0, "state": "ok", "end": 2.0, "duration": 1.0, "compute": 1.0,
             "queue_wait": 0.0, "worker": "w", "gb_seconds": 3.0}]
    assert summarize(rows, submitted=1.0)["cost"] == pytest.approx(3.0 * PRICE_PER_GB_SECOND)


def test_executor_stats_matches_the_store(executor, store, futures):
    from_futures = executor.stats(futures)
    from_store = job_stats(LocalStorage(store), KEY, "burstmap", futures[0].job_id)
    assert from_futures["summary"] == from_store["summary"]
    assert from_futures["summary"]["calls"] == N_CALLS


def test_quick_calls_are_not_stragglers_for_scheduler_noise():
    rows = [{"job_id": "j", "call_id": i, "state": "ok", "end": 10.0 + d, "duration": d, "compute": d / 2,
             "queue_wait": 0.0, "worker": "w"} for i, d in enumerate([0.0001] * 50 + [0.0009] * 40 + [0.2])]
    assert [s["call_id"] for s in summarize(rows, submitted=9.0)["stragglers"]] == [90]
