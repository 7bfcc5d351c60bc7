"""The `Storage` seam: a flat key/value object store that every backend reads and writes."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import BinaryIO, ClassVar

from ..errors import KeyNotFoundError, StorageError

__all__ = ["COPY_CHUNK", "Storage", "is_permanent", "permanent"]

#: Bytes per read/write when streaming an object through a file.
COPY_CHUNK = 4 * 1024 * 1024


def permanent(message: str) -> StorageError:
    """A `StorageError` that waiting cannot cure (no bucket, refused credentials): raise it at once.

    Stores mark these where they raise them so that a retrying wrapper gives up without waiting.
    """
    error = StorageError(message)
    error.permanent = True
    return error


def is_permanent(error: StorageError) -> bool:
    """Tell whether ``error`` would recur however long one waits (see `permanent`)."""
    return getattr(error, "permanent", False)


class Storage(ABC):
    """An object store addressed by string keys with ``/`` as the separator.

    Implementations override the abstract methods; everything else is written once here.
    A store must be picklable so that it can travel to worker processes: it reconnects
    lazily after unpickling.
    """

    name: ClassVar[str]

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key`` atomically: readers see the old object or the new one."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object under ``key``; raise `KeyNotFoundError` if there is none."""

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object under ``key``."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key that starts with ``prefix``."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete the given keys; keys that do not exist are ignored."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Return the size in bytes of the object under ``key``."""

    def check(self) -> None:
        """Raise `StorageError` in one line if the store cannot be used (no bucket, no server)."""

    def exists(self, key: str) -> bool:
        """Tell whether ``key`` exists."""
        try:
            self.size(key)
        except KeyNotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Delete every key under ``prefix``."""
        self.delete(list(self.list(prefix)))

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """A binary file that becomes the object under ``key`` when the block ends without error; nothing on error.

        This default buffers in memory, then `put`s; stores that can stream override it.
        """
        buffer = io.BytesIO()
        yield buffer
        self.put(key, buffer.getvalue())

    def open_read(self, key: str) -> BinaryIO:
        """A binary file of the object under ``key``; this default reads it whole into memory."""
        return io.BytesIO(self.get(key))

    @contextmanager
    def spooled_write(self, key: str) -> Iterator[BinaryIO]:
        """An `open_write` for stores whose `upload` streams: spill to a temporary file, upload it on close."""
        with tempfile.NamedTemporaryFile(prefix="burstmap-") as f:
            yield f
            f.flush()
            self.upload(f.name, key)

    def upload(self, path: str | os.PathLike, key: str) -> None:
        """Store the local file at ``path`` under ``key``."""
        with open(path, "rb") as source, self.open_write(key) as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)

    def download(self, key: str, path: str | os.PathLike) -> None:
        """Write the object under ``key`` to the local file at ``path``."""
        tmp = f"{os.fspath(path)}.part"
        with self.open_read(key) as source, open(tmp, "wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)
        shutil.move(tmp, path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
