"""Scratch folders: named objects calls write and read, bound to the worker's store and key."""

from __future__ import annotations

import pickle

import pytest

import burstmap
from burstmap import PayloadRejectedError, Scratch
from burstmap.backends.local import LocalBackend
from burstmap.errors import KeyNotFoundError
from burstmap.storage.local import LocalStorage

from .conftest import TEST_SECRET

KEY = b"k" * 32


@pytest.fixture
def space(tmp_path):
    return Scratch("stage", "pre", LocalStorage(tmp_path), KEY)


def scatter(m, space, parts):
    """A map task: write one object per partition."""
    for r in range(parts):
        space.put(f"shuffle/{r}/{m}", f"{m}->{r}".encode())
    return m


def gather(r, space):
    """A reduce task keyed by partition: read what every map task wrote for partition ``r``."""
    names = space.names(f"shuffle/{r}/")
    space.save(f"out/{r}", [space.get(n).decode() for n in names])
    return len(names)


def test_bytes_values_and_names(space):
    space.put("a/1", b"one")
    space.put("a/2", b"two")
    space.save("b", {"x": [1, 2]})
    assert space.get("a/1") == b"one" and space.get_range("a/2", 1, 3) == b"wo"
    assert space.size("a/2") == 3 and space.open_read("a/1").read() == b"one"
    assert space.names() == ["a/1", "a/2", "b"] and space.names("a/") == ["a/1", "a/2"]
    assert space.load("b") == {"x": [1, 2]}
    space.clear()
    assert space.names() == []
    with pytest.raises(KeyNotFoundError):
        space.get("a/1")


def test_saved_values_are_verified_before_unpickling(space):
    space.save("v", 42)
    space.put("w", space.get("v"))  # a signed value moved to another name is refused
    with pytest.raises(PayloadRejectedError):
        space.load("w")
    other = Scratch("stage", "pre", space.storage, b"x" * 32)
    with pytest.raises(PayloadRejectedError):
        other.load("v")


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "sp ace", "..", None])
def test_bad_names_are_one_line_errors(space, bad):
    with pytest.raises(ValueError, match="bad object name"):
        space.put(bad, b"")


def test_travels_without_store_or_key(space):
    copy = pickle.loads(pickle.dumps(space))
    assert KEY not in pickle.dumps(space)
    with pytest.raises(RuntimeError, match="pass it to a call as an argument"):
        copy.get("x")
    assert copy.bind(space.storage, KEY).root == space.root


def test_a_shuffle_through_scratch(tmp_path):
    with burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(tmp_path), secret_key=TEST_SECRET,
                           progress=False) as ex, ex.scratch() as space:
        assert burstmap.get_all_results(ex.map(scatter, range(3), extra_args=(space, 2))) == [0, 1, 2]
        assert burstmap.get_all_results(ex.map(gather, range(2), extra_args=(space,))) == [3, 3]
        assert space.load("out/1") == ["0->1", "1->1", "2->1"]
        assert ex.submit(gather, 0, space=space).result() == 3  # a keyword argument is bound too
        assert all(TEST_SECRET.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert list(ex.storage.list(space.root)) == []
