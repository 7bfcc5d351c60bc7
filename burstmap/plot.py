"""Pictures of a job: a timeline of its calls by worker, and a histogram of their durations.

Needs matplotlib (``pip install 'burstmap[plot]'``), imported only when a picture is drawn, and
always drawn with the Agg backend so no display is needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import registry
from .config import load_config
from .errors import ConfigError
from .job import CallState
from .stats import job_stats, stats
from .storage.base import Storage

__all__ = ["COLORS", "plot"]

#: The color of each outcome in both panels.
COLORS = {
    CallState.OK.value: "#2ca02c",
    CallState.ERROR.value: "#d62728",
    CallState.TIMEOUT.value: "#ff7f0e",
    CallState.DIED.value: "#9467bd",
    CallState.REJECTED.value: "#7f7f7f",
}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError("plotting needs matplotlib; install it with: pip install 'burstmap[plot]'") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _report(source: Any, storage: Storage | None, prefix: str | None, key: bytes | None) -> dict[str, Any]:
    if isinstance(source, dict):
        return source
    config = load_config()
    key = key or config.secret()
    if isinstance(source, str):
        if storage is None:
            component = config.storage
            storage = registry.load("storage", component.name)(**component.options)
        return job_stats(storage, key, prefix or config.prefix, source)
    return stats(source, key, storage)


def _timeline(ax: Any, calls: Sequence[dict[str, Any]], submitted: float) -> None:
    from matplotlib.patches import Patch
    workers = sorted({c["worker"] for c in calls})
    shortest = 0.004 * max(c["end"] - submitted for c in calls)  # so that a quick call stays visible
    for c in sorted(calls, key=lambda c: c["state"] != CallState.OK.value):  # failures drawn on top
        ax.barh(workers.index(c["worker"]), max(c["duration"], shortest), left=c["start"] - submitted,
                height=0.8, color=COLORS.get(c["state"], "black"), edgecolor="white", linewidth=0.3)
    line = ax.axvline(0, color="black", linestyle="--", linewidth=1, label="submitted")
    ax.set_yticks(range(len(workers)), [w[-24:] for w in workers], fontsize=8)
    ax.set_xlabel("seconds since the job was submitted")
    ax.set_ylabel("worker")
    patches = [Patch(color=COLORS.get(s, "black"), label=s) for s in sorted({c["state"] for c in calls})]
    ax.legend(handles=[line, *patches], loc="upper right", fontsize=8)


def _histogram(ax: Any, calls: Sequence[dict[str, Any]]) -> None:
    states = sorted({c["state"] for c in calls})
    durations = [[c["duration"] for c in calls if c["state"] == s] for s in states]
    bins = min(40, max(5, len(calls) // 3))
    ax.hist(durations, bins=bins, stacked=True, color=[COLORS.get(s, "black") for s in states], label=states)
    ax.set_xlabel("call duration (s)")
    ax.set_ylabel("calls")
    ax.legend(fontsize=8)


def plot(source: Sequence[Any] | str | dict[str, Any], path: str | os.PathLike, *,
         storage: Storage | None = None, prefix: str | None = None, key: bytes | None = None) -> Path:
    """Draw a job's timeline and duration histogram into one PNG at ``path``; return the path.

    Args:
        source: the futures of the calls, a job id (read from ``storage`` under ``prefix``, by
            default the configured ones), or a report from `burstmap.stats.job_stats`.
        key: the secret key the job was signed with (default: the configured one).
    """
    report = _report(source, storage, prefix, key)
    summary = report["summary"]
    calls = [c for c in report["calls"] if c["end"] is not None]
    figure = _figure(10, 7)
    top, bottom = figure.subplots(2, 1, height_ratios=(2, 1))
    figure.suptitle(f"{', '.join(report['job_ids'])}  {', '.join(report['functions'])}: "
                    f"{summary['done']} ok, {summary['failed']} failed, {summary['pending']} pending, "
                    f"{summary['corrupt']} corrupt", fontsize=10)
    if calls:
        _timeline(top, calls, summary["submitted"])
        _histogram(bottom, calls)
    else:
        top.text(0.5, 0.5, "no call has finished yet", ha="center", va="center", transform=top.transAxes)
    path = Path(path)
    figure.savefig(path, format="png")
    return path
