"""Futures that travel: a pickled `ResponseFuture` is rebuilt in another process and watched there.

A future pickles as its job's prefix, job id and call id only, never a store or a key. Where it is
unpickled, it is attached to its job (as `Executor.attach` does): inside a call on that call's store,
verified with the key the call was verified with; elsewhere on the configured store and key.
One executor per store and prefix, and one attach per job, serve every future unpickled here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .call import current_place
from .executor import Executor
from .future import ResponseFuture

__all__ = ["attached"]

_JOBS_KEPT = 64
_lock = threading.Lock()
_executors: dict[tuple[int, str], Executor] = {}
_jobs: OrderedDict[tuple[int, str, str], list[ResponseFuture]] = OrderedDict()


def attached(prefix: str, job_id: str, call_id: int) -> ResponseFuture:
    """The future of one call of a stored job, watched from this process."""
    storage, key = current_place() or (None, None)
    place = (id(storage), prefix)
    with _lock:
        futures = _jobs.get((*place, job_id))
        if futures is None:
            executor = _executors.get(place)
            if executor is None:
                secret = key.decode() if key is not None else None
                executor = _executors[place] = Executor(storage=storage, prefix=prefix, secret_key=secret, progress=False)
            futures = _jobs[(*place, job_id)] = executor.attach(job_id)
            if len(_jobs) > _JOBS_KEPT:
                _jobs.popitem(last=False)
        return futures[call_id]
