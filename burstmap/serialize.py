"""Pickling of functions, inputs and results, and the HMAC seal that every payload carries.

Pickles are code, so every payload a worker or client unpickles is sealed: 32 bytes of
HMAC-SHA256 over the payload's identity (job, kind, call) and its bytes, then the bytes. A payload
with a wrong or missing seal, or copied from another job or call, is refused before unpickling.
"""

from __future__ import annotations

import hmac
import io
import pickle
import reprlib
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import cloudpickle

from .errors import PayloadRejectedError, SerializationError

__all__ = ["seal", "unseal", "seal_value", "dumps_function", "dumps_calls", "dumps_value", "loads"]

MAC_SIZE = 32
_installed_roots = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {sys.prefix, sys.base_prefix, sys.exec_prefix}
)
_user_modules_seen: tuple[int, list[ModuleType]] = (-1, [])


def _mac(key: bytes, identity: str, payload: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over the identity and the payload, fed in turn so the payload is never copied."""
    mac = hmac.new(key, identity.encode() + b"\0", "sha256")
    mac.update(payload)
    return mac.digest()


def seal(key: bytes, identity: str, payload: bytes) -> bytes:
    """Prefix ``payload`` with its HMAC over ``identity`` and the bytes."""
    return _mac(key, identity, payload) + payload


def _verified(key: bytes, identity: str, blob: bytes) -> memoryview:
    """A view of the payload of a sealed blob (no copy), or `PayloadRejectedError` without unpickling."""
    if len(blob) < MAC_SIZE:
        raise PayloadRejectedError(f"payload {identity} is unsigned or truncated")
    view = memoryview(blob)
    if not hmac.compare_digest(view[:MAC_SIZE], _mac(key, identity, view[MAC_SIZE:])):
        raise PayloadRejectedError(
            f"payload {identity} failed HMAC verification (tampered, signed with another key, or from another job)"
        )
    return view[MAC_SIZE:]


def unseal(key: bytes, identity: str, blob: bytes) -> bytes:
    """Return the payload of a sealed blob, or raise `PayloadRejectedError` without unpickling."""
    return bytes(_verified(key, identity, blob))


def _is_user_module(name: str, module: ModuleType | None) -> bool:
    """A top-level module the user wrote (not installed, not stdlib): it must travel with the function."""
    file = getattr(module, "__file__", None)
    return bool(
        file
        and "." not in name
        and name != "__main__"
        and not name.startswith(("burstmap", "_pytest", "pytest"))
        and not file.startswith(_installed_roots)
    )


def _user_modules() -> list[ModuleType]:
    """The user's own top-level modules among those imported, recomputed only when imports change."""
    global _user_modules_seen
    count, modules = _user_modules_seen
    if count != len(sys.modules):
        modules = [m for name, m in list(sys.modules.items()) if _is_user_module(name, m)]
        _user_modules_seen = (len(sys.modules), modules)
    return modules


@contextmanager
def _user_modules_by_value() -> Iterator[None]:
    """Ship the user's own modules by value for the duration of one pickling."""
    registered = []
    for module in _user_modules():
        try:
            cloudpickle.register_pickle_by_value(module)
        except ValueError:
            continue
        registered.append(module)
    try:
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def dumps_function(func: Callable) -> bytes:
    """Pickle a function with cloudpickle, shipping the user's own modules with it."""
    if not callable(func):
        raise SerializationError(f"{func!r} is not callable")
    try:
        with _user_modules_by_value():
            return cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        raise SerializationError(f"cannot pickle function {_name(func)}: {type(e).__name__}: {e}") from e


def dumps_calls(calls: Iterable[Any], key: bytes, job_id: str) -> tuple[bytes, list[int]]:
    """Pickle and seal every call's input into one data object; return it and the N+1 offsets."""
    buf = io.BytesIO()
    pickler = cloudpickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    parts, offsets, total = [], [0], 0
    with _user_modules_by_value():
        for i, call in enumerate(calls):
            buf.seek(0)
            buf.truncate()
            try:
                pickler.dump(call)
            except Exception as e:
                raise SerializationError(
                    f"cannot pickle the input of call {i} ({reprlib.repr(call)}): {type(e).__name__}: {e}"
                ) from e
            pickler.clear_memo()
            blob = seal(key, f"{job_id}/data/{i}", buf.getvalue())
            parts.append(blob)
            total += len(blob)
            offsets.append(total)
    return b"".join(parts), offsets


def dumps_value(value: Any) -> bytes:
    """Pickle a result or exception: plain pickle when it can, cloudpickle when it must."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def seal_value(key: bytes, identity: str, value: Any) -> bytes:
    """``seal(key, identity, dumps_value(value))`` with one copy of the pickle, not three.

    The value is pickled into a buffer that starts with room for the MAC, which is then written in
    place; a 200 MB result costs 200 MB beside itself, not 600 MB.
    """
    buf = io.BytesIO()
    buf.write(bytes(MAC_SIZE))
    try:
        pickle.dump(value, buf, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        buf.seek(MAC_SIZE)
        buf.truncate()
        cloudpickle.dump(value, buf, protocol=pickle.HIGHEST_PROTOCOL)
    with buf.getbuffer() as view, view[MAC_SIZE:] as payload:
        view[:MAC_SIZE] = _mac(key, identity, payload)
    return buf.getvalue()


def loads(key: bytes, identity: str, blob: bytes) -> Any:
    """Verify a sealed blob, then unpickle it."""
    with _verified(key, identity, blob) as payload:
        return pickle.loads(payload)


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
