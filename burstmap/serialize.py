"""Pickling of functions, inputs and results, and the HMAC seal that every payload carries.

Pickles are code, so every payload a worker or client unpickles is sealed: 32 bytes of
HMAC-SHA256 over the payload's identity (job, kind, call) and its bytes, then the bytes. A payload
with a wrong or missing seal, or copied from another job or call, is refused before unpickling.
"""

from __future__ import annotations

import _pickle
import hmac
import inspect
import io
import pickle
import reprlib
import shutil
import struct
import sys
import sysconfig
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import CodeType, ModuleType
from typing import Any, BinaryIO

import cloudpickle

from .errors import PayloadRejectedError, SerializationError

__all__ = ["seal", "unseal", "excluding", "seal_value", "spool_value", "Spool", "dumps_function", "dumps_calls",
           "dumps_value", "InputBlock", "loads", "load_stream"]

MAC_SIZE = 32
_ONE_SHOT = 64 * 1024  # payloads up to this size are copied once to be MACed in one call: faster than feeding
_COPY_CHUNK = 4 * 1024 * 1024
_installed_roots = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {sys.prefix, sys.base_prefix, sys.exec_prefix}
)
_user_modules_seen: tuple[int, list[ModuleType]] = (-1, [])
_by_value_lock = threading.Lock()
_by_value_count: Counter[str] = Counter()  # how many picklings in progress ship each module by value


def _hmac(key: bytes, identity: str) -> Any:
    """An HMAC-SHA256 fed with the identity so far: update it with the payload, in one piece or many."""
    return hmac.new(key, identity.encode() + b"\0", "sha256")


def _mac(key: bytes, identity: str, payload: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over the identity and the payload: in one C call when small, else fed in turn so
    that a large payload is never copied."""
    if len(payload) <= _ONE_SHOT:
        return hmac.digest(key, b"".join((identity.encode(), b"\0", payload)), "sha256")
    mac = _hmac(key, identity)
    mac.update(payload)
    return mac.digest()


def _rejected(identity: str) -> PayloadRejectedError:
    return PayloadRejectedError(
        f"payload {identity} failed HMAC verification (tampered, signed with another key, or from another job)"
    )


def seal(key: bytes, identity: str, payload: bytes) -> bytes:
    """Prefix ``payload`` with its HMAC over ``identity`` and the bytes."""
    return _mac(key, identity, payload) + payload


def _verified(key: bytes, identity: str, blob: bytes) -> memoryview:
    """A view of the payload of a sealed blob (no copy), or `PayloadRejectedError` without unpickling."""
    if len(blob) < MAC_SIZE:
        raise PayloadRejectedError(f"payload {identity} is unsigned or truncated")
    view = memoryview(blob)
    if not hmac.compare_digest(view[:MAC_SIZE], _mac(key, identity, view[MAC_SIZE:])):
        raise _rejected(identity)
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


_excluded = threading.local()


@contextmanager
def excluding(modules: Iterable[str]) -> Iterator[None]:
    """Ship none of ``modules`` by value while this thread pickles in the block (PyWren's ``exclude_modules``)."""
    if isinstance(modules, str):
        raise TypeError(f"exclude_modules takes a list of module names, not the string {modules!r}")
    saved = getattr(_excluded, "names", frozenset())
    _excluded.names = saved | set(modules)
    try:
        yield
    finally:
        _excluded.names = saved


@contextmanager
def _user_modules_by_value() -> Iterator[None]:
    """Ship the user's own modules by value for the duration of one pickling.

    cloudpickle's registry is global, so registrations are counted: a module stays registered
    while any thread still pickles with it, and two ``map`` calls at once never unregister each
    other's modules mid-pickle (which would ship them by reference, unimportable by workers).
    """
    registered = []
    excluded = getattr(_excluded, "names", frozenset())
    with _by_value_lock:
        for module in _user_modules():
            if module.__name__ in excluded:
                continue
            if not _by_value_count[module.__name__]:
                try:
                    cloudpickle.register_pickle_by_value(module)
                except ValueError:
                    continue
            _by_value_count[module.__name__] += 1
            registered.append(module)
    try:
        yield
    finally:
        with _by_value_lock:
            for module in registered:
                _by_value_count[module.__name__] -= 1
                if not _by_value_count[module.__name__]:
                    del _by_value_count[module.__name__]
                    cloudpickle.unregister_pickle_by_value(module)


def dumps_function(func: Callable, modules_importable: bool = False) -> bytes:
    """Pickle a function with cloudpickle, shipping the user's own modules with it.

    A module whose globals hold state that cannot be pickled (a lock, a client, an open file) cannot
    travel by value. When the workers can import the client's modules themselves
    (``modules_importable``: the local backend, whose workers share its files and ``sys.path``), the
    function is then pickled by reference, as `concurrent.futures.ProcessPoolExecutor` does; else
    the error names the global and the ways out.
    """
    if not callable(func):
        raise SerializationError(f"{func!r} is not callable")
    try:
        with _user_modules_by_value():
            return cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        error = e
    if modules_importable:
        try:
            return cloudpickle.dumps(func, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
    culprit = _unpicklable_global(func)
    if culprit is None:
        raise SerializationError(f"cannot pickle function {_name(func)}: {type(error).__name__}: {error}") from error
    raise SerializationError(
        f"cannot pickle function {_name(func)}: it uses {culprit}, which cannot be pickled ({error}); create it "
        "inside the function (or once per worker, lazily), or install its module on the workers (pip install) "
        "so they import it themselves") from error


def _unpicklable_global(func: Any) -> str | None:
    """``the global module.name (a Type)`` of the first global a function uses, directly or through the
    functions it calls, that cannot be pickled; ``None`` if there is none."""
    todo, seen = [getattr(func, "func", func)], set()
    while todo:
        current = todo.pop()
        code, names = getattr(current, "__code__", None), getattr(current, "__globals__", {})
        if code is None or id(current) in seen:
            continue
        seen.add(id(current))
        for name in _global_names(code):
            value = names.get(name)
            if inspect.isfunction(value):
                todo.append(value)
            elif name in names and not isinstance(value, (type, ModuleType)):
                try:
                    cloudpickle.dumps(value)
                except Exception:
                    return f"the global {names.get('__name__')}.{name} (a {type(value).__name__})"
    return None


def _global_names(code: CodeType) -> Iterator[str]:
    """The names a code object and the code nested in it (inner functions, comprehensions) may read as globals."""
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _global_names(const)


#: Calls' inputs are sealed in blocks of about this many bytes, or this many calls, under one MAC each.
BLOCK_BYTES = 64 * 1024
BLOCK_CALLS = 1024
_BLOCK_HEAD = struct.Struct("<QIB")  # the block's first call, how many calls it holds, whether each is one item


def dumps_calls(calls: Iterable[Any], key: bytes, job_id: str, numbered_from: int = 0,
                max_bytes: int | None = None, items: bool = False) -> tuple[bytes, list[tuple[int, int]]]:
    """Pickle every call's input into one data object of sealed blocks; return it and where each block starts.

    Each input is pickled on its own, so no two calls ever share an object, but they are sealed
    in blocks of about `BLOCK_BYTES` under one MAC: a MAC per call costs more than pickling a
    small input. The blocks are returned as ``(first call, first byte)`` pairs, then
    ``(number of calls, size)``; `InputBlock` reads one back. A call is ``(args, kwargs)``, or with
    ``items`` its one positional argument (as `map` calls are): half the pickling work for small ones.

    With ``max_bytes``, it stops taking calls at the first block end past that size, and the rest are
    left in ``calls`` (an iterator) for another job; errors number calls from ``numbered_from``.
    """
    buf = io.BytesIO()
    pickler = cloudpickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    parts, blocks, ends, total, first = [], [], [], 0, 0

    def seal_block() -> None:
        nonlocal total, first
        head = _BLOCK_HEAD.pack(first, len(ends), items) + struct.pack(f"<{len(ends)}I", *ends)
        blob = seal(key, f"{job_id}/data@{total}", head + buf.getvalue())
        blocks.append((first, total))
        parts.append(blob)
        total, first = total + len(blob), first + len(ends)
        buf.seek(0)
        buf.truncate()
        ends.clear()

    dump = _pickle.Pickler.dump.__get__(pickler)  # the C dump itself: cloudpickle's wrapper costs a call per input
    forget, tell, note = pickler.clear_memo, buf.tell, ends.append
    with _user_modules_by_value():
        for i, call in enumerate(calls):
            try:
                dump(call)
            except Exception as e:
                raise SerializationError(
                    f"cannot pickle the input of call {numbered_from + i} ({reprlib.repr(call)}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            forget()
            end = tell()
            note(end)
            if end >= BLOCK_BYTES or len(ends) >= BLOCK_CALLS:
                seal_block()
                if max_bytes is not None and total >= max_bytes:
                    break
        if ends:
            seal_block()
    blocks.append((first, total))
    return b"".join(parts), blocks


class InputBlock:
    """A verified block of calls' inputs (as `dumps_calls` wrote it), read back from ``start`` in the data object."""

    def __init__(self, key: bytes, job_id: str, start: int, blob: bytes) -> None:
        self.job_id, self.start = job_id, start
        payload = _verified(key, f"{job_id}/data@{start}", blob)
        try:
            self.first, count, self._items = _BLOCK_HEAD.unpack_from(payload)
            self._ends = struct.unpack_from(f"<{count}I", payload, _BLOCK_HEAD.size)
        except struct.error:
            raise PayloadRejectedError(f"the inputs of job {job_id} at byte {start} are not a block") from None
        self._pickles = payload[_BLOCK_HEAD.size + 4 * count:]

    def load(self, call_id: int) -> tuple[tuple, dict]:
        """Unpickle one call's input: its ``(args, kwargs)``."""
        i = call_id - self.first
        if not 0 <= i < len(self._ends):
            raise PayloadRejectedError(f"the block of inputs at byte {self.start} of job {self.job_id} does not hold "
                                       f"call {call_id}")
        value = pickle.loads(self._pickles[self._ends[i - 1] if i else 0:self._ends[i]])
        return ((value,), {}) if self._items else value


def dumps_value(value: Any) -> bytes:
    """Pickle a result or exception: plain pickle when it can, cloudpickle when it must."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class Spool:
    """A sealed pickle being written: kept in memory up to a limit, in a temporary file beyond.

    Its MAC is computed only when asked for, over the pieces in memory or as they go to the file,
    so a small result that a signed record carries inline costs neither a file nor a MAC.
    """

    def __init__(self, key: bytes, identity: str, memory_limit: int) -> None:
        self.size = 0
        self.file: BinaryIO | None = None
        self._key = key
        self._identity = identity
        self._limit = memory_limit
        self._parts: list[bytes] = []
        self._hmac: Any = None

    def write(self, chunk: bytes | memoryview) -> int:
        """Take the next piece of the payload; the piece that crosses the limit moves it all to disk."""
        size = memoryview(chunk).nbytes
        if self.file is None and self.size + size > self._limit:
            self.file = tempfile.TemporaryFile(prefix="burstmap-")
            self._hmac = _hmac(self._key, self._identity)
            for part in self._parts:
                self._to_file(part)
            self._parts = []
        self.size += size
        if self.file is not None:
            self._to_file(chunk)
        else:
            self._parts.append(chunk if type(chunk) is bytes else bytes(chunk))
        return size

    def _to_file(self, chunk: bytes | memoryview) -> None:
        self._hmac.update(chunk)
        self.file.write(chunk)

    @property
    def mac(self) -> bytes:
        if self.file is None:
            return _mac(self._key, self._identity, self.payload())
        return self._hmac.digest()

    def payload(self) -> bytes:
        """The payload alone (for small payloads that a signed record carries)."""
        if self.file is None:
            return self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self.file.seek(0)
        return self.file.read()

    def sealed(self) -> bytes:
        """The MAC and the payload as one blob (for small payloads)."""
        return self.mac + self.payload()

    def copy_to(self, target: BinaryIO) -> None:
        """Write the MAC and then the payload to ``target`` in chunks."""
        target.write(self.mac)
        if self.file is None:
            for part in self._parts:
                target.write(part)
            return
        self.file.seek(0)
        shutil.copyfileobj(self.file, target, _COPY_CHUNK)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spool_value(key: bytes, identity: str, value: Any, memory_limit: int) -> Spool:
    """Pickle a result or exception into a `Spool`: plain pickle when it can, cloudpickle when it must.

    The pickler writes large objects straight through, so a 200 MB result costs no second 200 MB in
    memory: the payload is on disk beyond ``memory_limit``, and its MAC is computed on the way.
    """
    try:
        return _spool(pickle.dump, key, identity, value, memory_limit)
    except Exception:
        return _spool(cloudpickle.dump, key, identity, value, memory_limit)


def _spool(dump: Callable, key: bytes, identity: str, value: Any, memory_limit: int) -> Spool:
    """Pickle ``value`` with ``dump`` into a new `Spool`, closed again if pickling fails."""
    spool = Spool(key, identity, memory_limit)
    try:
        dump(value, spool, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:
        spool.close()
        raise
    return spool


def seal_value(key: bytes, identity: str, value: Any) -> bytes:
    """``seal(key, identity, dumps_value(value))``, pickled once through a `Spool` held in memory."""
    with spool_value(key, identity, value, sys.maxsize) as spool:
        return spool.sealed()


def loads(key: bytes, identity: str, blob: bytes) -> Any:
    """Verify a sealed blob, then unpickle it."""
    with _verified(key, identity, blob) as payload:
        return pickle.loads(payload)


def load_stream(key: bytes, identity: str, source: BinaryIO) -> Any:
    """Verify a sealed stream while copying it to a private temporary file, then unpickle from that file.

    Nothing is unpickled before the whole payload has been checked, and the payload is never
    whole in memory: only the value it unpickles to is.
    """
    mac = source.read(MAC_SIZE)
    if len(mac) < MAC_SIZE:
        raise PayloadRejectedError(f"payload {identity} is unsigned or truncated")
    check = _hmac(key, identity)
    with tempfile.TemporaryFile(prefix="burstmap-") as payload:
        while chunk := source.read(_COPY_CHUNK):
            check.update(chunk)
            payload.write(chunk)
        if not hmac.compare_digest(mac, check.digest()):
            raise _rejected(identity)
        payload.seek(0)
        return pickle.load(payload)


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or repr(func)
