"""Find a store or backend class by name: lazy imports, an install hint, and an entry-point group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .errors import ConfigError

__all__ = ["STORAGES", "BACKENDS", "QUEUES", "load"]

#: name -> (dotted path, extra that installs what it needs)
STORAGES: dict[str, tuple[str, str | None]] = {
    "local": ("burstmap.storage.local:LocalStorage", None),
    "s3": ("burstmap.storage.s3:S3Storage", "s3"),
    "redis": ("burstmap.storage.redis:RedisStorage", "redis"),
}

BACKENDS: dict[str, tuple[str, str | None]] = {
    "local": ("burstmap.backends.local:LocalBackend", None),
    "lambda": ("burstmap.backends.aws_lambda:LambdaBackend", "aws"),
    "dask": ("burstmap.backends.dask:DaskBackend", "dask"),
    "standalone": ("burstmap.backends.standalone:StandaloneBackend", None),
}

#: URL scheme -> queue class, for the stand-alone backend and `burstmap worker`.
QUEUES: dict[str, tuple[str, str | None]] = {
    "redis": ("burstmap.queues.redis:RedisQueue", "redis"),
    "rediss": ("burstmap.queues.redis:RedisQueue", "redis"),
    "sqs": ("burstmap.queues.sqs:SQSQueue", "s3"),
}

_GROUPS = {"storage": (STORAGES, "burstmap.storages"), "backend": (BACKENDS, "burstmap.backends"),
           "queue": (QUEUES, "burstmap.queues")}


def load(kind: str, name: str) -> type:
    """Import and return the class registered as ``name`` for ``kind`` ('storage', 'backend' or 'queue')."""
    table, group = _GROUPS[kind]
    if name not in table:
        for ep in entry_points(group=group):
            if ep.name == name:
                return ep.load()
        known = ", ".join(sorted(table))
        raise ConfigError(f"unknown {kind} {name!r}; known: {known}")
    path, extra = table[name]
    module, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        hint = f"; install it with: pip install 'burstmap[{extra}]'" if extra else ""
        raise ConfigError(f"{kind} {name!r} needs {e.name}, which is not installed{hint}") from None
