"""The `burstmap worker` daemon: takes call batches from a queue and runs them on this machine.

``concurrency`` slots each hold one message at a time and drive one child process that runs the
calls through the one handler, so a call past its timeout is stopped by killing its child, and a
child that dies is replaced and its call re-run (up to the job's ``worker_retries``). A message is
acknowledged only once every call's status is written; a heartbeat thread extends the leases of
the messages being worked on. If the daemon itself is killed, its children die with it (Linux
``PR_SET_PDEATHSIG``) and its messages are delivered again once their lease runs out.

SIGTERM or SIGINT drains: no new message is taken, calls in flight finish and are acknowledged.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import click

from . import registry
from .attempts import Attempts
from .child import CallProcess
from .config import load_config
from .errors import PayloadRejectedError
from .job import Batch, Layout
from .queues import Message, Queue, QueueError, open_queue
from .storage.base import Storage

__all__ = ["Daemon", "worker"]

log = logging.getLogger("burstmap.worker")

_POLL = 1.0  # seconds a slot waits on the queue before it looks at its stop conditions again


class Daemon:
    """Runs batches from ``queue`` against ``storage`` in ``concurrency`` child processes."""

    def __init__(self, queue: Queue, storage: Storage, key: bytes, concurrency: int = 1,
                 idle_timeout: float | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.queue, self.storage, self._key = queue, storage, key
        self.concurrency, self.idle_timeout = concurrency, idle_timeout
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._held: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_work = time.monotonic()

    def run(self) -> None:
        """Work until drained by a signal or idle for ``idle_timeout`` seconds."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        slots = [_Slot(self, i) for i in range(self.concurrency)]
        threads = [threading.Thread(target=slot.loop, name=f"slot-{slot.index}") for slot in slots]
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        log.info("worker %s: %d slots on %r, store %r", self.name, self.concurrency, self.queue, self.storage)
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)
        log.info("worker %s: stopped", self.name)

    def _on_signal(self, signum: int, _: Any) -> None:
        log.info("worker %s: %s, finishing calls in flight", self.name, signal.Signals(signum).name)
        self._stop.set()

    def should_stop(self) -> bool:
        """Drained by a signal, or idle too long with nothing in flight."""
        if self._stop.is_set():
            return True
        with self._lock:
            idle = not self._held and time.monotonic() - self._last_work > (self.idle_timeout or float("inf"))
        if idle:
            log.info("worker %s: idle for %gs, exiting", self.name, self.idle_timeout)
            self._stop.set()
        return idle

    def hold(self, message: Message | None) -> None:
        """Note that a message is being worked on (or, with ``None``, that work just ended)."""
        with self._lock:
            self._last_work = time.monotonic()
            if message is not None:
                self._held[message.handle] = message

    def release(self, message: Message) -> None:
        """Acknowledge a finished message, retrying while the queue is briefly unreachable."""
        deadline = time.monotonic() + self.queue.lease
        while True:
            try:
                self.queue.ack(message)
                break
            except QueueError as e:
                if time.monotonic() > deadline:
                    log.error("worker %s: could not acknowledge a message (%s); it will run again", self.name, e)
                    break
                time.sleep(0.5)
        with self._lock:
            self._held.pop(message.handle, None)
            self._last_work = time.monotonic()

    def drop(self, message: Message) -> None:
        """Stop extending a message's lease without acknowledging it, so it is delivered again."""
        with self._lock:
            self._held.pop(message.handle, None)

    def _heartbeat(self) -> None:
        """Extend the leases of held messages; an error is logged and the next beat tries again."""
        while True:
            time.sleep(self.queue.lease / 3)
            with self._lock:
                held = list(self._held.values())
            try:
                self.queue.extend(held)
            except Exception as e:
                log.warning("worker %s: heartbeat failed: %s", self.name, e)


class _Slot:
    """One message at a time, run call by call in one child process."""

    def __init__(self, daemon: Daemon, index: int) -> None:
        self.daemon, self.index = daemon, index
        self.name = f"{daemon.name}/{index}"
        self.attempts = Attempts(daemon.storage, daemon._key, self.name)
        self._calls = CallProcess(daemon.storage, daemon._key, self.name)

    def loop(self) -> None:
        """Take and run messages until the daemon stops; a message that fails here is left to its lease."""
        try:
            while not self.daemon.should_stop():
                try:
                    messages = self.daemon.queue.get(1, _POLL)
                except QueueError as e:
                    log.warning("worker %s: %s; retrying", self.name, e)
                    time.sleep(_POLL)
                    continue
                for message in messages:
                    self.daemon.hold(message)
                    try:
                        self.handle(message)
                    except Exception:
                        log.exception("worker %s: message %s failed here; it runs again once its lease ends",
                                      self.name, message.handle)
                        self.daemon.drop(message)
                        continue
                    self.daemon.release(message)
        finally:
            self._calls.close()

    def handle(self, message: Message) -> None:
        """Verify a message and run its calls; one that is not ours runs nothing and is recorded as refused."""
        try:
            batch = Batch.decode(self.daemon._key, message.body)
        except PayloadRejectedError as e:
            self.refuse(message, e)
            return
        if not self.attempts.storage.exists(Layout(batch.prefix, batch.job_id).manifest):
            log.warning("worker %s: dropped a batch of job %s, no longer in the store", self.name, batch.job_id)
            return
        todo = self.attempts.begin(batch)
        if not todo:
            log.info("worker %s: every call of a batch of job %s already has a status (a replay or a late "
                     "re-delivery); nothing runs", self.name, batch.job_id)
        self._calls.run_batch(batch, todo, self.attempts, self.name)

    def refuse(self, message: Message, error: PayloadRejectedError) -> None:
        """Run nothing; tell the calls' owner, through ``rejected`` records signed with this worker's key."""
        claimed = Batch.peek(message.body)
        log.warning("worker %s: refused message %s: %s", self.name, message.handle, error)
        if claimed is not None:
            self.attempts.rejected(list(claimed.tasks), f"{error}; is BURSTMAP_SECRET_KEY the same as the client's?")


@click.command()
@click.option("--queue", "queue_url", required=True, help="Queue URL: redis://host:6379/0?stream=NAME or sqs://NAME.")
@click.option("--store", "store_url", required=True, help="Store URL: s3://bucket, redis://host:6379/0, file:///dir/.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(min=1), help="Calls run at once.")
@click.option("--idle-timeout", default=None, type=click.FloatRange(min=0), help="Exit after this many seconds without work.")
def worker(queue_url: str, store_url: str, concurrency: int, idle_timeout: float | None) -> None:
    """Run calls from a queue until stopped (SIGTERM drains) or idle for --idle-timeout seconds.

    The HMAC key comes from BURSTMAP_SECRET_KEY or the burstmap config, as on the client.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    try:
        config = load_config(storage=store_url)
        storage = registry.build("storage", config.storage.name, config.storage.options)
        queue = open_queue(queue_url)
        storage.check()
        queue.check()
    except Exception as e:
        raise click.ClickException(str(e)) from None
    Daemon(queue, storage, config.secret(), concurrency, idle_timeout).run()


@click.group()
def _main() -> None:
    """burstmap worker daemons (the full CLI is `burstmap`)."""


_main.add_command(worker)

if __name__ == "__main__":
    _main()
