"""Writing files so that readers never see them half-written, and one JSON encoder.

Every file promptatlas writes goes through this module: a temporary file (or directory) beside
the target, then ``os.replace`` (atomic on POSIX). Temporary files and directories get the modes
a plain ``open``/``mkdir`` would have given them (the umask), so a bank shared through a group
stays readable. :func:`json_default` is the one encoder for values JSON does not know (paths,
dataclasses, enums, sets, numpy/torch values).

This module sits below every other one: it imports nothing from promptatlas.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import enum
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_directory",
    "atomic_file",
    "current_umask",
    "dumps_json",
    "follow_umask",
    "json_default",
    "write_bytes_atomic",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


# -- modes ------------------------------------------------------------------------------------


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by the
    classic set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, *, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have given it.

    ``tempfile.mkstemp``/``mkdtemp`` (and some writers, e.g. safetensors) create files 0600 and
    directories 0700 whatever the umask, so a bank shared through a group would be unreadable to
    colleagues; the atomic writers call this before renaming into place."""
    base = 0o777 if directory else 0o666
    os.chmod(path, base & ~current_umask())


# -- JSON -------------------------------------------------------------------------------------


def json_default(value: Any) -> Any:
    """The JSON form of values ``json`` does not know: paths and torch dtypes/devices as text,
    dataclasses as mappings, enums as their value, sets sorted, numpy/torch arrays and scalars as
    lists and numbers. Anything else raises ``TypeError`` (as ``json`` does)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    for method in ("tolist", "item"):  # numpy arrays/scalars, torch tensors
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    if type(value).__module__.split(".")[0] == "torch":  # torch.dtype, torch.device
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def dumps_json(data: Any) -> str:
    """``data`` as indented UTF-8 JSON text ending in a newline, through :func:`json_default`."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=json_default) + "\n"


# -- files ------------------------------------------------------------------------------------


def read_json_object(path: Path, error: type[Exception], *, where: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; text that is not JSON, or JSON that is not an object, raises
    ``error`` naming ``where`` (how the caller names the file) and ``fix`` (what to do)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{where} is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise error(f"{where} must hold a JSON object, found {type(data).__name__}; {fix}")
    return data


@contextlib.contextmanager
def atomic_file(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (matplotlib,
    safetensors); on success it replaces ``path``, on any exception it is removed. The parent
    folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        follow_umask(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory, fsync and os.replace (atomic on POSIX);
    the file gets the mode the umask gives."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """UTF-8 text written atomically (:func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV table (header + rows) written atomically; the parent folder is created."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())
    return path


def write_json_atomic(path: Path, data: Any) -> Path:
    """:func:`dumps_json` of ``data`` written atomically; the parent folder is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dumps_json(data))
    return path


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``target``; on success rename it to ``target``.

    An existing ``target`` is replaced only after the new directory is complete (callers check
    first that it is theirs to replace). On any exception the temporary directory is removed and
    ``target`` is left untouched. The directory and every file in it get the modes the umask
    gives.
    """
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
