"""The `Queue` seam: carries signed batches of calls to `burstmap worker` daemons, with leases.

A message is taken with a lease: it is invisible to other workers until the lease runs out, the
worker that holds it extends the lease while it runs the calls (a heartbeat), and acknowledges it
only once every call's status is written. A worker that dies stops extending, so its message is
delivered again to another worker.

Messages are JSON, never pickles, and carry an HMAC: ``<hex mac>.<json>``, the MAC taken over the
identity ``queue/<job_id>/<first call>`` and the JSON bytes. A message that fails verification is
dropped, never run.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import BurstmapError, PayloadRejectedError
from ..job import Manifest
from ..serialize import MAC_SIZE, seal, unseal
from ..worker import Task

__all__ = ["Batch", "Message", "Queue", "QueueError", "decode_batch", "encode_batch"]


class QueueError(BurstmapError):
    """A queue could not be reached or refused an operation."""


@dataclass(frozen=True)
class Message:
    """One delivery of one message: its handle for ack/extend, its body and its delivery count."""

    handle: str
    body: bytes
    delivery: int = 1


@dataclass(frozen=True)
class Batch:
    """What a verified message asks for: run these tasks of one job."""

    tasks: tuple[Task, ...]
    timeout: float | None
    max_retries: int


def encode_batch(key: bytes, manifest: Manifest, call_ids: Sequence[int]) -> bytes:
    """The signed message body for calls ``call_ids`` of a job."""
    body = json.dumps({
        "v": 1, "prefix": manifest.prefix, "job": manifest.job_id, "timeout": manifest.timeout,
        "max_retries": manifest.max_retries, "calls": [[c, *manifest.data_range(c)] for c in call_ids],
    }, separators=(",", ":")).encode()
    sealed = seal(key, f"queue/{manifest.job_id}/{call_ids[0]}", body)
    return sealed[:MAC_SIZE].hex().encode() + b"." + body


def decode_batch(key: bytes, blob: bytes) -> Batch:
    """Verify and parse a message body; raise `PayloadRejectedError` for anything not signed by ``key``."""
    mac, dot, body = blob.partition(b".")
    try:
        fields = json.loads(body)
        identity = f"queue/{fields['job']}/{fields['calls'][0][0]}"
        unseal(key, identity, bytes.fromhex(mac.decode("ascii")) + body)
        tasks = tuple(Task(fields["prefix"], fields["job"], int(c), int(s), int(e)) for c, s, e in fields["calls"])
        return Batch(tasks, fields["timeout"], int(fields["max_retries"]))
    except PayloadRejectedError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError, RecursionError) as e:
        raise PayloadRejectedError(f"not a burstmap queue message ({type(e).__name__})") from None


class Queue(ABC):
    """A work queue with leases. Implementations override the abstract methods.

    Args of implementations include ``lease``: seconds a taken message stays invisible to others.
    """

    name: ClassVar[str]
    lease: float

    def check(self) -> None:
        """Raise `QueueError` in one line if the queue cannot be used."""

    @abstractmethod
    def put(self, bodies: Sequence[bytes]) -> None:
        """Append messages."""

    @abstractmethod
    def get(self, max_messages: int, wait: float) -> list[Message]:
        """Take up to ``max_messages`` (new ones, or ones whose lease ran out), waiting up to ``wait`` s."""

    @abstractmethod
    def ack(self, message: Message) -> None:
        """Remove a message for good: its work is done (or it was refused)."""

    @abstractmethod
    def extend(self, messages: Sequence[Message]) -> None:
        """Restart the lease of messages this worker holds."""

    def workers_seen(self) -> int | None:
        """How many workers took messages lately, or ``None`` if the queue cannot tell."""
        return None
