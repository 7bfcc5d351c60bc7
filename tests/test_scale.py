"""What keeps a big job cheap: shared arguments stored once, futures that cost little memory."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import weakref

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.job import Layout
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET


def nbytes_and_index(item, blob):
    return len(blob) + item


def noop(x):
    return x


def test_extra_args_are_stored_once_per_job_not_once_per_call(executor):
    blob = os.urandom(2 << 20)
    futures = executor.map(nbytes_and_index, range(20), extra_args=(blob,))
    assert burstmap.get_all_results(futures, timeout=120) == [len(blob) + i for i in range(20)]
    layout = Layout(executor.config.prefix, futures[0].job_id)
    assert executor.storage.size(layout.data) < 1024  # the inputs: twenty small ints, in one signed block
    assert len(blob) < executor.storage.size(layout.func) < 2 * len(blob)  # the blob, once, with the function


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path_factory.mktemp("store")),
                           secret_key=TEST_SECRET, progress=False) as ex:
        yield ex


def test_a_finished_call_costs_the_client_under_400_bytes(local):
    executor = local
    burstmap.get_all_results(executor.map(noop, range(10)), timeout=120)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        futures = executor.map(noop, range(5000))
        results = burstmap.get_all_results(futures, timeout=300)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert results == list(range(5000))
    assert futures[0]._condition is futures[-1]._condition  # one condition per job, not one per call
    assert held / len(futures) < 400, f"{held / len(futures):.0f} bytes per finished call"


def jobs_listing(store, *env: str) -> dict[str, list[str]]:
    """``burstmap jobs`` run as a user would, in a fresh process: each row by job id."""
    proc = subprocess.run([sys.executable, "-m", "burstmap.cli", "--store", f"file://{store}", "jobs"],
                          env={**os.environ, "BURSTMAP_SECRET_KEY": TEST_SECRET}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}


def wait_for_key(storage, key: str) -> None:
    deadline = time.monotonic() + 60
    while not storage.exists(key):
        assert time.monotonic() < deadline, f"{key} never appeared"
        time.sleep(0.01)


def test_listing_jobs_reads_a_finished_jobs_summary_not_its_records(local):
    futures = local.map(noop, range(2500))
    burstmap.get_all_results(futures, timeout=300)
    layout = futures[0].layout
    wait_for_key(local.storage, layout.summary)
    local.storage.delete_prefix(layout.status_prefix)  # the records are gone: only the summary can tell
    row = jobs_listing(local.storage.path)[layout.job_id]
    assert row[2:5] == ["2500", "0", "0"]  # done, failed, pending

    local.storage.delete([layout.summary])
    row = jobs_listing(local.storage.path)[layout.job_id]
    assert row[2:5] == ["0", "0", "2500"]  # counted from the records, of which there are none now
    assert not local.storage.exists(layout.summary)  # an unfinished job's count is never stored


def test_listing_jobs_stores_the_summary_a_finished_job_lacks(local):
    futures = local.map(noop, range(30))
    burstmap.get_all_results(futures, timeout=120)
    layout = futures[0].layout
    wait_for_key(local.storage, layout.summary)
    local.storage.delete([layout.summary])  # as if the client had died right after the last record
    assert jobs_listing(local.storage.path)[layout.job_id][2:5] == ["30", "0", "0"]
    assert local.storage.exists(layout.summary)


def fails_on_seven(x):
    if x == 7:
        raise ValueError("seven is not allowed")
    return x


def test_imap_reads_its_input_lazily_and_yields_in_order(local):
    consumed = []

    def numbers():
        for i in range(2500):
            consumed.append(i)
            yield i

    results = local.imap(noop, numbers(), window=200)
    assert next(results) == 0
    assert len(consumed) <= 400  # two windows: the one being read and the next one running
    assert list(results) == list(range(1, 2500))


def test_imap_unordered_yields_every_result_once(local):
    assert sorted(local.imap_unordered(noop, iter(range(1000)), window=300)) == list(range(1000))


def test_imap_raises_the_first_failed_calls_error_in_its_place(local):
    seen = []
    with pytest.raises(ValueError, match="seven is not allowed"):
        for value in local.imap(fails_on_seven, range(50), window=4):
            seen.append(value)
    assert seen == list(range(7))


def wait_for_file(x, path):
    """Hold a worker until ``path`` exists (a barrier the test lifts)."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return x


class Barrier:
    """Both local workers held by a call each until `release`: calls mapped meanwhile stay pending."""

    def __init__(self, executor, path) -> None:
        self.path = str(path)
        self.blockers = executor.map(wait_for_file, range(2), extra_args=(self.path,))
        deadline = time.monotonic() + 60
        while not all(f.running() for f in self.blockers):
            assert time.monotonic() < deadline, "the holding calls never started"
            time.sleep(0.005)

    def release(self) -> None:
        open(self.path, "w").close()
        assert burstmap.get_all_results(self.blockers, timeout=120) == [0, 1]


@pytest.fixture
def held(local, tmp_path):
    barrier = Barrier(local, tmp_path / "go")
    try:
        yield barrier
    finally:
        barrier.release()


def test_a_pending_call_costs_the_client_a_few_tens_of_bytes(local, held):
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        futures = local.map(noop, range(20_000))
        gc.collect()
        cost = (tracemalloc.get_traced_memory()[0] - before) / len(futures)
    finally:
        tracemalloc.stop()
    assert local._watcher.unfinished()[futures.job_ids[0]] == 20_000  # none has run yet
    assert cost < 40, f"{cost:.0f} bytes per pending call"
    assert futures.cancel() == 20_000


def test_a_future_is_made_when_read_and_not_kept_once_dropped(local, held):
    futures = local.map(noop, range(100))
    future = futures[7]
    assert futures[7] is future and futures[-93] is future and list(futures[6:8])[1] is future
    seen = weakref.ref(future)
    del future
    gc.collect()
    assert seen() is None

    called = threading.Event()
    futures[8].add_done_callback(lambda f: called.set())  # nobody holds this future: its callback keeps it
    assert futures[9].cancel()
    gc.collect()
    assert futures[9].cancelled() and not futures[8].done()  # the call keeps its state, whatever its future
    held.release()
    assert called.wait(120)
    assert [f.result(timeout=120) for f in futures[:9] + futures[10:]] == [i for i in range(100) if i != 9]
    with pytest.raises(cf.CancelledError):
        burstmap.get_all_results(futures, timeout=120)


def first_call_marks(x, folder):
    if x == 0:
        open(os.path.join(folder, "started"), "w").close()
    return x


def test_map_over_a_generator_starts_calls_before_the_generator_ends(local, tmp_path):
    def items():
        for i in range(5000):
            if i == 4000:  # well past the first part: it goes on only once call 0 has run
                wait_for_file(None, tmp_path / "started")
            yield i

    futures = local.map(first_call_marks, items(), extra_args=(str(tmp_path),))
    assert isinstance(futures, burstmap.Futures) and len(futures) == 5000 and len(futures.job_ids) > 1  # stored in parts, one job each
    assert burstmap.get_all_results(futures, timeout=300) == list(range(5000))
    assert [f.call_id for f in futures[1023:1026]] == [1023, 0, 1]  # the second part's calls are its own
    assert burstmap.wait(futures[::-1], burstmap.ALWAYS).done[0] is futures[4999]


def test_map_over_a_generator_that_fails_cancels_the_parts_it_started(local, held):
    def items():
        yield from range(3000)
        raise KeyError("the input ran dry")

    with pytest.raises(KeyError, match="ran dry"):
        local.map(noop, items())
    assert dict(local._watcher.unfinished()) == {held.blockers.job_ids[0]: 2}  # only the held calls are open


class Big:
    """A result that can be watched for being freed."""

    def __init__(self, x):
        self.x = x


def test_imap_keeps_no_result_it_has_yielded(local):
    for value in local.imap(Big, range(50), window=20):
        seen = weakref.ref(value)
        del value
        gc.collect()
        assert seen() is None
