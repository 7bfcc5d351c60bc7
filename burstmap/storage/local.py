"""A store in a local directory: the embedded default, one file per key, atomic by rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import platformdirs

from ..errors import KeyNotFoundError, StorageError
from .base import Storage

__all__ = ["LocalStorage", "default_path"]


def default_path() -> Path:
    """The per-user directory that holds the local store when none is configured."""
    return Path(platformdirs.user_cache_dir("burstmap")) / "store"


class LocalStorage(Storage):
    """Keys are paths relative to ``path``; writes go to a temporary file then ``os.replace``."""

    name = "local"

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_path()
        self._root = f"{self.path}/"
        self._made: set[str] = set()

    def _file(self, key: str) -> str:
        if key[:1] == "/" or (".." in key and ".." in key.split("/")):
            raise StorageError(f"invalid key {key!r}: keys are relative and never contain '..'")
        return self._root + key

    def check(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"local store {self.path} cannot be created: {e.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise StorageError(f"local store {self.path} is not writable")

    def _folder_of(self, file: str) -> str:
        """The folder of ``file``, created on first use."""
        folder = os.path.dirname(file)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        return folder

    def put(self, key: str, data: bytes) -> None:
        file = self._file(key)
        self._folder_of(file)
        tmp = f"{file}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, file)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Write to a temporary file beside the key's, renamed over it when the block ends without error."""
        file = self._file(key)
        fd, tmp = tempfile.mkstemp(".tmp", f"{os.path.basename(file)}.", self._folder_of(file))
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, file)

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._file(key), "rb")
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key {key!r} in local store {self.path}") from None

    def get(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._file(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key {key!r} in local store {self.path}") from None

    def size(self, key: str) -> int:
        try:
            return os.stat(self._file(key)).st_size
        except FileNotFoundError:
            raise KeyNotFoundError(f"no key {key!r} in local store {self.path}") from None

    def list(self, prefix: str) -> Iterator[str]:
        folder, _, start = prefix.rpartition("/")
        base = self._file(folder) if folder else str(self.path)
        head = f"{folder}/" if folder else ""
        try:
            entries = list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if not entry.name.startswith(start) or entry.name.endswith(".tmp"):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self.list(f"{head}{entry.name}/")
            else:
                yield f"{head}{entry.name}"

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            try:
                os.unlink(self._file(key))
            except FileNotFoundError:
                pass
        self._made.clear()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_made": set()}

    def __repr__(self) -> str:
        return f"LocalStorage(path={str(self.path)!r})"
