"""The suite every backend passes: the same tests, parametrized over `EXECUTORS` in conftest.py."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import burstmap
from burstmap import CallTimeoutError, RemoteError, SerializationError, WorkerDiedError

from .conftest import TEST_SECRET


def square(x):
    return x * x


def add(x, y):
    return x + y


class Boom(ValueError):
    """A user's own exception type: it must come back as itself."""


def explode(x):
    if x == 3:
        raise Boom(f"bad input {x}")
    return x


def chatty(x):
    print(f"hello from {x}")
    print("to stderr", file=sys.stderr)
    return x


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def die_once(marker):
    """Kill its own worker process the first time it runs, succeed the second time."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def give_lock(_):
    return threading.Lock()


def _fail_to_load():
    raise RuntimeError("this exception cannot be rebuilt on the client")


class Unloadable(Exception):
    """Pickles in the worker, fails to unpickle on the client."""

    def __reduce__(self):
        return (_fail_to_load, ())


def raise_unloadable(_):
    raise Unloadable("only the traceback survives")


class UnloadableResult:
    """A result that pickles in the worker and fails to unpickle on the client."""

    def __reduce__(self):
        return (_fail_to_load, ())


def return_unloadable(_):
    return UnloadableResult()


def test_map_returns_results_in_order(executor):
    futures = executor.map(square, range(50))
    assert burstmap.get_all_results(futures) == [x * x for x in range(50)]
    assert all(isinstance(f, burstmap.ResponseFuture) for f in futures)


def test_map_takes_a_generator_and_extra_args(executor):
    futures = executor.map(add, (i for i in range(5)), extra_args=(10,))
    assert burstmap.get_all_results(futures) == [10, 11, 12, 13, 14]


def test_map_of_nothing_is_empty(executor):
    assert executor.map(square, []) == []
    assert burstmap.get_all_results([]) == []


def test_call_async_and_submit(executor):
    assert executor.call_async(square, 7).result(timeout=60) == 49
    assert executor.submit(add, 2, y=5).result(timeout=60) == 7


def test_exception_comes_back_as_its_own_type_with_remote_traceback(executor):
    futures = executor.map(explode, range(6))
    with pytest.raises(Boom, match="bad input 3") as info:
        futures[3].result(timeout=60)
    assert "explode" in str(info.value.__cause__)
    assert "Boom: bad input 3" in str(info.value.__cause__)
    others = [f.result() for i, f in enumerate(futures) if i != 3]
    assert others == [0, 1, 2, 4, 5]
    results = burstmap.get_all_results(futures, return_exceptions=True)
    assert isinstance(results[3], Boom) and results[5] == 5


def test_exception_that_cannot_be_rebuilt_still_shows_the_traceback(executor):
    future = executor.call_async(raise_unloadable, 0)
    with pytest.raises(RemoteError, match="Unloadable: only the traceback survives") as info:
        future.result(timeout=60)
    assert "raise_unloadable" in str(info.value.__cause__)


def test_result_that_cannot_be_unpickled_here_is_a_clear_error(executor):
    futures = executor.map(return_unloadable, [0, 1])
    with pytest.raises(SerializationError, match=r"call 1 succeeded but its result could not be unpickled here: "
                                                 r"RuntimeError: this exception cannot be rebuilt"):
        futures[1].result(timeout=60)


def test_result_that_cannot_be_pickled_is_a_clear_error(executor):
    with pytest.raises(TypeError, match="could not be pickled"):
        executor.call_async(give_lock, 0).result(timeout=60)


def test_unpicklable_function_or_argument_fails_at_map_time(executor):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="cannot pickle function .*uses_lock"):
        def uses_lock(x):
            return lock
        executor.map(uses_lock, [1])
    with pytest.raises(SerializationError, match=r"call 1 .*lock"):
        executor.map(square, [1, threading.Lock()])


def test_timeout_stops_the_call_and_the_rest_finish(executor):
    futures = executor.map(sleepy, [0.01, 60, 0.01], timeout=2)
    with pytest.raises(CallTimeoutError, match=r"call .*/00001 ran past its timeout of 2s"):
        futures[1].result(timeout=120)
    assert futures[0].result() == 0.01 and futures[2].result() == 0.01
    assert futures[1].status["state"] == "timeout"


def test_logs_and_status_are_recorded(executor):
    future = executor.call_async(chatty, 5)
    assert future.result(timeout=60) == 5
    assert future.logs() == "hello from 5\nto stderr\n"
    status = future.status
    assert status["state"] == "ok" and status["attempt"] == 1
    assert status["end"] >= status["start"] > 0
    assert status["host"] and status["worker"] and status["peak_rss"] > 0


def test_worker_killed_mid_call_is_rerun(executor, tmp_path):
    futures = executor.map(die_once, [str(tmp_path / f"marker-{i}") for i in range(3)])
    assert burstmap.get_all_results(futures) == ["survived"] * 3
    assert {f.status["attempt"] for f in futures} == {2}


def test_worker_dying_in_every_attempt_fails_that_call_only(executor):
    futures = executor.map(always_die, [0], worker_retries=1)
    healthy = executor.map(square, range(4))
    with pytest.raises(WorkerDiedError, match=r"died .*in attempt 2 of 2"):
        futures[0].result(timeout=120)
    assert burstmap.get_all_results(healthy) == [0, 1, 4, 9]


def test_map_reduce_and_reduce(executor):
    assert executor.map_reduce(square, range(10), sum).result(timeout=60) == 285
    futures = executor.map(square, range(4))
    assert executor.reduce(max, futures).result(timeout=60) == 9


def test_reduce_raises_the_error_of_a_failed_call(executor):
    with pytest.raises(Boom):
        executor.map_reduce(explode, range(5), sum).result(timeout=60)


def test_wait_any_always_and_as_completed(executor):
    futures = executor.map(sleepy, [0.0, 0.0, 0.0])
    done, not_done = burstmap.wait(futures, return_when=burstmap.ANY_COMPLETED, timeout=60)
    assert done and len(done) + len(not_done) == 3
    done, not_done = burstmap.wait(futures, return_when=burstmap.ALWAYS)
    assert len(done) + len(not_done) == 3
    assert sorted(f.result() for f in burstmap.as_completed(futures, timeout=60)) == [0.0] * 3


def test_standard_executor_face(executor):
    face = executor.as_executor()
    assert list(face.map(pow, [2, 3, 4], [2, 2, 2], timeout=60)) == [4, 9, 16]
    assert face.submit(pow, 2, 10).result(timeout=60) == 1024


def test_user_module_travels_by_value(executor, tmp_path):
    module_file = tmp_path / "my_private_helpers.py"
    module_file.write_text("OFFSET = 1000\n\ndef shift(x):\n    return x + OFFSET\n")
    spec = importlib.util.spec_from_file_location("my_private_helpers", module_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_private_helpers"] = module
    try:
        spec.loader.exec_module(module)
        assert burstmap.get_all_results(executor.map(module.shift, [1, 2])) == [1001, 1002]
    finally:
        del sys.modules["my_private_helpers"]


def test_attach_from_a_fresh_process(executor, tmp_path):
    futures = executor.map(square, range(20))
    burstmap.get_all_results(futures)
    store_file = tmp_path / "store.pickle"
    store_file.write_bytes(pickle.dumps(executor.storage))
    script = (
        "import pickle, sys, burstmap\n"
        f"store = pickle.loads(open({str(store_file)!r}, 'rb').read())\n"
        f"ex = burstmap.Executor(storage=store, secret_key={TEST_SECRET!r}, prefix={executor.config.prefix!r})\n"
        f"print(burstmap.get_all_results(ex.attach({futures[0].job_id!r}), timeout=60))\n"
        "ex.shutdown()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str([x * x for x in range(20)])


def leave_mark(path):
    Path(path).write_text("ran")


def test_a_job_from_other_versions_is_refused_before_anything_runs(executor, tmp_path):
    marker = tmp_path / "ran"
    with pytest.MonkeyPatch.context() as patch:  # a client on other versions than the workers'
        patch.setitem(burstmap.versions.RUNTIME, "python", "3.99.0")
        patch.setitem(burstmap.versions.RUNTIME, "cloudpickle", "9.0.0")
        futures = executor.map(leave_mark, [str(marker)] * 2)
    for future in futures:
        with pytest.raises(burstmap.PayloadRejectedError, match=r"submitted from Python 3\.99\.0, cloudpickle 9\.0\.0 "
                           r"but (this worker|the deployed function) runs Python 3\.\d+\.\d+, cloudpickle \d"):
            future.result(timeout=120)
    assert not marker.exists()
    with pytest.raises(burstmap.PayloadRejectedError, match=r"cannot replay call 0 .* but this process runs Python"):
        executor.replay(futures[0].job_id, 0)
