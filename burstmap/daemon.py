"""The `burstmap worker` daemon: takes call batches from a queue and runs them on this machine.

``concurrency`` slots each hold one message at a time and drive one child process that runs the
calls through the one handler, so a call past its timeout is stopped by killing its child, and a
child that dies is replaced and its call re-run (up to the job's ``max_retries``). A message is
acknowledged only once every call's status is written; a heartbeat thread extends the leases of
the messages being worked on. If the daemon itself is killed, its children die with it (Linux
``PR_SET_PDEATHSIG``) and its messages are delivered again once their lease runs out.

SIGTERM or SIGINT drains: no new message is taken, calls in flight finish and are acknowledged.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import click

from .config import load_config
from .errors import CallTimeoutError, PayloadRejectedError, WorkerDiedError
from .job import CallState, call_name
from .queues import Message, Queue, QueueError, decode_batch, open_queue
from .storage import open_store
from .storage.base import Storage
from .worker import Handler, Task
from .backends.ledger import Ledger

__all__ = ["Daemon", "worker"]

log = logging.getLogger("burstmap.worker")

_POLL = 1.0  # seconds a slot waits on the queue before it looks at its stop conditions again
_PR_SET_PDEATHSIG = 1


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

    def _heartbeat(self) -> None:
        while True:
            time.sleep(self.queue.lease / 3)
            with self._lock:
                held = list(self._held.values())
            try:
                self.queue.extend(held)
            except QueueError as e:
                log.warning("worker %s: heartbeat failed: %s", self.name, e)


class _Slot:
    """One message at a time, run call by call in one child process."""

    def __init__(self, daemon: Daemon, index: int) -> None:
        self.daemon, self.index = daemon, index
        self.name = f"{daemon.name}/{index}"
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None

    def loop(self) -> None:
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
                    self.handle(message)
                    self.daemon.release(message)
        finally:
            self._close()

    def handle(self, message: Message) -> None:
        """Verify a message and run its calls; a message that is not ours is dropped unrun."""
        try:
            batch = decode_batch(self.daemon._key, message.body)
        except PayloadRejectedError as e:
            log.warning("worker %s: dropped message %s: %s", self.name, message.handle, e)
            return
        ledger = Ledger(self.daemon.storage, self.daemon._key, batch.tasks, batch.max_retries, self.name)
        for task in ledger.begin(message.delivery, mark=message.delivery > 1):
            self.run_call(task, batch.timeout, batch.max_retries)

    def run_call(self, task: Task, timeout: float | None, max_retries: int) -> None:
        """Run one call in the child; stop it at its timeout; re-run it if the child dies."""
        while True:
            start = time.time()
            conn, process = self._child()
            conn.send(task)
            ready = wait([conn, process.sentinel], timeout)
            if conn in ready:
                try:
                    state = conn.recv()
                    log.info("%s call %s/%s attempt %d: %s in %.3fs", self.name, task.job_id,
                             call_name(task.call_id), task.attempt, state, time.time() - start)
                    return
                except (EOFError, OSError):
                    pass
            if not ready:
                self._timeout(task, timeout or 0.0, start)
                return
            task = self._died(task, max_retries, start)
            if task is None:
                return

    def _timeout(self, task: Task, timeout: float, start: float) -> None:
        self._close()
        error = CallTimeoutError(f"call {task.job_id}/{call_name(task.call_id)} ran past its timeout of "
                                 f"{timeout:g}s and its process on {self.name} was stopped")
        Handler(self.daemon.storage, self.daemon._key, self.name).write_failure(task, CallState.TIMEOUT, error, start)
        log.info("%s call %s/%s attempt %d: timeout after %gs", self.name, task.job_id, call_name(task.call_id),
                 task.attempt, timeout)

    def _died(self, task: Task, max_retries: int, start: float) -> Task | None:
        """The child died in a call: the task to run again, or ``None`` once its retries are spent."""
        if self._process is not None:
            self._process.join(1)
        code = self._process.exitcode if self._process else None
        self._close()
        how = f"killed by {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
        log.info("%s call %s/%s attempt %d: process died (%s)", self.name, task.job_id, call_name(task.call_id),
                 task.attempt, how)
        if task.attempt <= max_retries:
            return dataclasses.replace(task, attempt=task.attempt + 1)
        error = WorkerDiedError(f"call {task.job_id}/{call_name(task.call_id)}: process on {self.name} died "
                                f"({how}) in attempt {task.attempt} of {max_retries + 1}")
        Handler(self.daemon.storage, self.daemon._key, self.name).write_failure(task, CallState.DIED, error, start)
        return None

    def _child(self) -> tuple[Connection, Any]:
        if self._process is None or not self._process.is_alive():
            self._close()
            parent, child = self._ctx.Pipe()
            self._process = self._ctx.Process(target=_child_main, name=f"burstmap-{self.name}", daemon=True,
                                              args=(child, self.daemon.storage, self.daemon._key, self.name, os.getpid()))
            self._process.start()
            child.close()
            self._conn = parent
        return self._conn, self._process

    def _close(self) -> None:
        if self._process is not None:
            self._conn.close()
            self._process.kill()
            self._process.join()
        self._process = self._conn = None


def _child_main(conn: Connection, storage: Storage, key: bytes, name: str, parent: int) -> None:
    """A child process: run tasks from the pipe one by one, answering each with its final state."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    handler = Handler(storage, key, name)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(handler.run_task(task).state.value)


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
    storage, _ = open_store(store_url)
    queue = open_queue(queue_url)
    try:
        storage.check()
        queue.check()
    except Exception as e:
        raise click.ClickException(str(e)) from None
    Daemon(queue, storage, load_config().secret(), concurrency, idle_timeout).run()


@click.group()
def _main() -> None:
    """burstmap worker daemons (the full CLI is `burstmap`)."""


_main.add_command(worker)

if __name__ == "__main__":
    _main()
