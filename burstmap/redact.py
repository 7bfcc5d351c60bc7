"""Hiding secrets from anything shown: option values named like a secret, and passwords inside URLs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["redact", "redact_url"]

_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "key")


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***`` so it can be shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redact(value: Any, name: str = "") -> Any:
    """A copy of ``value`` fit to show: secret-named options become ``***``, URL passwords ``***``."""
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if value not in (None, "") and any(word in name.lower() for word in _SECRET_WORDS):
        return "***"
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value
