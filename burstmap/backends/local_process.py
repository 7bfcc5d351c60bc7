"""A local worker process: a fresh interpreter that never imports the user's ``__main__``.

multiprocessing's ``spawn`` re-imports the script that started the pool in every child, so a
script without an ``if __name__ == "__main__":`` guard submits jobs from its own workers, and one
read from stdin or ``-c`` cannot be re-imported at all. Workers need nothing from ``__main__``
(functions travel by value), so this starts ``python -c`` with the client's ``sys.path`` and hands
it, over a private pipe, a setup function and its arguments. Until setup has finished the child's
stderr goes to a file, so a worker that cannot start is reported with its own last error line.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe
from typing import Any

__all__ = ["READY", "WorkerProcess"]

READY = b"ready"
_PROGRESS_SLOTS = 5
_BOOT = ("import sys; sys.path[:] = sys.argv[4:]; "
         "from burstmap.backends.local_process import _child_main; _child_main(*map(int, sys.argv[1:4]))")

Setup = Callable[..., Callable[[Connection, Any], None]]


class WorkerProcess:
    """Runs ``setup(*args)`` in a new interpreter, then the function it returns with a pipe and shared progress.

    ``conn`` is the parent's end of the pipe (the child sends `READY` once set up), ``progress`` is
    an array of five doubles both sides see, and ``sentinel`` becomes readable when the child ends;
    ``pid``, ``exitcode``, ``is_alive``, ``join`` and ``kill`` behave as on `multiprocessing.Process`.
    """

    def __init__(self, setup: Setup, args: tuple) -> None:
        self.conn, child = Pipe()
        shared = tempfile.TemporaryFile()
        shared.truncate(_PROGRESS_SLOTS * ctypes.sizeof(ctypes.c_double))
        self._memory = mmap.mmap(shared.fileno(), 0)
        self.progress = (ctypes.c_double * _PROGRESS_SLOTS).from_buffer(self._memory)
        self._startup_log = tempfile.TemporaryFile()
        stderr = os.dup(2)
        fds = (child.fileno(), shared.fileno(), stderr)
        try:
            self._popen = subprocess.Popen([sys.executable, "-c", _BOOT, *map(str, fds), *sys.path],
                                           stdin=subprocess.DEVNULL, stderr=self._startup_log, pass_fds=fds)
        finally:
            child.close()
            shared.close()
            os.close(stderr)
        self.pid = self._popen.pid
        self.sentinel = os.pidfd_open(self.pid)
        self.conn.send_bytes(pickle.dumps((setup, args)))

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        self._popen.kill()

    def startup_error(self) -> str:
        """The last line the child wrote to stderr before it was set up (its error, when it could not start)."""
        self._startup_log.seek(0)
        lines = self._startup_log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""

    def close(self) -> None:
        """Release the pipe, the sentinel and the files (after the child has ended)."""
        self.conn.close()
        self._startup_log.close()
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _child_main(conn_fd: int, shared_fd: int, stderr_fd: int) -> None:
    """The child: read the setup, run it with stderr still captured, then restore stderr and serve."""
    conn = Connection(conn_fd)
    memory = mmap.mmap(shared_fd, 0)
    os.close(shared_fd)
    progress = (ctypes.c_double * _PROGRESS_SLOTS).from_buffer(memory)
    setup, args = pickle.loads(conn.recv_bytes())
    serve = setup(*args)
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    try:
        conn.send_bytes(READY)
    except OSError:
        return
    serve(conn, progress)
