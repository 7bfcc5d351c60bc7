"""Work queues that carry call batches to `burstmap worker` daemons: Redis Streams, Amazon SQS."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..errors import ConfigError
from .base import Batch, Message, Queue, QueueError, decode_batch, encode_batch

__all__ = ["Batch", "Message", "Queue", "QueueError", "decode_batch", "encode_batch", "open_queue"]

_FLOATS = {"lease"}


def open_queue(url: str) -> Queue:
    """Open a queue from its URL.

    ``redis://[:password@]host:port/db?stream=burstmap:calls&lease=30`` is a Redis stream;
    ``sqs://queue-name?region=us-east-1&endpoint_url=http://...&lease=30`` is an SQS queue
    (credentials from boto3's usual chain).
    """
    parts = urlsplit(url)
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    for name in _FLOATS & set(options):
        options[name] = float(options[name])
    try:
        if parts.scheme in ("redis", "rediss"):
            from .redis import RedisQueue
            return RedisQueue(urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", "", "")), **options)
        if parts.scheme == "sqs":
            from .sqs import SQSQueue
            return SQSQueue(parts.netloc, **options)
    except ImportError as e:
        extra = "redis" if parts.scheme.startswith("redis") else "s3"
        raise ConfigError(f"queue {parts.scheme}:// needs {e.name}; install it with: pip install 'burstmap[{extra}]'") from None
    except TypeError as e:
        raise ConfigError(f"queue URL {url!r}: {e}") from None
    raise ConfigError(f"unknown queue URL scheme {parts.scheme!r}; known: redis://, rediss://, sqs://")
