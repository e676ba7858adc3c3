"""Writing outputs: files and directories that follow the umask, and output paths checked before
any work is done.

Every command that writes checks its output path with :func:`check_output_path` before it loads a
model, so a path that cannot be written (under ``/proc``, under a file, a read-only place, a
non-empty directory that is not ours) fails at once with one line naming the path and why,
instead of after the training it would have stored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from promptatlas.io import current_umask, follow_umask, write_bytes_atomic

__all__ = [
    "OutputPathError",
    "check_output_path",
    "current_umask",
    "follow_umask",
    "write_bytes_atomic",
]

OutputKind = Literal["directory", "folder", "file"]


class OutputPathError(ValueError):
    """An output path that cannot be written; the message names the path, why and the fix."""


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(
    path: str | Path,
    *,
    kind: OutputKind = "directory",
    what: str = "output directory",
    owned_files: frozenset[str] | set[str] | tuple[str, ...] = (),
    option: str = "--out",
) -> Path:
    """Check that ``path`` can be written, before any work; return it absolute. Creates nothing.

    kind "directory": replaced as a whole (a prompt directory, a PEFT adapter), so an existing
    one must be empty or hold one of ``owned_files``. "folder": results are written into it (an
    experiment or analysis folder), so any existing directory will do. "file": one file.
    In every case no existing ancestor may be a file, and the place where the output will be
    created must accept new entries (tried by creating and removing an empty directory, which
    also catches read-only file systems, /proc and permissions a root check would miss).
    Raises :class:`OutputPathError`.
    """
    target = Path(path).expanduser().absolute()

    def fail(why: str) -> OutputPathError:
        return OutputPathError(f"cannot write {option} {target}: {why}")

    if target.exists() or target.is_symlink():
        if kind == "file":
            if target.is_dir():
                raise fail("it is a directory; give a file path")
        elif not target.is_dir():
            raise fail(f"it is an existing file, not a {what}; choose another path")
        elif kind == "directory":
            entries = {entry.name for entry in target.iterdir()}
            if entries and not entries & set(owned_files):
                raise fail(
                    f"it is a non-empty directory that is not a {what} (it holds none of "
                    f"{', '.join(sorted(owned_files))}); choose a new or empty directory"
                )
    # Where the first new entry will be created: inside an existing folder, else beside the
    # target (directories and files are written beside it and renamed into place).
    place = target if kind == "folder" and target.is_dir() else target.parent
    anchor = _nearest_existing(place)
    if not anchor.is_dir():
        raise fail(f"{anchor} is a file, so nothing can be created under it; choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=".promptatlas-check-", dir=anchor)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, FileNotFoundError):
            reason = "it does not accept new files (a virtual file system?)"
        raise fail(
            f"cannot create anything in {anchor}: {reason}; choose a writable folder"
        ) from None
    os.rmdir(probe)
    return target
