"""Open a store from a URL: ``file:///dir/key``, ``s3://bucket/key``, ``redis://host:port/db/key``."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigError
from ..registry import load
from .base import Storage

__all__ = ["SCHEMES", "open_store"]

#: URL scheme -> registered storage name
SCHEMES: dict[str, str] = {"file": "local", "s3": "s3", "redis": "redis", "rediss": "redis"}


def open_store(url: str, **kwargs: Any) -> tuple[Storage, str]:
    """Return the store a URL names and the key (or prefix) inside it.

    ``file:///a/b/key`` is the directory ``/a/b`` and key ``key`` (a trailing ``/`` names the
    directory itself); ``s3://bucket/key`` is the bucket, with endpoint and credentials from
    ``kwargs`` or boto3's environment; ``redis://[:password@]host:port/db/key`` is database ``db``.

    Raises:
        ConfigError: the scheme is unknown or the URL lacks a bucket or directory.
    """
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise ConfigError(f"unknown storage URL scheme {parts.scheme!r}; known: {known}")
    cls = load("storage", SCHEMES[parts.scheme])
    path = unquote(parts.path)
    if parts.scheme == "file":
        folder, _, key = path.rpartition("/")
        if parts.netloc not in ("", "localhost") or not folder:
            raise ConfigError(f"file URL {url!r} must be file:///absolute/dir/key")
        return cls(folder, **kwargs), key
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"S3 URL {url!r} must name a bucket: s3://bucket/key")
        return cls(parts.netloc, **kwargs), path.lstrip("/")
    db, _, key = path.lstrip("/").partition("/")
    server = urlunsplit((parts.scheme, parts.netloc, f"/{db or 0}", parts.query, ""))
    return cls(server, **kwargs), key
