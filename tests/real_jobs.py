"""Real jobs for the CLI, stats and plot tests: a local pool of two workers over a directory store."""

from __future__ import annotations

import time
from pathlib import Path

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.job import Manifest
from burstmap.storage.local import LocalStorage

__all__ = ["FAILING", "PRINTING", "SECRET", "SLOW", "N_CALLS", "new_executor", "square", "unstarted_job", "wait_done"]

SECRET = "test-key"
N_CALLS = 10
FAILING, PRINTING, SLOW = 3, 5, 7


def square(x: int) -> int:
    """The job's function: one call fails, one prints, one is a straggler, the rest are quick."""
    if x == FAILING:
        raise ValueError("three is bad")
    if x == PRINTING:
        print(f"hello from {x}")
    time.sleep(1.0 if x == SLOW else 0.02)
    return x * x


def new_executor(store: Path) -> burstmap.Executor:
    """An executor with two local worker processes over the directory ``store``."""
    return burstmap.Executor(backend=LocalBackend(workers=2), storage=LocalStorage(store), secret_key=SECRET,
                             prefix="burstmap")


def wait_done(futures: list) -> list:
    """Wait until every call has finished; return the futures."""
    burstmap.wait(futures, timeout=60)
    assert all(f.done() for f in futures), "the job did not finish within 60 s"
    return futures


def unstarted_job(store: LocalStorage, job_id: str, submitted: float, n_calls: int = 3) -> Manifest:
    """Store the manifest of a job whose calls have not run yet: what a job looks like just after submit."""
    manifest = Manifest(job_id=job_id, prefix="burstmap", function="tests.real_jobs.square",
                        blocks=((0, 0), (n_calls, 0)), submitted=submitted, host="test")
    store.put(manifest.layout.manifest, manifest.encode(SECRET.encode()))
    return manifest
