"""The life of a future: pending until a worker takes its call, cancellable until then, and always finished.

Real worker processes throughout. Calls that must still be running at some point wait for a gate
file the test creates; the test waits for conditions (a file, a future's state), never for time.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import logging
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import (
    BurstmapError,
    ExecutorShutdownError,
    RemoteError,
    SerializationError,
    StorageError,
    WorkerDiedError,
)
from burstmap.future import RemoteTraceback
from burstmap.job import Layout
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET, subprocess_env


def executor(store: Path, storage: LocalStorage | None = None) -> burstmap.Executor:
    return burstmap.Executor(backend=LocalBackend(workers=2), storage=storage or LocalStorage(store),
                             secret_key=TEST_SECRET, progress=False)


@pytest.fixture
def ex(tmp_path: Path) -> Iterator[burstmap.Executor]:
    with executor(tmp_path / "store") as ex:
        yield ex


def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait for a condition another process or thread brings about; fail naming it if it never comes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.005)


def gated(i: int, folder: str) -> int:
    """Say that call ``i`` started, then wait for the test to open the gate."""
    Path(folder, f"started-{i}").touch()
    while not Path(folder, "gate").exists():
        time.sleep(0.005)
    return i


def mark(i: int, folder: str) -> int:
    """Leave a trace that call ``i`` ran."""
    Path(folder, f"ran-{i}").touch()
    return i


def block_both_workers(ex: burstmap.Executor, folder: Path) -> list[burstmap.ResponseFuture]:
    """Two gated calls, each running on one of the two workers, so that further calls wait in the backend."""
    blockers = ex.map(gated, range(2), extra_args=[str(folder)])
    until(lambda: all((folder / f"started-{i}").exists() for i in range(2)), "both workers starting a call")
    return blockers


def test_attaching_a_watched_job_again_finishes_both_sets_of_futures(ex, tmp_path):
    first = ex.map(gated, range(10), extra_args=[str(tmp_path)])
    again = ex.attach(first[0].job_id)
    assert not any(f.done() for f in first + again)
    (tmp_path / "gate").touch()
    assert burstmap.get_all_results(first, timeout=60) == list(range(10))
    assert burstmap.get_all_results(again, timeout=60) == list(range(10))


def raise_it(error: BaseException) -> None:
    raise error


class Custom(BaseException):
    pass


@pytest.mark.parametrize("error", [SystemExit(0), SystemExit("bye"), KeyboardInterrupt(), GeneratorExit(),
                                   Custom("odd")], ids=repr)
def test_a_base_exception_raised_by_a_call_arrives_as_a_remote_error(ex, error):
    future = ex.submit(raise_it, error)
    with pytest.raises(RemoteError, match=type(error).__qualname__) as info:
        future.result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in raise_it" in info.value.__cause__.text
    assert ex.submit(pow, 2, 5).result(timeout=60) == 32


class ExitWhenLoaded:
    """A result that pickles fine in the worker and raises SystemExit when unpickled by the client."""

    def __reduce__(self) -> tuple:
        return sys.exit, (3,)


def exit_when_loaded(i: int, size: int = 0) -> object:
    return [bytes(size), ExitWhenLoaded()] if i == 1 else i


def test_a_result_that_exits_when_unpickled_fails_only_its_future(ex):
    futures = ex.map(exit_when_loaded, range(3))
    assert futures[0].result(timeout=60) == 0 and futures[2].result(timeout=60) == 2
    with pytest.raises(SerializationError, match="SystemExit"):
        futures[1].result()
    assert ex.submit(pow, 2, 3).result(timeout=60) == 8


def test_a_large_result_that_exits_when_unpickled_fails_its_future(ex):
    future = ex.submit(exit_when_loaded, 1, 3 << 20)
    with pytest.raises(SerializationError, match="SystemExit"):
        future.result(timeout=60)
    assert future.record.output_key is not None


def large_result_that_exits_when_loaded(results: list) -> object:
    return exit_when_loaded(1, 3 << 20)


def test_a_reduce_whose_large_result_cannot_be_loaded_fails_instead_of_hanging(ex):
    outcome = ex.reduce(large_result_that_exits_when_loaded, ex.map(abs, range(3)))
    with pytest.raises(SerializationError, match="SystemExit"):
        outcome.result(timeout=60)


def test_a_future_is_pending_until_a_worker_takes_its_call_and_can_be_cancelled_until_then(ex, tmp_path):
    blockers = block_both_workers(ex, tmp_path)
    assert all(f.running() for f in blockers)
    queued = ex.submit(mark, 0, str(tmp_path))
    assert not queued.running() and not queued.done()
    assert queued.cancel()
    (tmp_path / "gate").touch()
    follower = ex.submit(mark, 1, str(tmp_path))
    assert follower.result(timeout=60) == 1
    assert burstmap.get_all_results(blockers, timeout=60) == [0, 1]
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=0)
    assert not (tmp_path / "ran-0").exists()


def test_waiting_on_cancelled_futures_returns_while_the_workers_are_still_busy(ex, tmp_path):
    blockers = block_both_workers(ex, tmp_path)
    queued = ex.map(mark, range(300), extra_args=[str(tmp_path)])  # more than the workers are sent ahead
    assert all(f.cancel() for f in queued)
    done, not_done = cf.wait(queued, timeout=60)
    assert len(done) == 300 and not not_done
    assert not (tmp_path / "gate").exists() and not any(f.done() for f in blockers)
    (tmp_path / "gate").touch()
    assert burstmap.get_all_results(blockers, timeout=60) == [0, 1]
    assert not list(tmp_path.glob("ran-*"))


def test_shutdown_cancel_futures_cancels_the_calls_no_worker_took(tmp_path):
    ex = executor(tmp_path / "store")
    blockers = block_both_workers(ex, tmp_path)
    queued = [ex.submit(mark, i, str(tmp_path)) for i in range(5)]
    shutting = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
    shutting.start()
    until(lambda: all(f.cancelled() for f in queued), "shutdown cancelling the queued calls")
    (tmp_path / "gate").touch()
    shutting.join()
    assert [f.result() for f in blockers] == [0, 1]
    assert not list(tmp_path.glob("ran-*"))


def test_shutdown_without_wait_fails_unfinished_calls_with_how_to_resume_them(tmp_path):
    ex = executor(tmp_path / "store")
    blockers = block_both_workers(ex, tmp_path)
    queued = ex.map(mark, range(3), extra_args=[str(tmp_path)])
    ex.shutdown(wait=False)
    for future in blockers + queued:
        with pytest.raises(ExecutorShutdownError, match=rf"ex\.attach\('{future.job_id}', resume=True\)"):
            future.result(timeout=0)
    (tmp_path / "gate").touch()
    with executor(tmp_path / "store") as again:
        assert burstmap.get_all_results(again.attach(blockers[0].job_id, resume=True), timeout=60) == [0, 1]
        assert burstmap.get_all_results(again.attach(queued[0].job_id, resume=True), timeout=60) == [0, 1, 2]


def test_an_executor_cannot_be_used_after_shutdown(tmp_path):
    ex = executor(tmp_path / "store")
    job = ex.map(abs, [-8])
    ex.shutdown()
    assert job[0].result() == 8
    with pytest.raises(RuntimeError, match="shut down"):
        ex.submit(pow, 2, 5)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.attach(job[0].job_id)


EXITS_WITHOUT_SHUTDOWN = """
import atexit, sys, time
import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

def slow_square(x):
    time.sleep(0.2)
    return x * x

if __name__ == "__main__":
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(sys.argv[1]),
                           secret_key=sys.argv[2], progress=False)
    futures = ex.map(slow_square, range(6))
    atexit.register(lambda: print(futures[0].job_id, [f.result(timeout=0) for f in futures]))
"""


def test_the_end_of_the_program_waits_for_its_calls(tmp_path):
    """Like `concurrent.futures`: a script that never shuts its executor down still gets every result, quietly."""
    script = tmp_path / "script.py"
    script.write_text(EXITS_WITHOUT_SHUTDOWN)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), TEST_SECRET], capture_output=True,
                         check=False, text=True, timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    job_id, results = out.stdout.split(" ", 1)
    assert results.strip() == str([x * x for x in range(6)])
    with executor(tmp_path / "store") as ex:
        assert burstmap.get_all_results(ex.attach(job_id), timeout=60) == [x * x for x in range(6)]


def test_errors_are_also_their_standard_counterparts():
    assert issubclass(WorkerDiedError, BrokenProcessPool) and issubclass(WorkerDiedError, BurstmapError)
    assert issubclass(SerializationError, pickle.PicklingError) and issubclass(SerializationError, TypeError)
    error = pickle.loads(pickle.dumps(WorkerDiedError("gone")))
    assert type(error) is WorkerDiedError and str(error) == "gone"


USER_MODULE = """
class Box:
    def __init__(self, value):
        self.value = value


def unbox_twice(box):
    return 2 * box.value
"""


def test_map_from_many_threads_at_once_ships_the_users_module_by_value(ex, tmp_path, monkeypatch):
    """The module is on no import path, so no worker can import it: every thread's pickles must carry it."""
    name = f"lifecycle_user_module_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, name, module)
    start = threading.Barrier(8)

    def one_thread(t: int) -> list[int]:
        start.wait()
        futures = ex.map(module.unbox_twice, [module.Box(t * 1000 + i) for i in range(300)])
        return burstmap.get_all_results(futures, timeout=120)

    with cf.ThreadPoolExecutor(8) as threads:
        results = list(threads.map(one_thread, range(8)))
    assert results == [[2 * (t * 1000 + i) for i in range(300)] for t in range(8)]


def test_the_manifest_is_written_last(tmp_path):
    """A job whose data could not be written is never listed: its manifest was not written either."""
    storage = RefusingData(tmp_path / "store")
    with executor(tmp_path / "store", storage) as ex:
        with pytest.raises(StorageError, match="refused"):
            ex.map(abs, [1, 2])
        assert list(storage.list(Layout.manifests(ex.config.prefix))) == []
        assert list(storage.list(f"{ex.config.prefix}/jobs/")) != []


class RefusingData(LocalStorage):
    """A store that refuses to write a job's data object."""

    def put(self, key: str, data: bytes) -> None:
        if key.endswith("/data.pickle"):
            raise StorageError(f"refused {key}")
        super().put(key, data)


class BreakingList(LocalStorage):
    """A store whose LIST raises ``error`` once it is set: a bug in the client, not an outage."""

    error: BaseException | None = None

    def list(self, prefix: str) -> Iterator[str]:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return super().list(prefix)


@pytest.mark.parametrize("error, expected", [(RuntimeError("a bug"), RuntimeError),
                                             (SystemExit("odd"), BurstmapError)], ids=["Exception", "SystemExit"])
def test_an_unexpected_error_while_watching_fails_the_calls_watched_and_is_logged(tmp_path, caplog, error, expected):
    storage = BreakingList(tmp_path / "store")
    with executor(tmp_path / "store", storage) as ex:
        futures = ex.map(gated, range(2), extra_args=[str(tmp_path)])
        with caplog.at_level(logging.ERROR, logger="burstmap.watcher"):
            storage.error = error
            cf.wait(futures, timeout=60)
        (tmp_path / "gate").touch()
        for future in futures:
            assert isinstance(future.exception(timeout=0), expected)
            assert type(error).__name__ in str(future.exception()) or future.exception() is error
        assert "watching" in caplog.text and type(error).__name__ in caplog.text
        assert ex.submit(pow, 3, 2).result(timeout=60) == 9


class BreakingStatusGet(LocalStorage):
    """A store whose GET of a status object raises ``error`` once: a bug while reading outcomes, not an outage."""

    error: BaseException | None = None

    def get(self, key: str) -> bytes:
        if "/status/" in key:
            error, self.error = self.error, None
            if error is not None:
                raise error
        return super().get(key)


def test_an_unexpected_error_while_reading_outcomes_fails_the_calls_being_read(tmp_path):
    storage = BreakingStatusGet(tmp_path / "store")
    storage.error = RuntimeError("a bug while reading")
    with executor(tmp_path / "store", storage) as ex:
        futures = ex.map(abs, range(50))
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done
        failed = [f for f in futures if f.exception() is not None]
        assert failed and all("a bug while reading" in str(f.exception()) for f in failed)
        assert ex.submit(pow, 3, 2).result(timeout=60) == 9


class ExitsWhenPickled:
    """A reduce function whose pickling raises ``SystemExit`` inside the last map future's callback."""

    def __call__(self, results: list) -> int:
        return sum(results)

    def __reduce__(self):
        raise SystemExit(3)


def test_a_reduce_that_cannot_be_submitted_fails_its_future_instead_of_hanging(ex):
    lock = threading.Lock()
    unpicklable = ex.reduce(lambda results: (lock, sum(results)), ex.map(abs, [-1, -2]))
    with pytest.raises(SerializationError, match="cannot pickle function"):
        unpicklable.result(timeout=60)
    exiting = ex.reduce(ExitsWhenPickled(), ex.map(abs, [-1, -2]))
    with pytest.raises(burstmap.BurstmapError, match="SystemExit: 3"):
        exiting.result(timeout=60)
    assert ex.reduce(sum, ex.map(abs, [-1, -2])).result(timeout=60) == 3


def exit_program(future: cf.Future) -> None:
    raise SystemExit(3)


def test_a_callback_that_exits_stops_no_other_futures_callbacks(ex, caplog):
    futures = ex.map(str, range(20))
    ran: list[int] = []
    futures[0].add_done_callback(exit_program)  # its group's futures are finished together, in one pass
    for future in futures[1:]:
        future.add_done_callback(lambda f: ran.append(f.call_id))
    assert burstmap.get_all_results(futures, timeout=60) == [str(i) for i in range(20)]
    until(lambda: len(ran) == 19, "every other callback ran")
    assert sorted(ran) == list(range(1, 20))
    assert any("done callback" in r.getMessage() for r in caplog.records)
