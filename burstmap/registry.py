"""Find a store or backend class by name: lazy imports, an install hint, and an entry-point group."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

__all__ = ["STORAGES", "BACKENDS", "QUEUES", "accepts", "build", "check", "load"]

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


def _parameters(cls: type) -> Mapping[str, inspect.Parameter] | None:
    """The keyword arguments a class takes; ``None`` when it takes any (``**kwargs``)."""
    params = inspect.signature(cls).parameters
    return None if any(p.kind is p.VAR_KEYWORD for p in params.values()) else params


def accepts(kind: str, name: str, option: str) -> bool:
    """Whether the class registered as ``name`` takes ``option`` (true when it cannot be loaded: it is not ours to judge)."""
    try:
        params = _parameters(load(kind, name))
    except ConfigError:
        return True
    return params is None or option in params


def check(kind: str, name: str, options: Mapping[str, Any]) -> type:
    """The class registered as ``name``, once ``options`` are known to fit it: none unknown, none missing.

    Raises:
        ConfigError: naming the unknown or missing option, and where to set it.
    """
    cls = load(kind, name)
    params = _parameters(cls)
    if params is None:
        return cls
    unknown = set(options) - set(params)
    if unknown:
        raise ConfigError(f"{kind} {name!r} has no option(s) {', '.join(sorted(unknown))}; "
                          f"it takes: {', '.join(params) or 'none'}")
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind in named and n not in options]
    if missing:
        raise ConfigError(f"{kind} {name!r} needs option {missing[0]!r}: `{kind}: {{name: {name}, {missing[0]}: ...}}` "
                          f"in the config, BURSTMAP_{kind.upper()}_{missing[0].upper()}, or {kind}={{'name': {name!r}, "
                          f"{missing[0]!r}: ...}}")
    return cls


def build(kind: str, name: str, options: Mapping[str, Any]) -> Any:
    """An instance of the class registered as ``name``, built from ``options``; bad values become a `ConfigError`."""
    cls = check(kind, name, options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{kind} {name!r}: {e}") from None
