"""burstmap: run one plain Python function over thousands of inputs in parallel, durably."""

from typing import Any

__version__ = "0.1.0"  # first: modules imported below read it

from .backends.base import Backend
from .call import CallId, current_call
from .config import Config, load_config
from .errors import (
    BurstmapError,
    CallTimeoutError,
    ConfigError,
    ExecutorShutdownError,
    JobNotFoundError,
    PayloadRejectedError,
    RemoteError,
    SerializationError,
    StorageError,
    WorkerDiedError,
)
from .executor import Executor, default_executor
from .future import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, Futures, ResponseFuture, as_completed, get_all_results, wait
from .scratch import Scratch
from .storage.base import Storage


def attach(job_id: str, resume: bool = False) -> Futures:
    """Rebuild the futures of an existing job from storage, using the configured store."""
    return default_executor().attach(job_id, resume)


def replay(job_id: str, call_id: int) -> Any:
    """Run one stored call again in this process (under a debugger if you like); nothing is written."""
    return default_executor().replay(job_id, call_id)


__all__ = [
    "ALL_COMPLETED", "ALWAYS", "ANY_COMPLETED", "Backend", "BurstmapError", "CallId", "CallTimeoutError", "Config",
    "ConfigError", "Executor", "ExecutorShutdownError", "Futures", "JobNotFoundError", "PayloadRejectedError", "RemoteError", "ResponseFuture", "Scratch", "SerializationError",
    "Storage", "StorageError", "WorkerDiedError", "as_completed", "attach", "current_call", "default_executor",
    "get_all_results", "load_config", "replay", "wait",
]
