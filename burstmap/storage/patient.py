"""A wrapper that makes any store wait out a brief outage: an outage costs time, never results."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, TypeVar

from ..errors import KeyNotFoundError, StorageError
from .base import Storage, is_permanent

__all__ = ["OUTAGE_LIMIT", "Patient"]

#: Seconds a store may stay unreachable before the operation waiting on it fails: the documented outage limit.
OUTAGE_LIMIT = 60.0
_FIRST_PAUSE = 0.1  # seconds before the first retry; doubled after each failure ...
_LONGEST_PAUSE = 2.0  # ... up to this, so a store that is back is used again within about 2 s

log = logging.getLogger(__name__)
T = TypeVar("T")


class Patient(Storage):
    """``store`` with every operation retried while it fails with a passing `StorageError`.

    An operation that fails is tried again after a pause that doubles from 0.1 s up to 2 s (with
    jitter, so that many workers do not return at once) until it succeeds or ``limit`` seconds have
    passed since its first failed attempt began; then it raises one line:
    ``store <repr> unreachable for over <limit>s: <last error>``. A missing key (`KeyNotFoundError`)
    and errors the store marks permanent (no bucket, refused credentials, no permission) are raised
    at once. Every operation of a store is idempotent, so retrying one is safe. `open_write` spools
    the block's bytes to a local temporary file and uploads it when the block ends, so that upload
    can be retried; `open_read` opens the object again; `list` reads the whole listing.

    The store's own retries run inside each attempt (redis-py up to ``retries`` reconnects,
    botocore up to 6 attempts), so an operation fails at most ``limit`` plus one attempt's worth of
    those after an outage begins; the two never multiply.
    """

    name = "patient"

    def __init__(self, store: Storage, limit: float = OUTAGE_LIMIT) -> None:
        self.store = store
        self.limit = limit

    def _retry(self, operation: Callable[[], T]) -> T:
        """Run ``operation`` until it succeeds, fails for good, or the store has been down ``limit`` seconds."""
        down_since, pause = None, _FIRST_PAUSE
        while True:
            began = time.monotonic()
            try:
                return operation()
            except KeyNotFoundError:
                raise
            except StorageError as e:
                if is_permanent(e):
                    raise
                if down_since is None:
                    down_since = began
                    log.warning("store %r failed, retrying for up to %gs: %s", self.store, self.limit, e)
                left = down_since + self.limit - time.monotonic()
                if left <= 0:
                    raise StorageError(f"store {self.store!r} unreachable for over {self.limit:g}s: {e}") from None
                wait = min(left, pause * random.uniform(0.5, 1.5))
                log.debug("store %r: retry in %.2fs after: %s", self.store, wait, e)
                time.sleep(wait)
                pause = min(pause * 2, _LONGEST_PAUSE)

    def check(self) -> None:
        self._retry(self.store.check)

    def put(self, key: str, data: bytes) -> None:
        self._retry(lambda: self.store.put(key, data))

    def get(self, key: str) -> bytes:
        return self._retry(lambda: self.store.get(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self._retry(lambda: self.store.get_range(key, start, end))

    def size(self, key: str) -> int:
        return self._retry(lambda: self.store.size(key))

    def list(self, prefix: str) -> Iterator[str]:
        """Yield every key under ``prefix``: the listing is read whole, so a retried one repeats no key."""
        yield from self._retry(lambda: list(self.store.list(prefix)))

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self._retry(lambda: self.store.delete(keys))

    open_write = Storage.spooled_write

    def open_read(self, key: str) -> BinaryIO:
        """Open the object under ``key`` in the store, opening it again if the store is down."""
        return self._retry(lambda: self.store.open_read(key))

    def upload(self, path: str | os.PathLike, key: str) -> None:
        self._retry(lambda: self.store.upload(path, key))

    def download(self, key: str, path: str | os.PathLike) -> None:
        self._retry(lambda: self.store.download(key, path))

    def __repr__(self) -> str:
        return repr(self.store)
