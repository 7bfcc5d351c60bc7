"""The fault suite every backend passes: calls that crash their worker, deaths right after a status was
stored, processes a call started, and calls that hold the GIL past their deadline. Every call ends, with
its correct result or a one-line error, and no other call's result is lost."""

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
from burstmap import CallTimeoutError, WorkerDiedError
from burstmap.job import Layout

from .conftest import TEST_SECRET, subprocess_env


def count_run(folder: str, x: int) -> Path:
    """Leave one file per run of call ``x``, so a test can count how often it ran."""
    marker = Path(folder) / f"{x}.{os.getpid()}.{time.monotonic_ns()}"
    marker.write_text("ran")
    return marker


def crash_every_third(args):
    """Ends its own worker process for every third input (as an out-of-memory kill would)."""
    folder, x = args
    count_run(folder, x)
    if x % 3 == 0:
        os._exit(9)
    return x * 2


def runs_of(folder: Path, x: int) -> int:
    return len(list(folder.glob(f"{x}.*")))


def test_calls_that_end_their_worker_never_hang_the_others(executor, tmp_path):
    futures = executor.map(crash_every_third, [(str(tmp_path), x) for x in range(12)], worker_retries=0)
    done, not_done = burstmap.wait(futures, timeout=120)
    assert not not_done
    for x, future in enumerate(futures):
        if x % 3 == 0:
            with pytest.raises(WorkerDiedError, match="in attempt 1 of 1"):
                future.result()
            assert "\n" not in str(future.exception())
        else:
            assert future.result() == x * 2
    assert [runs_of(tmp_path, x) for x in range(0, 12, 3)] == [1, 1, 1, 1]


def die_soon_after(args):
    """Return at once, but end this worker process shortly after: its status is already stored."""
    folder, x = args
    count_run(folder, x)

    def end():
        time.sleep(0.3)
        os._exit(9)

    threading.Thread(target=end, daemon=True).start()
    return x


def test_a_worker_that_dies_after_storing_a_status_is_not_blamed_for_it(executor, tmp_path):
    future = executor.map(die_soon_after, [(str(tmp_path), 0)], worker_retries=0)[0]
    assert future.result(timeout=60) == 0
    (marker,) = tmp_path.glob("0.*")
    pid = int(marker.name.split(".")[1])
    deadline = time.monotonic() + 30
    while alive(pid):
        assert time.monotonic() < deadline, "the worker did not end itself"
        time.sleep(0.01)
    assert burstmap.get_all_results(executor.map(abs, [-1, -2]), timeout=60) == [1, 2]
    assert runs_of(tmp_path, 0) == 1
    assert executor.attach(future.job_id)[0].result(timeout=60) == 0


def start_a_grandchild(pid_file):
    """Start a process of its own, note its pid, then outlive any timeout."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(pid_file).write_text(str(child.pid))
    time.sleep(600)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_a_timeout_stops_the_processes_the_call_started_too(executor, tmp_path):
    pid_file = tmp_path / "grandchild"
    future = executor.map(start_a_grandchild, [str(pid_file)], timeout=3)[0]
    with pytest.raises(CallTimeoutError):
        future.result(timeout=120)
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while alive(grandchild):
        assert time.monotonic() < deadline, f"process {grandchild} outlived its call's timeout"
        time.sleep(0.05)


def hold_the_gil(_):
    """A C loop that never releases the GIL: only a process boundary can stop it."""
    return sum(range(10 ** 12))


def test_a_call_holding_the_gil_is_stopped_at_its_deadline(executor):
    future = executor.map(hold_the_gil, [0], timeout=2)[0]
    with pytest.raises(CallTimeoutError):
        future.result(timeout=120)


def test_a_tampered_status_fails_the_call_instead_of_returning_the_error_object(executor):
    future = executor.map(int, ["not a number"])[0]
    with pytest.raises(ValueError):
        future.result(timeout=60)
    storage, layout = executor.storage, Layout(executor.config.prefix, future.job_id)
    (key,) = [k for k in storage.list(layout.status_prefix)]
    storage.put(key, storage.get(key).replace(b'"state": "error"', b'"state": "ok"   '))
    with pytest.raises(burstmap.BurstmapError, match="failed HMAC verification"):
        executor.attach(future.job_id)[0].result(timeout=60)


CLIENT = """
import sys, time, burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

if __name__ == "__main__":
    ex = burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(sys.argv[1]), secret_key=sys.argv[2])
    ex.map(time.sleep, [600, 600])
    while len(ex.backend.worker_pids()) < 2:
        time.sleep(0.01)
    print(*ex.backend.worker_pids(), flush=True)
    time.sleep(600)
"""


def test_local_workers_die_with_a_killed_client(tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), TEST_SECRET],
                              stdout=subprocess.PIPE, text=True, env=subprocess_env())
    workers = [int(pid) for pid in client.stdout.readline().split()]
    assert len(workers) == 2 and all(alive(pid) for pid in workers)
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "local workers outlived their client"
        time.sleep(0.05)
