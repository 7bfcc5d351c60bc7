"""PyWren and Lithops habits: extra_env, exclude_modules, starmap, the call's id, succeeded/errored,
wait in call order, and the map item limit."""

import os
import sys

import pytest

import burstmap
from burstmap.call import Spread, WithEnv

@pytest.fixture
def executor(near_executor):
    """The local or Dask executor these tests run on (each test runs on both unless it says otherwise)."""
    return near_executor


def env_var(name):
    return os.environ.get(name)


def identity():
    return burstmap.current_call()


def add(a, b=0, c=0):
    return a + b + c


def fail_if_odd(x):
    if x % 2:
        raise ValueError(x)
    return x


def test_extra_env_is_set_for_the_call_only(executor):
    futures = executor.map(env_var, ["BM_TEST_VAR"] * 3, extra_env={"BM_TEST_VAR": "yes"})
    assert burstmap.get_all_results(futures) == ["yes"] * 3
    assert executor.call_async(env_var, "BM_TEST_VAR").result() is None
    assert executor.call_async(env_var, "BM_TEST_VAR", extra_env={"BM_TEST_VAR": "1"}).result() == "1"


def test_extra_env_takes_strings_only():
    with pytest.raises(TypeError, match="'N'"):
        WithEnv(env_var, {"N": 1})


def test_excluded_modules_are_not_shipped(executor, tmp_path):
    (tmp_path / "bm_local_helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import bm_local_helpers

        assert executor.call_async(bm_local_helpers.triple, 2).result() == 6
        future = executor.call_async(bm_local_helpers.triple, 2, exclude_modules=["bm_local_helpers"])
        with pytest.raises(ModuleNotFoundError, match="bm_local_helpers"):
            future.result()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("bm_local_helpers", None)


def test_exclude_modules_takes_a_list(tmp_path):
    with pytest.raises(TypeError, match="list of module names"):
        burstmap.Executor().map(abs, [1], exclude_modules="numpy")


def test_starmap_spreads_tuples_and_dicts(executor):
    futures = executor.starmap(add, [(1, 2), {"a": 1, "c": 5}, (1, 2, 3), 7])
    assert burstmap.get_all_results(futures) == [3, 6, 6, 7]


def test_spread_keeps_extra_args_after_the_input():
    assert Spread(add)((1,), 2) == 3 and Spread(add)({"b": 2}, 1) == 3


def test_a_call_knows_its_id(executor):
    futures = executor.map(Spread(identity), [()] * 3)
    ids = burstmap.get_all_results(futures)
    assert ids == [(futures[0].job_id, i) for i in range(3)]
    assert burstmap.current_call() is None


def test_succeeded_errored_and_wait_in_call_order(executor):
    futures = executor.map(fail_if_odd, range(6))
    done, not_done = burstmap.wait(futures)
    assert done == futures and not_done == []
    assert [f.succeeded() for f in futures] == [True, False] * 3
    assert [f.errored() for f in futures] == [False, True] * 3
    done, not_done = burstmap.wait(futures, return_when=burstmap.ALWAYS)
    assert done == futures


def test_map_item_limit(tmp_path):
    from burstmap.storage.local import LocalStorage

    ex = burstmap.Executor(storage=LocalStorage(tmp_path), map_item_limit=3)
    with pytest.raises(burstmap.ConfigError, match=r"4 calls is over map_item_limit \(3\)"):
        ex.map(abs, range(4))
    with pytest.raises(burstmap.ConfigError, match="positive integer"):
        burstmap.Executor(map_item_limit=0)
    ex.shutdown()


def count_lines(piece):
    return sum(1 for _ in piece.lines())


def test_map_reduce_takes_map_options(executor, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "lines.txt").write_text("".join(f"line {i}\n" for i in range(1000)))
    total = executor.map_reduce(count_lines, str(data), sum, chunk_size=1024, extra_env={"UNUSED": "1"})
    assert total.result() == 1000
