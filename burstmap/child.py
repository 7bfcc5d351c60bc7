"""A call process: runs calls one at a time in a child process, so a call can be stopped and its death seen.

The stand-alone daemon, the Dask backend and the Lambda entry point run every call this way: a call
that holds the GIL, or started processes of its own, is stopped at its deadline by killing the
child's whole process group, whatever it is doing, and a call that ends its process is known
exactly. The child dies with its parent (Linux ``PR_SET_PDEATHSIG``). Parent and child talk over
pipes of their own, never the child's stdout, which the call may write to, and the child publishes
its progress in a page both map (`_Progress`): a subprocess, ``os.pipe`` and a nameless file in
``/tmp``, nothing that needs ``/dev/shm``, which Lambda lacks.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from .attempts import OUTAGE_EXIT, Attempts, how_it_ended
from .errors import StorageError
from .job import Batch, Record, Task, call_name
from .storage.base import Storage
from .worker import Handler

__all__ = ["CallProcess", "Ended"]

log = logging.getLogger("burstmap.worker")

_PR_SET_PDEATHSIG = 1
_GROUP_WINDOW = 0.01  # a batch's quick calls' records are stored together if they finish within this many seconds


@dataclass(frozen=True)
class Ended:
    """How a call ended in its process: ``done`` (its status is written), ``timeout``, ``died``,
    ``outage`` (the store stayed unreachable past its limit: nobody's fault, the call runs again), or
    ``stopped`` (stopped for a call that had just finished: nobody's fault either)."""

    how: str
    detail: str = ""
    seconds: float = 0.0


class CallProcess:
    """A warm child process that runs the calls it is sent through the one handler."""

    def __init__(self, storage: Storage, key: bytes, worker: str) -> None:
        self._setup = (storage, key, worker)
        self._process: subprocess.Popen | None = None
        self._inbox: Connection
        self._outbox: Connection
        self._progress: _Progress

    def run(self, task: Task, timeout: float | None, annotate: Callable[[Record], None] | None = None) -> Ended:
        """Run one call; stop it (and every process it started) once it runs past ``timeout`` seconds.

        ``annotate`` (picklable: it runs in the child) adds what the caller knows to the call's
        record before it is written, as `Handler.annotate` does (Lambda's request id and billed time).
        """
        start = time.monotonic()
        try:
            inbox, process = self._child()
            start = time.monotonic()
            self._outbox.send_bytes(pickle.dumps((task, annotate)))
            if wait([inbox], timeout):
                return Ended("done", inbox.recv_bytes().decode(), time.monotonic() - start)
            if process.poll() is None:
                self.close()
                return Ended("timeout", seconds=time.monotonic() - start)
        except (EOFError, OSError):
            pass
        seconds = time.monotonic() - start
        code = self._process.wait() if self._process else None
        self.close()
        return Ended("outage" if code == OUTAGE_EXIT else "died", how_it_ended(code), seconds)

    def run_batch(self, batch: Batch, tasks: list[Task], attempts: Attempts, where: str) -> None:
        """Run calls of ``batch`` in the child one after the other, quick ones' records written together,
        until each has a final outcome: a re-run after a death within its budget (as `Attempts`
        decides), a ``timeout`` record past its deadline, again after a store outage.

        The child reports each call's start and how many records are durable, so the call running
        when the child dies or overruns is the one blamed; calls that finished but were not yet
        written run again, unblamed.
        """
        while tasks:
            ended, index, durable, began = self._run_some(tasks, batch.timeout)
            log.info("%s calls %s/%s-%s: %s %s after %d of %d", where, batch.job_id, call_name(tasks[0].call_id),
                     call_name(tasks[-1].call_id), ended.how, ended.detail, index, len(tasks))
            if ended.how == "done":
                return
            task, unwritten = tasks[index], tasks[durable:index]
            if ended.how == "timeout":
                attempts.timed_out(task, batch.timeout or 0.0, f"its process on {where}", began)
                tasks = unwritten + tasks[index + 1:]
            elif ended.how == "died" and index >= durable:
                retry = attempts.died(task, batch.worker_retries, f"its process on {where}", ended.detail, began)
                tasks = unwritten + ([retry] if retry else []) + tasks[index + 1:]
            else:  # an outage, a death between calls, a stop as a call ended: nobody is blamed, the unwritten run again
                tasks = tasks[durable:]

    def _run_some(self, tasks: list[Task], timeout: float | None) -> tuple[Ended, int, int, float]:
        """Send calls to the child; return how it ended, the index of the call running then and when it
        started, and how many calls' records were durable.

        The child reports its progress in shared memory, not in messages, so this thread wakes only
        when the child ends or the running call may have passed its deadline, never once per call.
        """
        try:
            inbox, process = self._child()
            self._progress.reset()
            self._outbox.send_bytes(pickle.dumps((tasks, None)))
            while True:
                started = self._progress.read()[0]
                left = None if timeout is None else max(0.0, started + timeout - time.monotonic())
                if wait([inbox], left):
                    inbox.recv_bytes()
                    return Ended("done"), len(tasks), len(tasks), time.time()
                if process.poll() is not None:
                    break
                if self._progress.read()[0] == started:
                    return self._ended("timeout", "", started)
        except (EOFError, OSError):
            pass
        if self._process is None:
            return Ended("died", how_it_ended(None)), 0, 0, time.time()
        code = self._process.wait()
        return self._ended("outage" if code == OUTAGE_EXIT else "died", how_it_ended(code))

    def _ended(self, how: str, detail: str, overdue: float | None = None) -> tuple[Ended, int, int, float]:
        """Stop the child and return how it ended with its last progress.

        A call that finished just as the child was stopped for being overdue (the call that started at
        ``overdue``) leaves nobody to blame: the child ended ``stopped``.
        """
        self._kill()
        started, index, durable = self._progress.read()
        self.close()
        if overdue is not None and started != overdue:
            how = "stopped"
        return Ended(how, detail), index, durable, time.time() - (time.monotonic() - started)

    def start(self) -> None:
        """Start the child unless it runs, and wait until it is ready: a call's time never counts its start.

        `run` starts it too; a caller that bounds a call by a deadline starts it first. A child that
        dies while starting is reported by the next `run`.
        """
        try:
            self._child()
        except (EOFError, OSError):
            pass

    def _child(self) -> tuple[Connection, subprocess.Popen]:
        if self._process is None or self._process.poll() is not None:
            self.close()
            to_parent_r, to_parent_w = os.pipe()
            to_child_r, to_child_w = os.pipe()
            self._progress = _Progress.create()
            theirs = (to_child_r, to_parent_w, self._progress.fd)
            self._process = subprocess.Popen(
                [sys.executable, *_NO_SITE, "-c", "from burstmap.child import main; main()", *map(str, theirs),
                 str(os.getpid())],
                pass_fds=theirs, start_new_session=True, env=_env(),
            )
            for fd in theirs[:2]:
                os.close(fd)
            self._inbox = Connection(to_parent_r, writable=False)
            self._outbox = Connection(to_child_w, readable=False)
            self._outbox.send_bytes(pickle.dumps(self._setup))
            self._inbox.recv_bytes()  # the child is ready
        return self._inbox, self._process

    def close(self) -> None:
        """Kill the child and every process in its group."""
        if self._process is not None:
            self._kill()
            self._inbox.close()
            self._outbox.close()
            self._progress.close()
        self._process = None

    def _kill(self) -> None:
        """Kill the child and every process in its group, and reap it; its pipes and progress stay open."""
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._process.wait()


class _Progress:
    """What the child is doing, in a page both processes map: when the running call started
    (``time.monotonic``), its index in the batch, and how many records are durable.

    The child writes it without a system call as each call starts; the parent reads it only when the
    child has ended or a call may be overdue. A file with no name (``/tmp``), not ``/dev/shm``, which
    Lambda lacks.
    """

    _START = struct.Struct("dq")
    _DURABLE = struct.Struct("q")
    _ALL = struct.Struct("dqq")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._memory = mmap.mmap(fd, self._ALL.size)

    @classmethod
    def create(cls) -> _Progress:
        """A new, zeroed page, its file descriptor ready to pass to the child."""
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
        os.ftruncate(fd, cls._ALL.size)
        progress = cls(fd)
        progress.reset()
        return progress

    def reset(self) -> None:
        """A batch is about to be sent: its first call counts as started now, nothing is durable yet."""
        self._ALL.pack_into(self._memory, 0, time.monotonic(), 0, 0)

    def start(self, index: int) -> None:
        """The call at ``index`` of the batch starts now."""
        self._START.pack_into(self._memory, 0, time.monotonic(), index)

    def durable(self, count: int) -> None:
        """The records of the first ``count`` calls of the batch are stored."""
        self._DURABLE.pack_into(self._memory, self._START.size, count)

    def read(self) -> tuple[float, int, int]:
        """When the running call started, its index, and how many records are durable."""
        return self._ALL.unpack_from(self._memory, 0)

    def close(self) -> None:
        """Unmap the page and close its file (the other process keeps its own)."""
        self._memory.close()
        os.close(self.fd)


#: A process started without site-packages (``python -S``, as bare as Lambda's) starts its children so too.
_NO_SITE = ("-S",) if sys.flags.no_site else ()


def _env() -> dict[str, str]:
    """The child imports burstmap and the user's modules from where this process does."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class _ChildHandler(Handler):
    """The child's handler: the ``annotate`` its parent sent with the call adds to the call's record."""

    note: Callable[[Record], None] | None = None

    def annotate(self, task: Task, record: Record) -> None:
        """Let the parent's ``annotate`` add to the record, if it sent one."""
        if self.note is not None:
            self.note(record)

    @property
    def annotates(self) -> bool:
        return self.note is not None


def main() -> None:
    """The child: set up a handler from the first message, then answer each task with its final state."""
    reads, writes, progress, parent = (int(arg) for arg in sys.argv[1:5])
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        return
    inbox, outbox = Connection(reads, writable=False), Connection(writes, readable=False)
    report = _Progress(progress)
    storage, key, worker = pickle.loads(inbox.recv_bytes())
    handler = _ChildHandler(storage, key, worker, group_window=_GROUP_WINDOW)
    outbox.send_bytes(b"ready")
    while True:
        try:
            work, handler.note = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            if isinstance(work, Task):
                outbox.send_bytes(handler.run_task(work).state.value.encode())
                continue
            handler.run(work, report.start, report.durable)
        except StorageError:
            os._exit(OUTAGE_EXIT)
        outbox.send_bytes(b"end")
