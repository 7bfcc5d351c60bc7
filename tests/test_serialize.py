"""The seal of results: sealing in place gives the same bytes as sealing a copy, and tampering is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.errors import PayloadRejectedError
from burstmap.serialize import dumps_value, loads, seal, seal_value, unseal
from burstmap.storage.local import LocalStorage


def pattern(n: int) -> bytes:
    """A result that shows any misplaced byte: a repeating count."""
    return bytes(range(256)) * (n // 256)


@pytest.mark.parametrize("value", [b"x" * (3 << 20), {"a": [1, 2.5, None]}, ValueError("boom")])
def test_seal_value_matches_sealing_the_pickle(value: object) -> None:
    blob = seal_value(b"k", "job/out/1", value)
    assert blob == seal(b"k", "job/out/1", dumps_value(value))
    assert unseal(b"k", "job/out/1", blob) == dumps_value(value)


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
