"""`burstmap.multiprocessing.Pool` checked side by side with the standard `multiprocessing.Pool`."""

import multiprocessing
import threading
import time

import pytest

from burstmap import SerializationError
from burstmap.multiprocessing import Pool

from .test_lifecycle import ExitWhenLoaded

@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


def square(x):
    return x * x


def add(a, b=0, *, c=0):
    return a + b + c


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"no {x}")
    return x


def slow_first(x):
    time.sleep(0.5 if x == 0 else 0)
    return x


initialized_with = None


def remember(value):
    global initialized_with
    initialized_with = value


def initialized(_):
    return initialized_with


@pytest.fixture(scope="module")
def standard():
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        yield pool


def outcome(call):
    try:
        return "ok", call()
    except Exception as e:
        return type(e), str(e)


def test_results_match_the_standard_pool(executor, standard):
    pool = Pool(executor=executor)
    for p in (pool, standard):
        assert p.map(square, range(20)) == [x * x for x in range(20)]
    checks = [
        lambda p: p.map(square, range(7), chunksize=3),
        lambda p: p.starmap(add, [(1, 2), (3, 4), [5, 6]]),
        lambda p: p.apply(add, (1,), {"b": 2, "c": 3}),
        lambda p: p.apply_async(add, (5, 6)).get(),
        lambda p: p.map_async(square, [3, 4]).get(),
        lambda p: p.starmap_async(add, [(1, 1)]).get(),
        lambda p: list(p.imap(square, range(10))),
        lambda p: sorted(p.imap_unordered(square, range(10))),
        lambda p: p.map(square, []),
        lambda p: p.map(fail_on_three, range(6)),
        lambda p: p.apply(fail_on_three, (3,)),
        lambda p: p.map_async(fail_on_three, range(6)).get(),
    ]
    for check in checks:
        assert outcome(lambda: check(pool)) == outcome(lambda: check(standard))


def test_imap_yields_in_order_and_goes_on_past_an_error(executor, standard):
    for p in (Pool(executor=executor), standard):
        assert list(p.imap(slow_first, range(4))) == [0, 1, 2, 3]
        results = p.imap(fail_on_three, range(5))
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="no 3"):
            next(results)
        assert next(results) == 4
        with pytest.raises(StopIteration):
            next(results)


def test_imap_unordered_yields_as_calls_finish(executor, standard):
    for p in (Pool(executor=executor), standard):
        assert next(p.imap_unordered(slow_first, range(4))) != 0


def test_async_result_and_callbacks(executor, standard):
    for p in (Pool(executor=executor), standard):
        got, errors, done = [], [], threading.Event()
        slow = p.apply_async(slow_first, (0,))
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            slow.get(timeout=0.01)
        slow.wait()
        assert slow.ready() and slow.successful() and slow.get() == 0
        p.map_async(square, [1, 2], callback=got.append).wait()
        failed = p.apply_async(fail_on_three, (3,), error_callback=lambda e: (errors.append(e), done.set()))
        failed.wait()
        done.wait()
        assert not failed.successful()
        assert got == [[1, 4]] and isinstance(errors[0], ValueError)


def test_close_join_terminate(executor, standard):
    for p in (Pool(executor=executor), multiprocessing.get_context("spawn").Pool(2)):
        with pytest.raises(ValueError, match="still running"):
            p.join()
        pending = p.map_async(slow_first, range(3))
        p.close()
        with pytest.raises(ValueError, match="Pool not running"):
            p.map(square, [1])
        p.join()
        assert pending.get() == [0, 1, 2]
        p.terminate()
        with pytest.raises(ValueError, match="Pool not running"):
            p.apply(square, (1,))


def test_initializer_runs_in_the_worker(executor):
    pool = Pool(initializer=remember, initargs=("set",), executor=executor)
    assert pool.map(initialized, range(4)) == ["set"] * 4


def test_own_executor_is_stopped_on_exit(tmp_path):
    with Pool(2) as pool:
        assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert pool._executor._shutdown
    assert repr(pool).startswith("<burstmap.multiprocessing.Pool state=TERMINATE")


def test_bad_arguments_fail_at_once():
    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(initializer=3)


def large_result_that_exits_when_loaded(x):
    """A 3 MB result (stored on its own, loaded when read) that raises SystemExit when unpickled."""
    return [bytes(3 << 20), ExitWhenLoaded()] if x == 1 else x


def test_a_map_whose_result_cannot_be_loaded_fails_instead_of_hanging(executor):
    result = Pool(executor=executor).map_async(large_result_that_exits_when_loaded, range(3))
    with pytest.raises(SerializationError, match="SystemExit"):
        result.get(timeout=60)
