"""A job's lease: the client's word that it still watches the job, renewed while it does.

While any future of a job is pending, the client that watches it rewrites ``<job>/lease`` every
`RENEW` seconds, saying until when it holds. A job with unfinished calls whose lease has run out is
*abandoned*: its client was killed, interrupted or shut down without waiting (a client that stops
watching on purpose ends its lease at once). ``burstmap jobs`` and ``status`` say so, ``status
--follow`` stops, ``clean`` removes it without ``--force``, and ``attach(job_id, resume=True)`` from
any process takes it back. Jobs written before leases existed have none and are judged by age.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable

from .errors import KeyNotFoundError
from .job import Layout
from .storage.base import Storage

__all__ = ["HOLD", "RENEW", "Leases", "expired"]

#: Seconds a lease holds after it was written; a client renews it every `RENEW` seconds.
HOLD = 60.0
RENEW = HOLD / 4


class Leases:
    """The leases one client holds: on the jobs it watches, and on those it gave up calls of (cancelled)."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._held: dict[str, tuple[Layout, float]] = {}  # job id: its layout, when last renewed
        self._gave_up: set[str] = set()
        self._holder = f"{socket.gethostname()}:{os.getpid()}"

    def renew(self, layouts: Iterable[Layout]) -> None:
        """Renew the lease of each job whose last renewal is `RENEW` seconds old (or that has none yet)."""
        now = time.time()
        for layout in layouts:
            if now - self._held.get(layout.job_id, (layout, 0.0))[1] >= RENEW:
                self._write(layout, now + HOLD)
                self._held[layout.job_id] = (layout, now)

    def gave_up(self, job_id: str) -> None:
        """Some calls of the job were cancelled: they will have no record, so its lease is ended, not dropped."""
        self._gave_up.add(job_id)

    def done(self, job_id: str) -> None:
        """The client stops watching a job: every call it watched has its record (unless it gave some up)."""
        if job_id not in self._gave_up:
            self._held.pop(job_id, None)

    def end(self) -> None:
        """End every lease still held: those jobs have calls unfinished and are abandoned now."""
        now = time.time()
        for layout, _ in self._held.values():
            self._write(layout, now)
        self._held.clear()

    def _write(self, layout: Layout, until: float) -> None:
        self._storage.put(layout.lease, json.dumps({"holder": self._holder, "until": until}).encode())


def expired(storage: Storage, layout: Layout, now: float | None = None) -> bool | None:
    """Whether a job's lease has run out; ``None`` when it has none (or an unreadable one)."""
    try:
        until = float(json.loads(storage.get(layout.lease))["until"])
    except (KeyNotFoundError, ValueError, TypeError, KeyError):
        return None
    return (time.time() if now is None else now) >= until
