"""Sealed payloads: what is signed with our key unpickles; anything else is refused before unpickling.

Results are sealed in place: that gives the same bytes as sealing a copy."""

from __future__ import annotations

import importlib
import io
import pickle
import subprocess
import threading
import sys
from pathlib import Path

import pytest

import burstmap
from burstmap.backends.local import LocalBackend

from burstmap.errors import PayloadRejectedError, SerializationError
from burstmap.serialize import (BLOCK_BYTES, BLOCK_CALLS, InputBlock, dumps_calls, dumps_function, dumps_value, load_stream,
                                loads, seal, seal_value, unseal)
from burstmap.storage.local import LocalStorage

from .conftest import subprocess_env

KEY = b"k" * 32


def test_seal_round_trip():
    assert unseal(KEY, "job/func", seal(KEY, "job/func", b"payload")) == b"payload"


@pytest.mark.parametrize("blob_of", [
    lambda b: b[:-1] + bytes([b[-1] ^ 1]),          # tampered payload
    lambda b: seal(b"other-key", "job/func", b"payload"),  # signed by another key
    lambda b: seal(KEY, "otherjob/func", b"payload"),       # replayed from another job
    lambda b: b"payload",                                   # unsigned
    lambda b: b"",                                          # empty
])
def test_anything_else_is_refused(blob_of):
    with pytest.raises(PayloadRejectedError, match="job/func"):
        unseal(KEY, "job/func", blob_of(seal(KEY, "job/func", b"payload")))


def test_refused_payload_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(_Evil(str(marker)))
    with pytest.raises(PayloadRejectedError):
        loads(KEY, "job/data/0", seal(b"attacker", "job/data/0", evil))
    assert not marker.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("change", [lambda b: b[:-1] + bytes([b[-1] ^ 1]), lambda b: b[:-1], lambda b: b[:20]])
def test_a_changed_stream_is_refused_before_unpickling(tmp_path: Path, change) -> None:
    marker = tmp_path / "ran"
    blob = seal_value(KEY, "job/out/1", [b"x" * (5 << 20), _Evil(str(marker))])
    with pytest.raises(PayloadRejectedError, match="job/out/1"):
        load_stream(KEY, "job/out/1", io.BytesIO(change(blob)))
    assert not marker.exists()
    load_stream(KEY, "job/out/1", io.BytesIO(blob))
    assert marker.exists()


def test_calls_are_sealed_in_blocks_and_unpickled_one_by_one():
    shared = ["one list in every input"]
    calls = [((i, shared), {}) for i in range(BLOCK_CALLS + 5)] + [((b"x" * BLOCK_BYTES,), {}), ((7,), {"x": 3})]
    data, blocks = dumps_calls(calls, KEY, "job")
    assert [first for first, _ in blocks] == [0, BLOCK_CALLS, BLOCK_CALLS + 6, len(calls)]
    assert blocks[-1][1] == len(data)
    (_, start), (_, end) = blocks[1], blocks[2]
    block = InputBlock(KEY, "job", start, data[start:end])
    assert block.load(BLOCK_CALLS + 5) == ((b"x" * BLOCK_BYTES,), {})
    for outside in (BLOCK_CALLS - 1, BLOCK_CALLS + 6):
        with pytest.raises(PayloadRejectedError, match=f"does not hold call {outside}"):
            block.load(outside)
    one, two = block.load(BLOCK_CALLS), block.load(BLOCK_CALLS + 1)
    assert one == ((BLOCK_CALLS, shared), {}) and one[0][1] is not two[0][1]  # no call shares an object with another
    assert InputBlock(KEY, "job", blocks[2][1], data[blocks[2][1]:]).load(len(calls) - 1) == ((7,), {"x": 3})
    with pytest.raises(PayloadRejectedError):
        InputBlock(KEY, "job", 0, data[start:end])  # a block moved to another place in the data
    with pytest.raises(PayloadRejectedError):
        InputBlock(KEY, "other-job", start, data[start:end])


def test_map_inputs_are_pickled_as_items_and_read_back_as_calls():
    shared = ["one list"]
    data, blocks = dumps_calls([shared, shared, None], KEY, "job", items=True)
    block = InputBlock(KEY, "job", 0, data)
    assert block.load(2) == ((None,), {}) and block.load(0) == ((shared,), {})
    assert block.load(0)[0][0] is not block.load(1)[0][0]
    assert len(data) < len(dumps_calls([((shared,), {})] * 2 + [((None,), {})], KEY, "job")[0])
    with pytest.raises(SerializationError, match="input of call 12 "):
        dumps_calls([1, 2, threading.Lock()], KEY, "job", numbered_from=10, items=True)


def test_a_part_of_a_stream_takes_inputs_until_its_size_is_reached():
    items = iter(range(5 * BLOCK_CALLS))
    data, blocks = dumps_calls(items, KEY, "job", max_bytes=1, items=True)
    assert blocks[-1][0] == BLOCK_CALLS and next(items) == BLOCK_CALLS  # one block, the rest left to read


def test_unpicklable_things_are_named():

    lock = threading.Lock()
    with pytest.raises(SerializationError, match="<lambda>"):
        dumps_function(lambda: lock)
    with pytest.raises(SerializationError, match="not callable"):
        dumps_function(42)
    with pytest.raises(SerializationError, match="call 2"):
        dumps_calls([1, 2, lock], KEY, "job")


def pattern(n: int) -> bytes:
    """A result that shows any misplaced byte: a repeating count."""
    return bytes(range(256)) * (n // 256)


@pytest.mark.parametrize("value", [b"x" * (3 << 20), {"a": [1, 2.5, None]}, ValueError("boom")])
def test_seal_value_is_a_sealed_pickle_of_the_value(value: object) -> None:
    """Compared after unpickling: pickle bytes are not canonical (dask installs tblib's exception reducers)."""
    blob = seal_value(b"k", "job/out/1", value)
    back = pickle.loads(unseal(b"k", "job/out/1", blob))
    assert repr(back) == repr(value) and type(back) is type(value)
    assert repr(loads(b"k", "job/out/1", seal(b"k", "job/out/1", dumps_value(value)))) == repr(value)


def test_seal_value_falls_back_to_cloudpickle() -> None:
    blob = seal_value(b"k", "job/out/1", lambda x: x + 1)
    assert loads(b"k", "job/out/1", blob)(1) == 2


@pytest.mark.parametrize("identity, key, flip", [("job/out/1", b"k", 40), ("job/out/2", b"k", None),
                                                  ("job/out/1", b"other", None)])
def test_a_changed_blob_identity_or_key_is_refused(identity: str, key: bytes, flip: int | None) -> None:
    blob = bytearray(seal_value(b"k", "job/out/1", b"payload" * 10))
    if flip is not None:
        blob[flip] ^= 1
    with pytest.raises(PayloadRejectedError):
        loads(key, identity, bytes(blob))


def test_a_result_above_the_inline_limit_comes_back_whole(tmp_path: Path) -> None:
    """Sealed in place by the worker, stored as its own object, verified through a view by the client."""
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(tmp_path), secret_key="k",
                           progress=False) as ex:
        future = ex.submit(pattern, 5 << 20)
        assert future.result() == pattern(5 << 20)
        assert future.record.output_key is not None


def evil_and_large(path: str, n: int) -> list:
    """A result above the inline limit that, when unpickled, creates the file at ``path``."""
    return [bytes(n), _Evil(path)]


LARGE_RESULT = """
import sys, burstmap
from burstmap.backends.local import LocalBackend
from burstmap.storage.local import LocalStorage

def repeating(n):
    return bytes(range(256)) * (n // 256)

if __name__ == "__main__":
    size = 150 << 20
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=LocalStorage(sys.argv[1]), secret_key="k",
                           progress=False) as ex:
        future = ex.submit(repeating, size)
        value = future.result()
    whole = len(value) == size and all(value[b * 256:(b + 1) * 256] == bytes(range(256)) for b in (0, 12345, size // 256 - 1))
    print(whole, future.record.output_key is not None, future.status["peak_rss"], size)
"""


def test_a_large_result_is_streamed_not_copied(tmp_path: Path) -> None:
    """The worker holds the value and small buffers, not a second copy of its pickle.

    Run as a user's own script, in a fresh process, so nothing the test session loaded weighs on the worker.
    """
    script = tmp_path / "large.py"
    script.write_text(LARGE_RESULT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    whole, stored_apart, peak_rss, size = out.stdout.split()
    assert whole == "True" and stored_apart == "True"
    assert int(peak_rss) < 1.6 * int(size), out.stdout


def test_a_tampered_large_result_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    store = LocalStorage(tmp_path / "store")
    with burstmap.Executor(backend=LocalBackend(workers=1), storage=store, secret_key="k", progress=False) as ex:
        future = ex.submit(evil_and_large, str(marker), 3 << 20)
        burstmap.wait([future])
        stored = store.path / future.record.output_key
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 1
        stored.write_bytes(bytes(data))
        with pytest.raises(PayloadRejectedError, match="out/0"):
            future.result()
    assert not marker.exists()


STATEFUL_MODULE = """
import threading
lock = threading.Lock()
log = open(__file__)

def guarded(x):
    with lock:
        return x + 1

def outer(x):
    return [guarded(i) for i in range(x)]
"""
USES_IT = """
import sys, burstmap, stateful
ex = burstmap.Executor(storage=sys.argv[1], secret_key="k", progress=False)
print(burstmap.get_all_results(ex.map(stateful.outer, range(3))))
"""


def test_a_module_holding_a_lock_works_on_the_local_backend_and_is_named_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "stateful.py").write_text(STATEFUL_MODULE)
    (tmp_path / "use.py").write_text(USES_IT)
    out = subprocess.run([sys.executable, str(tmp_path / "use.py"), str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120, env=subprocess_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "[[], [1], [1, 2]]\n"

    monkeypatch.syspath_prepend(str(tmp_path))
    stateful = importlib.import_module("stateful")
    try:
        with pytest.raises(SerializationError) as refused:  # workers elsewhere could not import the module
            dumps_function(stateful.outer)
    finally:
        del sys.modules["stateful"]
    assert str(refused.value).startswith("cannot pickle function outer: it uses the global stateful.lock (a lock), "
                                         "which cannot be pickled")
    assert "install its module on the workers" in str(refused.value)
