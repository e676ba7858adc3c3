"""Exceptions raised by the task loaders.

Every :class:`DataError` message names the offending file (and line, when there is one) and
says how to fix the input, so a user can act on it without reading the loader's source.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data (message names the file, the line and the fix)."""


class UnknownTaskError(DataError):
    """A task name or language that promptatlas does not know."""


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``file:line`` (or just ``file``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
