"""The versions a job's pickles depend on: recorded with every job, checked by every worker first.

A function pickled by value holds bytecode, which only the Python minor version that made it runs;
cloudpickle's format changes between its minor versions; burstmap's records and batches between
its releases. A worker on other versions than the client's could crash (a SIGSEGV) or, worse, run
something else, so it refuses the job, before unpickling anything, in one line naming both sides.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import cloudpickle

from . import __version__

__all__ = ["RUNTIME", "mismatch"]

#: This process's versions, as a job records them.
RUNTIME: dict[str, str] = {
    "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}",
    "cloudpickle": cloudpickle.__version__,
    "burstmap": __version__,
}
#: How many leading parts of each version must agree: Python and cloudpickle minor versions, burstmap's exact one.
_AGREE = {"python": 2, "cloudpickle": 2, "burstmap": 3}


def mismatch(job: Mapping[str, str] | None, here: Mapping[str, str] = RUNTIME, who: str = "this worker") -> str | None:
    """Why ``who``, with versions ``here``, cannot run a job recorded with ``job`` faithfully, or ``None``.

    A job recorded before versions were (``None``) is taken as compatible.
    """
    if not job:
        return None
    differ = [name for name, parts in _AGREE.items()
              if str(job.get(name, "")).split(".")[:parts] != here[name].split(".")[:parts]]
    if not differ:
        return None
    return (f"the job was submitted from {_shown(job, differ)} but {who} runs {_shown(here, differ)}; "
            "run it on the client's versions")


def _shown(versions: Mapping[str, str], names: list[str]) -> str:
    return ", ".join(f"{'Python' if name == 'python' else name} {versions.get(name, 'unknown')}" for name in names)
