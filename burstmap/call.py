"""What a call sees of itself, and the wrappers that shape how it is called (PyWren and Lithops habits).

`current_call()` tells a running call its job and call id. `WithEnv` sets environment variables
for the length of a call (PyWren's ``extra_env``); `Spread` passes a tuple input as positional
and a dict input as keyword arguments (Lithops' and ``starmap``'s habit).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .storage.base import Storage

__all__ = ["CallId", "call_begins", "call_ends", "current_call", "current_place", "WithEnv", "Spread"]


class CallId(NamedTuple):
    """The identity of a running call: its job and its index in the job."""

    job_id: str
    call_id: int


# The running call: (job_id, call_id, storage, key), one variable set once per call.
_running: contextvars.ContextVar[tuple[str, int, Storage, bytes] | None] = contextvars.ContextVar(
    "burstmap_call", default=None)


def current_call() -> CallId | None:
    """The job and call id of the call running in this thread, or None outside a call."""
    now = _running.get()
    return None if now is None else CallId(now[0], now[1])


def current_place() -> tuple[Storage, bytes] | None:
    """The store the running call was read from and the key it was verified with, or None outside a call.

    What travels into a call (a future, a shared array) is found and verified with these, so neither
    a store, its credentials nor the key ever travel in a call's input.
    """
    now = _running.get()
    return None if now is None else (now[2], now[3])


def call_begins(job_id: str, call_id: int, storage: Storage, key: bytes) -> contextvars.Token:
    """Mark a call as running in this thread (the worker handler does this around each call), until
    `call_ends` is given the token returned. Two functions, not a context manager: they wrap every call,
    and a million calls notice the difference."""
    return _running.set((job_id, call_id, storage, key))


def call_ends(token: contextvars.Token) -> None:
    """The call `call_begins` marked as running, with ``token``, has ended."""
    _running.reset(token)


class WithEnv:
    """Runs a function with extra environment variables set, restoring the old values afterwards."""

    def __init__(self, func: Callable, env: Mapping[str, str]) -> None:
        bad = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"extra_env must map names to strings; not so for {', '.join(map(repr, bad))}")
        self.func, self.env = func, dict(env)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return self.func(*args, **kwargs)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class Spread:
    """Calls a function with a tuple input spread as positional arguments, a dict input as keywords."""

    def __init__(self, func: Callable) -> None:
        self.func = func

    def __call__(self, item: Any, *extra: Any) -> Any:
        if isinstance(item, Mapping):
            return self.func(*extra, **item)
        if isinstance(item, (tuple, list)):
            return self.func(*item, *extra)
        return self.func(item, *extra)
