"""The local pool with real worker processes: killed from outside, timed out, shut down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET


def announce_then_sleep(args):
    """Write this worker's pid where the test can read it, then run long enough to be killed."""
    folder, index = args
    Path(folder, f"{index}.pid").write_text(str(os.getpid()))
    time.sleep(1.0)
    return index


def wait_for(path: Path, timeout: float = 60) -> str:
    """The text of ``path`` once it has some (it may exist, empty, for an instant before it is written)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return path.read_text()


@pytest.fixture
def pool_executor(tmp_path):
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path / "store"),
                           secret_key=TEST_SECRET, progress=False)
    yield ex
    ex.shutdown()


def test_worker_killed_from_outside_loses_nothing(pool_executor, tmp_path):
    futures = pool_executor.map(announce_then_sleep, [(str(tmp_path), i) for i in range(6)])
    victim = int(wait_for(tmp_path / "0.pid"))
    os.kill(victim, signal.SIGKILL)
    assert burstmap.get_all_results(futures, timeout=120) == list(range(6))
    assert futures[0].status["attempt"] == 2
    assert victim not in pool_executor.backend.worker_pids()
    assert len(pool_executor.backend.worker_pids()) == 2


def test_shutdown_ends_every_worker(tmp_path):
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path), secret_key=TEST_SECRET)
    assert ex.call_async(abs, -1).result(timeout=60) == 1
    pids = ex.backend.worker_pids()
    ex.shutdown()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError, match="shut down"):
        ex.map(abs, [1])


def test_progress_bar_only_when_asked(pool_executor, capsys):
    burstmap.get_all_results(pool_executor.map(abs, range(5)), progress=True)
    assert "burstmap" in capsys.readouterr().err
    burstmap.wait(pool_executor.map(time.sleep, ["not a number", 0.3]), progress=True)
    err = capsys.readouterr().err
    assert "failed=1" in err
    assert err.splitlines()[-1].startswith("burstmap: 2 of 2 calls done (1 failed) in ")  # the bar leaves a summary
    burstmap.get_all_results(pool_executor.map(abs, range(5)))
    assert capsys.readouterr().err == ""
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=pool_executor.storage, secret_key=TEST_SECRET,
                           progress=True) as chatty:
        burstmap.get_all_results(chatty.map(abs, range(5)))
    assert "burstmap" in capsys.readouterr().err


def test_bad_worker_count_is_a_clear_error():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        LocalBackend(workers=0)


UNGUARDED = """
import sys, burstmap
from burstmap.storage.local import LocalStorage

def f(x):
    return x * x

ex = burstmap.Executor(storage=LocalStorage(sys.argv[-1]), secret_key="k", progress=False)
print(burstmap.get_all_results(ex.map(f, range(3)), timeout=120))
"""


@pytest.mark.parametrize("how", ["file", "stdin", "-c"])
def test_a_script_without_main_guard_just_works(tmp_path, how):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    store = str(tmp_path / "store")
    command, stdin = {"file": ([str(script), store], None), "stdin": (["-", store], UNGUARDED),
                      "-c": (["-c", UNGUARDED, store], None)}[how]
    out = subprocess.run([sys.executable, *command], input=stdin, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "[0, 1, 4]\n"
    assert out.stderr == ""


CUSTOM_STORE = """
import sys, burstmap
from burstmap.storage.local import LocalStorage

class MyStore(LocalStorage):
    pass

ex = burstmap.Executor(storage=MyStore(sys.argv[1]), secret_key="k", progress=False)
print(burstmap.get_all_results(ex.map(abs, range(3)), return_exceptions=True, timeout=120))
"""


def test_workers_that_cannot_start_fail_the_calls_with_their_own_error(tmp_path):
    script = tmp_path / "custom_store.py"
    script.write_text(CUSTOM_STORE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("WorkerDiedError") == 3
    assert "exit while starting (exit code 1): AttributeError: Can't get attribute 'MyStore'" in out.stdout


def test_workers_killed_while_starting_are_replaced_and_lose_nothing(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(tmp_path), secret_key=TEST_SECRET,
                           progress=False) as ex:
        futures = ex.map(announce_then_sleep, [(str(tmp_path), i) for i in range(3)], worker_retries=10)
        killed = [int(wait_for(tmp_path / "0.pid"))]
        os.kill(killed[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(killed) < 4:
            assert time.monotonic() < deadline, "no replacement worker appeared"
            pids = [p for p in ex.backend.worker_pids() if p not in killed]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.005)
        assert burstmap.get_all_results(futures, timeout=120) == [0, 1, 2]


def test_leaving_the_with_block_waits_for_the_calls(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path), secret_key=TEST_SECRET,
                           progress=False) as ex:
        futures = ex.map(time.sleep, [0.2] * 4)
    assert all(f.done() and f.exception() is None for f in futures)


class BrokenBoard:
    """A client side whose bookkeeping fails once calls are handed out: the dispatcher cannot go on."""

    def __init__(self) -> None:
        self.failed: dict[int, BaseException] = {}
        self.all_failed = threading.Event()

    def take(self, job_id, call_ids):
        raise RuntimeError("injected bookkeeping fault")

    def fail(self, job_id, call_ids, error):
        self.failed.update((i, error) for i in call_ids)
        if len(self.failed) == 3:
            self.all_failed.set()


def test_a_dispatcher_that_cannot_go_on_fails_the_calls_it_holds_and_the_next_ones(tmp_path):
    from burstmap.job import Manifest

    board = BrokenBoard()
    backend = LocalBackend(workers=1)
    backend.start(LocalStorage(tmp_path), TEST_SECRET.encode(), board)
    manifest = Manifest("job-of-3", "burstmap", "square", ((0, 0), (3, 30)), 0.0, "here")
    try:
        backend.run(manifest, [0, 1])
        while len(board.failed) < 2:
            time.sleep(0.01)
        backend.run(manifest, [2])
        assert board.all_failed.wait(60), f"only {sorted(board.failed)} failed"
        assert "local backend's dispatcher failed (RuntimeError: injected bookkeeping fault)" in str(board.failed[2])
        for pid in backend.worker_pids():  # the broken pool's workers were stopped with it
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        backend.shutdown()


def hang_until(release):
    """Wait until the test lets it go: a call with no timeout that runs as long as it likes."""
    while not Path(release).exists():
        time.sleep(0.01)
    return "released"


def test_a_call_without_timeout_does_not_hold_the_calls_queued_behind_it(pool_executor, tmp_path):
    release = tmp_path / "release"
    (hanging,) = pool_executor.map(hang_until, [str(release)])  # one worker takes it first
    try:
        quick = pool_executor.map(abs, range(2000))  # once measured, its batches are also sent ahead to that worker
        done, not_done = burstmap.wait(quick, timeout=120)
        assert not not_done, f"{len(not_done)} calls queued behind the hanging one never ran"
        assert not hanging.done()
    finally:
        release.write_text("go")
    assert hanging.result(timeout=120) == "released"
