"""Work queues that carry call batches to `burstmap worker` daemons: Redis Streams, Amazon SQS."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .. import registry
from ..errors import ConfigError
from .base import Message, Queue, QueueError

__all__ = ["Message", "Queue", "QueueError", "open_queue"]

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
    cls = registry.load("queue", parts.scheme)
    if parts.scheme == "sqs":
        where = parts.netloc
    else:
        where = urlunsplit((parts.scheme, parts.netloc, parts.path or "/0", "", ""))
    try:
        return cls(where, **options)
    except TypeError as e:
        raise ConfigError(f"queue URL {url!r}: {e}") from None
