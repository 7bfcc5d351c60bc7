"""A Cubed executor: ``cubed.Spec(executor=BurstmapExecutor())`` computes Cubed arrays as burstmap calls.

Each stage of a Cubed plan is one burstmap job with one call per task (per chunk), so the
stage's inputs are uploaded once. Tasks report their start and end times and peak memory to
Cubed's callbacks; Cubed's ``retries`` become burstmap's retries of a call that raised, and
Cubed's backup tasks (``use_backups``) are second calls of the same task, which burstmap's
idempotent outputs make harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from cubed.runtime.asyncio import async_map_dag
from cubed.runtime.backup import use_backups_default
from cubed.runtime.types import Callback, DagExecutor
from cubed.runtime.utils import asyncio_run, execute_with_stats
from networkx import MultiDiGraph

from .executor import Executor, default_executor

__all__ = ["BurstmapExecutor"]


class _Task:
    """One Cubed task as a call: run the stage's function on one input, with timings and peak memory."""

    def __init__(self, func: Callable, config: Any) -> None:
        self.func, self.config = func, config

    def __call__(self, item: Any) -> tuple[Any, dict]:
        return execute_with_stats(self.func, item, config=self.config)


class BurstmapExecutor(DagExecutor):
    """Cubed's `DagExecutor` on a burstmap executor.

    Args:
        executor: the burstmap `Executor` to run on; by default `burstmap.default_executor()`.
        kwargs: Cubed's executor options: ``retries`` (default 2), ``use_backups`` (default: on
            when the work directory is in cloud storage, as Cubed's own executors do),
            ``batch_size`` (tasks in flight per stage), ``compute_arrays_in_parallel``.
    """

    def __init__(self, executor: Executor | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._executor = executor

    @property
    def name(self) -> str:
        return "burstmap"

    def __getstate__(self) -> dict[str, Any]:
        """Travel without the executor: a plan's tasks carry their spec, and so this, to the workers."""
        return {**self.__dict__, "_executor": None}

    @property
    def executor(self) -> Executor:
        """The executor the tasks run on (the default one, made on first use, if none was given)."""
        if self._executor is None:
            self._executor = default_executor()
        return self._executor

    def execute_dag(self, dag: MultiDiGraph, callbacks: Sequence[Callback] | None = None, spec: Any = None,
                    compute_id: str | None = None, **kwargs: Any) -> None:
        """Run every stage of a Cubed plan, stage by stage, each task a burstmap call."""
        options = {**self.kwargs, **kwargs}
        retries = options.pop("retries", 2)
        if options.get("use_backups") is None:
            options["use_backups"] = use_backups_default(spec)
        asyncio_run(async_map_dag(self._create_futures(retries), dag=dag, callbacks=callbacks,
                                  compute_id=compute_id, **options))

    def _create_futures(self, retries: int) -> Callable[..., list[tuple[Any, asyncio.Future]]]:
        """What Cubed's scheduling loop calls to start tasks: one job for the inputs it is given."""

        def create(inputs: Any, func: Callable, config: Any = None, **_: Any) -> list[tuple[Any, asyncio.Future]]:
            inputs = list(inputs)
            futures = self.executor.map(_Task(func, config), inputs, retries=retries)
            return [(item, asyncio.wrap_future(future)) for item, future in zip(inputs, futures)]

        return create
