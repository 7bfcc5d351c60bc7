"""Helpers shared by the benchmark scripts: timing and the one-line ratio report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timings(runs: int, fn: Callable[[], object]) -> list[float]:
    """The seconds each of ``runs`` runs of ``fn`` took."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of ``runs`` timed runs of ``fn``, in seconds (the least disturbed by noise)."""
    return min(timings(runs, fn))


def median_of(runs: int, fn: Callable[[], object]) -> float:
    """The median of ``runs`` timed runs of ``fn``, in seconds."""
    return statistics.median(timings(runs, fn))


def report(name: str, ours: str, peer: str, ratio: float, target: str) -> None:
    """Print one benchmark's figures and its ratio against the peer measured in the same run."""
    print(f"{name}: burstmap {ours} | peer {peer} | ratio {ratio:.2f}x (target {target})")
