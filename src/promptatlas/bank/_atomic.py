"""Writing a prompt directory so that readers never see it half-written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from promptatlas import io
from promptatlas.outputs import check_output_path

__all__ = ["atomic_directory"]


@contextlib.contextmanager
def atomic_directory(target: Path, owned_files: Iterable[str], what: str) -> Iterator[Path]:
    """:func:`promptatlas.io.atomic_directory` after the output check every command runs: an
    existing ``target`` is replaced only if it is empty or contains one of ``owned_files`` (so
    an unrelated directory is never deleted)."""
    # The same check every command runs before it starts (OutputPathError, one clear line).
    check_output_path(target, kind="directory", what=what, owned_files=frozenset(owned_files))
    with io.atomic_directory(target) as tmp:
        yield tmp
