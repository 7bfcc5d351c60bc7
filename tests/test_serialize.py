"""Sealed payloads: what is signed with our key unpickles; anything else is refused before unpickling."""

from __future__ import annotations

import pickle

import pytest

from burstmap.errors import PayloadRejectedError, SerializationError
from burstmap.serialize import dumps_calls, dumps_function, loads, seal, unseal

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


def test_calls_are_sealed_one_by_one():
    data, offsets = dumps_calls([((1,), {}), ((2,), {"x": 3})], KEY, "job")
    assert len(offsets) == 3 and offsets[-1] == len(data)
    assert loads(KEY, "job/data/1", data[offsets[1]:offsets[2]]) == ((2,), {"x": 3})
    with pytest.raises(PayloadRejectedError):
        loads(KEY, "job/data/0", data[offsets[1]:offsets[2]])


def test_unpicklable_things_are_named():
    import threading

    lock = threading.Lock()
    with pytest.raises(SerializationError, match="<lambda>"):
        dumps_function(lambda: lock)
    with pytest.raises(SerializationError, match="not callable"):
        dumps_function(42)
    with pytest.raises(SerializationError, match="call 2"):
        dumps_calls([1, 2, lock], KEY, "job")
