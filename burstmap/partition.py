"""Map over data: turn a storage URL, a local directory or a list of URLs into `DataPiece` objects.

Only the client runs this, and it only lists keys and reads their sizes: one piece per object, or
one per ``chunk_size`` bytes of it. The workers read the bytes themselves (see `burstmap.piece`).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, KeyNotFoundError
from .piece import DataPiece
from .redact import redact_url
from .storage.base import Storage
from .storage.local import LocalStorage
from .storage.url import SCHEMES, open_store

__all__ = ["parse_size", "is_data_source", "pieces"]

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(size: int | str) -> int:
    """Bytes in a size such as ``4096``, ``"64MiB"``, ``"1.5 GB"`` or ``"512k"``.

    ``KiB``/``MiB``/``GiB`` and the bare ``k``/``M``/``G`` are powers of 1024; ``kB``/``MB``/``GB`` are
    powers of 1000, as on a disk label.

    Raises:
        ConfigError: the size is not a positive number of bytes.
    """
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        match = _SIZE.fullmatch(str(size))
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if unit is None:
            raise ConfigError(f"cannot read {size!r} as a size; write e.g. 64MiB, 100MB or 1048576")
        value = int(float(match.group(1)) * unit)
    if value < 1:
        raise ConfigError(f"a size must be at least 1 byte, not {size!r}")
    return value


def _is_url(item: Any) -> bool:
    return isinstance(item, str) and urlsplit(item).scheme in SCHEMES


def is_data_source(iterdata: Any) -> bool:
    """Whether ``map`` should read ``iterdata`` as data to partition rather than a list of inputs.

    That is a string or path (a URL, a local directory or file), or a list or tuple of URLs with a
    storage scheme. Plain strings in a list, paths in a list and generators stay ordinary inputs.
    """
    if isinstance(iterdata, (str, os.PathLike)):
        return True
    return isinstance(iterdata, (list, tuple)) and bool(iterdata) and all(map(_is_url, iterdata))


def pieces(source: str | os.PathLike | Sequence[str], chunk_size: int | str | None = None,
           newline_aligned: bool = True, *, storage: Storage | None = None) -> list[DataPiece]:
    """The pieces that ``map`` makes calls of: objects in key order, chunks in byte order.

    Args:
        source: a URL (``s3://bucket/prefix/``, ``file:///dir/``, ``redis://host/db/prefix``), a local
            directory or file path, or a list of these.
            A URL ending in ``/`` (or naming no object) is a prefix: every object under it is read.
        chunk_size: split objects into byte ranges of this size (``"64MiB"``); ``None``: one piece each.
        newline_aligned: move piece boundaries to line ends so no text line is split.
        storage: the executor's store. Pieces of objects in it carry no store: workers read them
            through their own. An ``s3://`` URL of another bucket reuses its endpoint and credentials.

    Raises:
        KeyNotFoundError: a URL names no object and no object lies under it.
    """
    chunk = parse_size(chunk_size) if chunk_size is not None else None
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    found: list[DataPiece] = []
    for item in source:
        store, key = _open(item, storage)
        shared = store is storage
        for name, size in _objects(store, key, item):
            url = _url(store, name)
            for start, end in _ranges(size, chunk):
                found.append(DataPiece(url, name, start, end, size, newline_aligned, None if shared else store))
    return found


def _open(item: str | os.PathLike, default: Storage | None) -> tuple[Storage, str]:
    """The store and key (or prefix) that one source names."""
    if not _is_url(item):
        path = Path(item).expanduser().resolve()
        if path.is_dir():
            return LocalStorage(path), ""
        return LocalStorage(path.parent), path.name
    url = str(item)
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme == "file" and os.path.isdir(path):
        return LocalStorage(path), ""
    if parts.scheme == "s3" and parts.netloc and default is not None and default.name == "s3":
        return _bucket(default, parts.netloc), path.lstrip("/")
    store, key = open_store(url)
    if default is not None and type(store) is type(default) and repr(store) == repr(default):
        return default, key
    return store, key


def _bucket(store: Any, bucket: str) -> Storage:
    """The executor's S3 store itself, or a copy of it (same endpoint and credentials) for another bucket."""
    if store.bucket == bucket:
        return store
    other = copy.copy(store)
    other.bucket = bucket
    return other


def _objects(store: Storage, key: str, source: Any) -> Iterator[tuple[str, int]]:
    """``(key, size)`` of the one object ``key`` names, or of every object under it as a prefix."""
    if key and not key.endswith("/"):
        try:
            yield key, store.size(key)
            return
        except KeyNotFoundError:
            key += "/"
    listed = False
    for name in sorted(store.list(key)):
        if not name.endswith("/"):
            listed = True
            yield name, store.size(name)
    if not listed:
        raise KeyNotFoundError(f"no data object at or under {_shown(source)} in {store!r}")


def _ranges(size: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    if chunk is None or size == 0:
        yield 0, size
        return
    for start in range(0, size, chunk):
        yield start, min(start + chunk, size)


def _url(store: Storage, key: str) -> str:
    """A URL naming ``key`` in ``store``, for people: never with a password."""
    if isinstance(store, LocalStorage):
        return f"file://{store.path}/{key}"
    if store.name == "s3":
        return f"s3://{store.bucket}/{key}"
    if store.name == "redis":
        return f"{redact_url(store.url)}/{key}"
    return f"{store!r}:{key}"


def _shown(source: Any) -> str:
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    if urlsplit(text).password is None:
        return repr(text)
    return repr(redact_url(text))
