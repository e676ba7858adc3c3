"""Writing a directory so that readers never see it half-written."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from promptatlas.outputs import check_output_path, follow_umask

__all__ = ["atomic_directory"]


@contextlib.contextmanager
def atomic_directory(target: Path, owned_files: Iterable[str], what: str) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success rename it to ``target``.

    An existing ``target`` is replaced only after the new directory is complete, and only if it
    is empty or contains one of ``owned_files`` (so an unrelated directory is never deleted).
    On any exception the temporary directory is removed and ``target`` is left untouched.
    The directory and every file in it get the modes the umask gives.
    """
    # The same check every command runs before it starts (OutputPathError, one clear line).
    check_output_path(target, kind="directory", what=what, owned_files=frozenset(owned_files))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        yield tmp
        follow_umask(tmp, directory=True)
        for entry in tmp.iterdir():
            follow_umask(entry, directory=entry.is_dir())
        if target.exists():
            # POSIX has no portable directory swap: rename the old one aside, rename the new one
            # in, and only then delete the old one (or put it back if the second rename fails).
            old = target.parent / f".{target.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
            target.rename(old)
            try:
                tmp.rename(target)
            except BaseException:
                old.rename(target)
                old = None
                raise
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
