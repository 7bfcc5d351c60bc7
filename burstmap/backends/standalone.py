"""The stand-alone backend: call batches go on a queue, `burstmap worker` daemons anywhere run them.

The client only enqueues signed messages (see `burstmap.queues`); it starts no process. Daemons on
any machines take messages, run the calls through the one handler and acknowledge each message once
its calls' statuses are written. The store must be one every daemon reaches: a local directory only
works for daemons on this machine; use s3 or redis across machines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from ..job import CHUNK, Batch, Manifest
from ..queues import Queue, open_queue
from ..storage.base import Storage
from .base import Backend, CallBoard

__all__ = ["StandaloneBackend"]

log = logging.getLogger(__name__)

_MAX_BATCH = CHUNK  # calls per message at most: one status chunk
_PER_WORKER = 8  # messages per job for each daemon seen lately: few round trips, and still some to balance
_UNSEEN = 64  # messages per job when the queue cannot tell how many daemons there are


class StandaloneBackend(Backend):
    """Puts calls on ``queue`` (a `Queue` or its URL, e.g. ``redis://host:6379/0?stream=burstmap``).

    Args:
        queue: where the daemons (``burstmap worker --queue ...``) take work from.
        batch_size: calls per message; by default a job is spread over 8 messages for each daemon seen
            lately (64 if the queue cannot tell), of up to 1,000 calls each.
    """

    name = "standalone"

    def __init__(self, queue: str | Queue, batch_size: int | None = None) -> None:
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        self.queue = open_queue(queue) if isinstance(queue, str) else queue
        self.batch_size = batch_size
        self._warned = False

    def start(self, storage: Storage, key: bytes, board: CallBoard | None = None) -> None:
        """Bind to the store and check, before anything is enqueued, that the queue answers."""
        self.queue.check()
        super().start(storage, key, board)

    def run(self, manifest: Manifest, call_ids: Sequence[int]) -> None:
        call_ids = self.board.take(manifest.job_id, call_ids)
        if not call_ids:
            return
        seen = self.queue.workers_seen()
        spread = _PER_WORKER * seen if seen else _UNSEEN
        size = self.batch_size or max(1, min(_MAX_BATCH, math.ceil(len(call_ids) / spread)))
        self.queue.put([Batch.of(manifest, call_ids[i:i + size]).encode(self._key)
                        for i in range(0, len(call_ids), size)])
        if not self._warned and seen == 0:
            self._warned = True
            log.warning("burstmap: %d calls queued on %r, 0 workers seen: start some with "
                        "`burstmap worker --queue URL --store URL`", len(call_ids), self.queue)

    def __repr__(self) -> str:
        return f"StandaloneBackend({self.queue!r})"
