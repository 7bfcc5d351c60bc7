"""Places that run calls, behind one `Backend` interface."""

from .base import Backend

__all__ = ["Backend"]
