"""Opt-in retries of calls that raise: a wrapper the function travels in, so every backend honours it."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Retrying"]


class Retrying:
    """Calls ``func``, and again after an exponential backoff with jitter while it raises ``retry_on``.

    Runs inside the worker, so a retried call keeps its warm process and costs no new storage
    round trip; each retry is noted on the call's stderr, which is captured into its record.
    """

    def __init__(self, func: Callable, retries: int, retry_on: tuple[type[BaseException], ...],
                 backoff: float = 0.5) -> None:
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        if not retry_on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise ValueError(f"retry_on must be exception types, not {retry_on!r}")
        self.func = func
        self.retries = retries
        self.retry_on = tuple(retry_on)
        self.backoff = backoff

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        attempt = 0
        while True:
            try:
                return self.func(*args, **kwargs)
            except self.retry_on as e:
                if attempt == self.retries:
                    raise
                delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.5)
                attempt += 1
                print(f"burstmap: retry {attempt} of {self.retries} in {delay:.2f}s after "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
                time.sleep(delay)
