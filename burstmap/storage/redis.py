"""A store in a Redis database: one string value per key, for small and fast shared state."""

from __future__ import annotations

import os
import re
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import KeyNotFoundError, StorageError
from ..redact import redact_url
from .base import Storage, permanent

__all__ = ["RedisStorage", "describe"]

_BATCH = 1000  # keys per DEL and per SCAN step
_CHUNK = 4 * 1024 * 1024  # bytes per APPEND / GETRANGE when streaming files
_UPLOADS = "burstmap-upload-in-progress/"  # partial uploads live here, not beside their key
_GLOB = re.compile(r"([*?\[\]\\])")
#: Redis error replies that a wait may cure: out of memory or disk, a failover, a busy server.
_PASSING = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError)
_PASSING_REPLIES = {"MISCONF", "BUSY", "NOREPLICAS"}  # error codes redis-py leaves in the message


def describe(error: redis.RedisError) -> str:
    """What went wrong with a Redis server, in words that never include its password."""
    if isinstance(error, redis.AuthenticationError):
        return "rejected the credentials"
    if isinstance(error, redis.TimeoutError):
        return "timed out"
    if isinstance(error, redis.ConnectionError):
        return "is not reachable"
    return f"refused: {str(error).splitlines()[0]}"


def _lasting(error: redis.RedisError) -> bool:
    """Tell whether ``error`` would recur however long one waits: refused credentials, a command Redis rejects."""
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
        return True
    if isinstance(error, redis.ResponseError):
        return not isinstance(error, _PASSING) and str(error).split(" ", 1)[0] not in _PASSING_REPLIES
    return False


class RedisStorage(Storage):
    """Keys are Redis keys as they are (no prefix); values are Redis strings (512 MB at most)."""

    name = "redis"

    def __init__(self, url: str = "redis://localhost:6379/0", retries: int = 6) -> None:
        self.url = url
        self.retries = retries
        parts = urlsplit(url)
        self.address = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self._lock = threading.Lock()
        self._client_obj: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        """The redis-py client of this store; its pool is thread-safe and resets itself after fork."""
        if self._client_obj is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = redis.Redis.from_url(
                        self.url, socket_connect_timeout=5,
                        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), self.retries),
                        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                    )
        return self._client_obj

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn redis-py's exceptions into burstmap's one-line errors, never showing the password."""
        try:
            yield
        except (redis.AuthenticationError, redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
            message = f"redis at {self.address} {describe(e)}"
            raise (permanent(message) if _lasting(e) else StorageError(message)) from None

    def _missing(self, key: str) -> KeyNotFoundError:
        return KeyNotFoundError(f"no key {key!r} in redis at {self.address}")

    def check(self) -> None:
        with self._errors():
            self.client.ping()

    def put(self, key: str, data: bytes) -> None:
        with self._errors():
            self.client.set(key, data)

    def get(self, key: str) -> bytes:
        with self._errors():
            data = self.client.get(key)
        if data is None:
            raise self._missing(key)
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        with self._errors():
            pipe = self.client.pipeline()
            pipe.exists(key)
            if end > start:
                pipe.getrange(key, start, end - 1)
            found, *data = pipe.execute()
        if not found:
            raise self._missing(key)
        return data[0] if data else b""

    def size(self, key: str) -> int:
        with self._errors():
            found, length = self.client.pipeline().exists(key).strlen(key).execute()
        if not found:
            raise self._missing(key)
        return length

    def list(self, prefix: str) -> Iterator[str]:
        """Yield each key under ``prefix`` once (SCAN may repeat keys while Redis rehashes)."""
        pattern = _GLOB.sub(r"\\\1", prefix) + "*"
        seen: set[bytes] = set()
        with self._errors():
            for key in self.client.scan_iter(match=pattern, count=_BATCH):
                if key not in seen:
                    seen.add(key)
                    yield key.decode()

    def delete(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        with self._errors():
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(keys), _BATCH):
                pipe.delete(*keys[i:i + _BATCH])
            pipe.execute()

    def upload(self, path: str | os.PathLike, key: str) -> None:
        tmp = f"{_UPLOADS}{uuid.uuid4().hex}"
        with self._errors(), open(path, "rb") as f:
            self.client.set(tmp, b"")
            try:
                while chunk := f.read(_CHUNK):
                    self.client.append(tmp, chunk)
                self.client.rename(tmp, key)
            finally:
                self.client.delete(tmp)

    open_write = Storage.spooled_write

    def open_read(self, key: str) -> BinaryIO:
        """Copy the value in chunks into a temporary file and return it at its start: never whole in memory."""
        size = self.size(key)
        f = tempfile.TemporaryFile(prefix="burstmap-")
        try:
            with self._errors():
                for start in range(0, size, _CHUNK):
                    f.write(self.client.getrange(key, start, min(start + _CHUNK, size) - 1))
        except BaseException:
            f.close()
            raise
        f.seek(0)
        return f

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        return f"RedisStorage(url={redact_url(self.url)!r})"
