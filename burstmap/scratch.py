"""Named objects in the executor's store that calls write and read: the data passed between stages.

A `Scratch` is one folder of the executor's store, ``<prefix>/scratch/<name>/``. Pass it to calls as
an argument (``ex.map(f, items, extra_args=(space,))``); in the worker it is bound to that worker's
own connection to the store and to the job's secret key, so one call can write many objects (a map
task's partitions), another can read them by name (a reducer reads its partition of every map
output), and the client can read the last stage's output. Bytes are stored as given; Python values
(`save` / `load`) are pickled and signed, and verified before they are unpickled, like every other
payload. The client's ``burstmap.wait`` on one stage's futures is the barrier before the next.
"""

from __future__ import annotations

import re
import secrets
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from .serialize import loads, seal_value
from .storage.base import Storage

__all__ = ["Scratch"]

_NAME = re.compile(r"[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*")


def _checked(name: str, what: str) -> str:
    """``name`` if it is a relative key made of safe path segments; a one-line `ValueError` otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or any(p in (".", "..") for p in name.split("/")):
        raise ValueError(f"bad {what} {name!r}: use letters, digits and _ . = - in segments joined by /")
    return name


class Scratch(AbstractContextManager):
    """A folder of named objects in the executor's store, usable from the client and from inside calls.

    Made by `Executor.scratch`. Leaving a ``with`` block deletes every object in it.
    """

    def __init__(self, name: str, prefix: str, storage: Storage | None = None, key: bytes | None = None) -> None:
        self.name = _checked(name, "scratch name")
        self.root = f"{prefix}/scratch/{name}/"
        self._storage = storage
        self._key = key

    @classmethod
    def fresh(cls, prefix: str, storage: Storage, key: bytes) -> Scratch:
        """A scratch folder under a new random name."""
        return cls(secrets.token_hex(8), prefix, storage, key)

    def bind(self, storage: Storage, key: bytes) -> Scratch:
        """Attach the store and secret key of the worker that received this folder as an argument."""
        self._storage, self._key = storage, key
        return self

    @property
    def storage(self) -> Storage:
        """The store this folder lives in (the worker's own connection inside a call)."""
        if self._storage is None:
            raise self._unbound()
        return self._storage

    def key(self, name: str) -> str:
        """The store key of the object ``name``."""
        return self.root + _checked(name, "object name")

    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as the object ``name``, replacing any older one (atomically)."""
        self.storage.put(self.key(name), data)

    def get(self, name: str) -> bytes:
        """The bytes of the object ``name``; `KeyNotFoundError` if there is none."""
        return self.storage.get(self.key(name))

    def get_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object ``name``."""
        return self.storage.get_range(self.key(name), start, end)

    def open_read(self, name: str) -> BinaryIO:
        """A binary file of the object ``name``, to read in blocks."""
        return self.storage.open_read(self.key(name))

    def size(self, name: str) -> int:
        """The size in bytes of the object ``name``."""
        return self.storage.size(self.key(name))

    def names(self, prefix: str = "") -> list[str]:
        """The names of the objects under ``prefix`` (a folder ends in ``/``), sorted."""
        if prefix:
            _checked(prefix.rstrip("/"), "prefix")
        return sorted(k[len(self.root):] for k in self.storage.list(self.root + prefix))

    def save(self, name: str, value: Any) -> None:
        """Store a Python value, pickled and signed with the job's secret key."""
        self.put(name, seal_value(self._secret(), self._identity(name), value))

    def load(self, name: str) -> Any:
        """A value stored by `save`, verified before it is unpickled (`PayloadRejectedError` if altered)."""
        return loads(self._secret(), self._identity(name), self.get(name))

    def clear(self) -> None:
        """Delete every object in this folder."""
        self.storage.delete_prefix(self.root)

    def __exit__(self, *exc: object) -> None:
        self.clear()

    def _identity(self, name: str) -> str:
        return f"{self.root}{_checked(name, 'object name')}"

    def _secret(self) -> bytes:
        if self._key is None:
            raise self._unbound()
        return self._key

    def _unbound(self) -> RuntimeError:
        return RuntimeError(f"scratch {self.name!r} has no store here: pass it to a call as an argument of "
                            "its own (in extra_args), not inside another object")

    def __getstate__(self) -> dict:
        """Travel without the store and the key: the worker binds its own (the key never enters storage)."""
        return {**self.__dict__, "_storage": None, "_key": None}

    def __repr__(self) -> str:
        return f"Scratch({self.name!r})"
