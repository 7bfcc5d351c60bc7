"""A store in a local directory: the embedded default, one file per key, atomic by rename."""

from __future__ import annotations

import errno
import io
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import platformdirs

from ..errors import KeyNotFoundError, StorageError
from .base import Storage, permanent

__all__ = ["LocalStorage", "default_path"]

#: OS errors that waiting cannot cure: no permission, a read-only disk, a key that is not a valid path.
_PERMANENT = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR,
              errno.EEXIST, errno.EINVAL, errno.ELOOP}


def default_path() -> Path:
    """The per-user directory that holds the local store when none is configured."""
    return Path(platformdirs.user_cache_dir("burstmap")) / "store"


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


class _TempFile(io.BufferedWriter):
    """The temporary file behind `LocalStorage.open_write`: a write the disk refuses is the store's one-line error."""

    def __init__(self, fd: int, store: LocalStorage, key: str) -> None:
        super().__init__(io.FileIO(fd, "wb"))
        self._store = store
        self._key = key

    def write(self, data: bytes) -> int:
        with self._store._errors(f"write {self._key!r}"):
            return super().write(data)

    def flush(self) -> None:
        with self._store._errors(f"write {self._key!r}"):
            super().flush()

    def discard(self) -> None:
        """Close without writing out what is still buffered: the object is abandoned."""
        self.raw.close()


class LocalStorage(Storage):
    """Keys are paths relative to ``path``; writes go to a temporary file then ``os.replace``.

    Every OS error other than a missing key's becomes a one-line `StorageError` naming the store and
    the reason; those that waiting may cure (a full disk, an I/O error) are not marked permanent.
    """

    name = "local"

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_path()
        self._root = f"{self.path}/"
        self._made: set[str] = set()

    def _file(self, key: str) -> str:
        if key[:1] == "/" or (".." in key and ".." in key.split("/")):
            raise permanent(f"invalid key {key!r}: keys are relative and never contain '..'")
        return self._root + key

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn an `OSError` while ``doing`` something into a one-line `StorageError`."""
        try:
            yield
        except OSError as e:
            message = f"local store {self.path} could not {doing}: {e.strerror or e}"
            raise (permanent(message) if e.errno in _PERMANENT else StorageError(message)) from None

    def _missing(self, key: str) -> KeyNotFoundError:
        return KeyNotFoundError(f"no key {key!r} in local store {self.path}")

    def check(self) -> None:
        with self._errors("create its folder"):
            self.path.mkdir(parents=True, exist_ok=True)
        if not os.access(self.path, os.W_OK):
            raise permanent(f"local store {self.path} is not writable")

    def _folder_of(self, file: str) -> str:
        """The folder of ``file``, created on first use."""
        folder = os.path.dirname(file)
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        return folder

    def _temp_beside(self, file: str) -> tuple[int, str]:
        """Create a uniquely named temporary file beside ``file``, remaking its folder if it was removed."""
        prefix = f"{os.path.basename(file)}."
        try:
            return tempfile.mkstemp(".tmp", prefix, self._folder_of(file))
        except FileNotFoundError:
            self._made.discard(os.path.dirname(file))
            return tempfile.mkstemp(".tmp", prefix, self._folder_of(file))

    def put(self, key: str, data: bytes) -> None:
        """Write to a temporary file named for this process and thread, then rename it over the key's.

        The quick path for whole objects (a status record is one per batch of quick calls); a failed
        write removes its temporary file.
        """
        file = self._file(key)
        tmp = f"{file}.{os.getpid()}-{threading.get_ident()}.tmp"
        with self._errors(f"write {key!r}"):
            try:
                fd = os.open(tmp, _NEW_FILE, 0o600) if os.path.dirname(file) in self._made else None
            except FileNotFoundError:  # the folder was removed since: make it again
                self._made.discard(os.path.dirname(file))
                fd = None
            if fd is None:
                self._folder_of(file)
                fd = os.open(tmp, _NEW_FILE, 0o600)
            try:
                with os.fdopen(fd, "wb", buffering=0) as f:
                    view = memoryview(data)
                    while view:
                        view = view[f.write(view):]
                os.replace(tmp, file)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Write to a temporary file beside the key's, renamed over it when the block ends without error.

        The temporary file's name is unique (threads and processes writing one key never share it) and
        it is removed whenever the write fails.
        """
        file = self._file(key)
        with self._errors(f"write {key!r}"):
            fd, tmp = self._temp_beside(file)
        f = _TempFile(fd, self, key)
        try:
            yield f
            f.close()
            with self._errors(f"write {key!r}"):
                os.replace(tmp, file)
        except BaseException:
            f.discard()
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def open_read(self, key: str) -> BinaryIO:
        with self._errors(f"read {key!r}"):
            try:
                return open(self._file(key), "rb")
            except FileNotFoundError:
                raise self._missing(key) from None

    def get(self, key: str) -> bytes:
        with self.open_read(key) as f, self._errors(f"read {key!r}"):
            return f.read()

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self._errors(f"read {key!r}"):
            try:
                with open(self._file(key), "rb") as f:
                    f.seek(start)
                    return f.read(max(0, end - start))
            except FileNotFoundError:
                raise self._missing(key) from None

    def size(self, key: str) -> int:
        with self._errors(f"read {key!r}"):
            try:
                return os.stat(self._file(key)).st_size
            except FileNotFoundError:
                raise self._missing(key) from None

    def list(self, prefix: str) -> Iterator[str]:
        with self._errors(f"list {prefix!r}"):
            yield from self._list(prefix)

    def _list(self, prefix: str) -> Iterator[str]:
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
                yield from self._list(f"{head}{entry.name}/")
            else:
                yield f"{head}{entry.name}"

    def delete(self, keys: Iterable[str]) -> None:
        """Delete the keys' files, then the folders that leaves empty (up to the store's own)."""
        folders = set()
        for key in keys:
            file = self._file(key)
            with self._errors(f"delete {key!r}"), suppress(FileNotFoundError):
                os.unlink(file)
            folders.add(os.path.dirname(file))
        self._made.clear()
        for folder in sorted(folders, key=len, reverse=True):
            while folder.startswith(self._root) and folder != self._root.rstrip("/"):
                try:
                    os.rmdir(folder)
                except OSError:  # not empty (or already gone, or in use): its parents are not empty either
                    break
                folder = os.path.dirname(folder)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_made": set()}

    def __repr__(self) -> str:
        return f"LocalStorage(path={str(self.path)!r})"
