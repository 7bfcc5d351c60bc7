"""Helpers for the benchmarks of the paper's workloads: the examples, a warm local executor, job pictures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

import burstmap
from burstmap.backends.local import LocalBackend
from burstmap.plot import plot
from burstmap.storage.base import Storage
from burstmap.storage.local import LocalStorage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))


@contextmanager
def local_executor(workers: int, storage: Storage | None = None) -> Iterator[burstmap.Executor]:
    """A warm executor of ``workers`` local worker processes over ``storage`` (a fresh local store by default)."""
    with TemporaryDirectory(prefix="burstmap-bench-") as folder, burstmap.Executor(
            backend=LocalBackend(workers=workers), storage=storage or LocalStorage(folder), progress=False) as ex:
        burstmap.get_all_results(ex.map(abs, range(2 * workers)))
        yield ex


def plot_jobs(ex: burstmap.Executor, path: str | None, functions: set[str]) -> None:
    """Draw into ``path`` (if given) one timeline of the latest job of ``ex`` running each of ``functions``."""
    if not path:
        return
    jobs = [ex.manifest(key.rsplit("/", 1)[1].removesuffix(".json"))
            for key in ex.storage.list(f"{ex.config.prefix}/manifests/")]
    latest = {m.function.rsplit(".", 1)[-1]: m for m in sorted(jobs, key=lambda m: m.submitted)}
    futures = [f for name in functions for f in ex.attach(latest[name].job_id)]
    burstmap.wait(futures)
    print(f"wrote {plot(futures, path)}")
