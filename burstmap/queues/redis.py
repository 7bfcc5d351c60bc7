"""A queue on a Redis stream with a consumer group (Redis 6.2 or later).

Workers read new entries with XREADGROUP; an entry stays in the group's pending list until
acknowledged. A live worker heartbeats by XCLAIM-ing its own entries (JUSTID: the idle time resets,
the delivery count does not grow); an entry idle longer than the lease belonged to a worker that
died and is taken over with XAUTOCLAIM.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

from ..redact import redact_url
from ..storage.redis import describe
from .base import Message, Queue, QueueError

__all__ = ["RedisQueue"]

_FIELD = b"m"


class RedisQueue(Queue):
    """Messages are entries of the stream ``stream``, taken through the consumer group ``group``."""

    name = "redis"

    def __init__(self, url: str = "redis://localhost:6379/0", stream: str = "burstmap:calls",
                 group: str = "burstmap", lease: float = 30.0) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, not {lease!r}")
        self.url, self.stream, self.group, self.lease = url, stream, group, lease
        parts = urlsplit(url)
        self.address = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self._client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=max(10.0, lease))
        self._group_made = False
        self._lock = threading.Lock()
        self._presence = f"{self.stream}:workers:"
        self._horizon = max(10.0, lease)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.AuthenticationError, redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as e:
            if str(e).startswith("NOGROUP"):
                self._group_made = False
            raise QueueError(f"queue redis at {self.address} {describe(e)}") from None

    def _ensure_group(self) -> None:
        if self._group_made:
            return
        try:
            self._client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if not str(e).startswith("BUSYGROUP"):
                raise
        self._group_made = True

    def check(self) -> None:
        with self._errors():
            self._client.ping()
            self._ensure_group()

    def put(self, bodies: Sequence[bytes]) -> None:
        with self._errors():
            self._ensure_group()
            pipe = self._client.pipeline(transaction=False)
            for body in bodies:
                pipe.xadd(self.stream, {_FIELD: body})
            pipe.execute()

    def get(self, max_messages: int, wait: float) -> list[Message]:
        with self._errors():
            self._ensure_group()
            self._client.set(self._presence + self.consumer, b"1", px=int(self._horizon * 1000))
            reply = self._client.xautoclaim(self.stream, self.group, self.consumer, int(self.lease * 1000),
                                            start_id="0-0", count=max_messages)
            claimed = [(i, f) for i, f in reply[1] if f]
            if claimed:
                return [Message(i.decode(), f[_FIELD]) for i, f in claimed]
            streams = self._client.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                              count=max_messages, block=max(1, int(wait * 1000)))
        return [Message(i.decode(), f[_FIELD]) for _, entries in streams or () for i, f in entries if f]

    def ack(self, message: Message) -> None:
        with self._errors():
            self._client.pipeline().xack(self.stream, self.group, message.handle).xdel(
                self.stream, message.handle).execute()

    def extend(self, messages: Sequence[Message]) -> None:
        if messages:
            with self._errors():
                self._client.xclaim(self.stream, self.group, self.consumer, 0,
                                    [m.handle for m in messages], justid=True)

    def workers_seen(self) -> int:
        """Workers that asked for messages within the last lease (or 10 s): each leaves an expiring key.

        (``XINFO CONSUMERS`` cannot tell: a consumer blocked on an empty stream does not show there.)
        """
        with self._errors():
            return sum(1 for _ in self._client.scan_iter(match=re.sub(r"([*?\[\]\\])", r"\\\1", self._presence) + "*"))

    def __repr__(self) -> str:
        return f"RedisQueue(url={redact_url(self.url)!r}, stream={self.stream!r})"
