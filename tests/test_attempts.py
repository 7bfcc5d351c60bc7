"""The attempts policy on a real local store: re-run or a final record, and a durable status is final."""

from __future__ import annotations


import pytest

from burstmap.attempts import Attempts, how_it_ended
from burstmap.job import Batch, CallState, Layout, Manifest, Record, finished_calls, read_record
from burstmap.storage.local import LocalStorage

KEY = b"k" * 32


@pytest.fixture
def store(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path)


@pytest.fixture
def batch() -> Batch:
    return Batch.of(Manifest("job-1", "pre", "f", ((0, 0), (4, 4)), 1.0, "host", timeout=2.0, worker_retries=1),
                    range(4))


def record(store: LocalStorage, call_id: int) -> Record:
    return read_record(store, KEY, Layout("pre", "job-1"), call_id)


def store_ok(store: LocalStorage, call_id: int) -> None:
    store.put(Layout("pre", "job-1").status(call_id), Record(call_id, CallState.OK).encode(KEY, "job-1"))


def test_a_death_within_the_budget_is_a_re_run_and_past_it_a_died_record(store, batch):
    attempts = Attempts(store, KEY, "w")
    task = batch.tasks[0]
    again = attempts.died(task, 1, "worker w", "killed by SIGKILL")
    assert again.attempt == 2 and not finished_calls(store, Layout("pre", "job-1"), [0])
    assert attempts.died(again, 1, "worker w", "killed by SIGKILL") is None
    died = record(store, 0)
    assert died.state is CallState.DIED and died.attempt == 2
    assert died.error["message"] == ("call job-1/00000: worker w died (killed by SIGKILL) while running it, "
                                     "in attempt 2 of 2")


def test_a_durable_status_is_never_blamed_timed_out_or_overwritten(store, batch):
    attempts = Attempts(store, KEY, "w")
    store_ok(store, 1)
    assert attempts.died(batch.tasks[1]._replace(attempt=5), 1, "worker w", "exit code 9") is None
    attempts.timed_out(batch.tasks[1], 2.0, "worker w")
    attempts.rejected(list(batch.tasks[:2]), "another key")
    assert record(store, 1).state is CallState.OK
    assert record(store, 0).state is CallState.REJECTED


def test_a_timeout_is_final_and_says_which_limit(store, batch):
    Attempts(store, KEY, "w").timed_out(batch.tasks[2], 2.0, "its process on w")
    stopped = record(store, 2)
    assert stopped.state is CallState.TIMEOUT
    assert stopped.error["message"] == "call job-1/00002 ran past its timeout of 2s and its process on w was stopped"


def test_redeliveries_blame_the_call_each_lost_delivery_was_running(store, batch):
    attempts = Attempts(store, KEY, "w")
    assert attempts.begin(batch) == list(batch.tasks)
    store_ok(store, 0)
    second = attempts.begin(batch)
    assert [(t.call_id, t.attempt) for t in second] == [(1, 2), (2, 1), (3, 1)]
    third = attempts.begin(batch)
    assert [(t.call_id, t.attempt) for t in third] == [(2, 1), (3, 1)]
    assert record(store, 1).state is CallState.DIED


def test_a_delivery_ended_by_a_timeout_blames_no_call(store, batch):
    attempts = Attempts(store, KEY, "w")
    attempts.begin(batch)
    attempts.timed_out(batch.tasks[0], 2.0, "w")
    attempts.end_by_timeout(batch, 1, 0)
    assert [(t.call_id, t.attempt) for t in attempts.begin(batch)] == [(1, 1), (2, 1), (3, 1)]


def test_a_copy_of_a_finished_delivery_runs_nothing(store, batch):
    attempts = Attempts(store, KEY, "w")
    attempts.begin(batch)
    for call_id in range(4):
        store_ok(store, call_id)
    assert attempts.begin(batch) == []


def test_how_a_process_ended():
    assert how_it_ended(-9) == "killed by SIGKILL" and how_it_ended(3) == "exit code 3"
