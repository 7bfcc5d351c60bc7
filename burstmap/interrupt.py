"""Ctrl-C in a program with calls in flight: stop quietly and leave the jobs resumable.

Left alone, a Ctrl-C while waiting for results prints a traceback, then the end of the program
waits for every submitted call (as `concurrent.futures` does), and a second Ctrl-C prints more. So
the first submission from the main thread notes Ctrl-C (when SIGINT still has Python's own handler,
which it then calls as before). At exit, an interrupted program does not wait: calls no worker has
taken are cancelled, workers stop, each job's lease ends (it shows as abandoned), and one line per
job says how to resume it, in place of the ``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

__all__ = ["interrupted", "notice_ctrl_c"]

_interrupted = threading.Event()


def _never() -> bool:
    return False


_busy: Callable[[], bool] = _never  # set by notice_ctrl_c


def notice_ctrl_c(busy: Callable[[], bool]) -> None:
    """Note Ctrl-C from now on, and hide its traceback while ``busy()`` (calls are in flight)."""
    global _busy
    if threading.current_thread() is not threading.main_thread():
        return
    _busy = busy
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note)
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _quiet


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since `notice_ctrl_c`."""
    return _interrupted.is_set()


def _note(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    signal.default_int_handler(signum, frame)


def _quiet(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    if not (issubclass(kind, KeyboardInterrupt) and _busy()):
        sys.__excepthook__(kind, error, tb)
