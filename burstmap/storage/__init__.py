"""Object stores behind one `Storage` interface."""

from .base import Storage

__all__ = ["Storage"]
