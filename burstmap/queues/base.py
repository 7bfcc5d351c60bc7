"""The `Queue` seam: carries signed batches of calls to `burstmap worker` daemons, with leases.

A message is taken with a lease: it is invisible to other workers until the lease runs out, the
worker that holds it extends the lease while it runs the calls (a heartbeat), and acknowledges it
only once every call's status is written. A worker that dies stops extending, so its message is
delivered again to another worker.

A message body is a `burstmap.job.Batch` in its one signed encoding: JSON, never a pickle. A worker
that cannot verify one runs nothing of it and records it as refused (see `burstmap.daemon`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import BurstmapError

__all__ = ["Message", "Queue", "QueueError"]


class QueueError(BurstmapError):
    """A queue could not be reached or refused an operation."""


@dataclass(frozen=True)
class Message:
    """One delivery of one message: its handle for ack/extend and its body.

    Deliveries are counted in the store, not by the queue (see `burstmap.attempts.Attempts.begin`), so
    that a message put on the queue again is recognised as the delivery it copies.
    """

    handle: str
    body: bytes


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
