"""The exceptions burstmap raises: each failure mode is an ordinary outcome with its own type."""

from __future__ import annotations

import pickle
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "BurstmapError",
    "CallTimeoutError",
    "ConfigError",
    "ExecutorShutdownError",
    "JobNotFoundError",
    "KeyNotFoundError",
    "PayloadRejectedError",
    "RemoteError",
    "SerializationError",
    "StorageError",
    "WorkerDiedError",
]


class BurstmapError(Exception):
    """Base class of every error burstmap raises itself."""


class ConfigError(BurstmapError, ValueError):
    """The configuration file, environment or keyword arguments are invalid."""


class StorageError(BurstmapError):
    """A store could not be reached or refused an operation."""


class JobNotFoundError(BurstmapError, LookupError):
    """No job with that id exists in the store."""


class KeyNotFoundError(StorageError, KeyError):
    """A key does not exist in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key not found"


class SerializationError(BurstmapError, pickle.PicklingError, TypeError):
    """A function, argument or result could not be pickled or unpickled.

    Also a `pickle.PicklingError`, as the standard executors raise, and a `TypeError`, as before.
    """


class PayloadRejectedError(BurstmapError):
    """A payload failed HMAC verification and was not unpickled."""


class CallTimeoutError(BurstmapError, TimeoutError):
    """A call ran past its timeout and its worker was stopped."""


class WorkerDiedError(BurstmapError, BrokenProcessPool):
    """The process running a call died (killed, out of memory) in every attempt.

    Also a `concurrent.futures.process.BrokenProcessPool`, what a process pool raises in that case.
    """


class ExecutorShutdownError(BurstmapError):
    """The executor was shut down before the call finished; its job stays in the store to be resumed."""


class RemoteError(BurstmapError):
    """A call raised an exception that could not be rebuilt on the client as its own type."""
