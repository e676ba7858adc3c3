"""Exceptions raised by the task loaders.

Every :class:`DataError` message names the offending file (and line, when there is one) and
says how to fix the input, so a user can act on it without reading the loader's source.
"""

from __future__ import annotations

import codecs
from pathlib import Path


class DataError(ValueError):
    """Bad or missing input data (message names the file, the line and the fix)."""


class UnknownTaskError(DataError):
    """A task name or language that promptatlas does not know."""


def where(path: str | Path, line: int | None = None) -> str:
    """Format a location as ``file:line`` (or just ``file``) for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


REENCODE = "re-encode it as UTF-8 (e.g. iconv -f cp949 -t utf-8 IN > OUT)"


def check_encoding(encoding: str) -> str:
    """The codec to open text with: ``utf-8`` reads (and drops) a byte-order mark; an unknown
    encoding name is a :class:`DataError`."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise DataError(
            f"unknown text encoding {encoding!r}; use a Python codec name such as utf-8, "
            "cp949, euc-kr, latin-1"
        ) from None
    return "utf-8-sig" if name == "utf-8" else name


def decode_error(
    path: str | Path, exc: UnicodeDecodeError, encoding: str, fix: str = REENCODE
) -> DataError:
    """A :class:`DataError` for a file that is not valid ``encoding`` text: the file, the line
    and byte offset of the first undecodable byte, and ``fix`` (re-encode, or the encoding
    option of the reader)."""
    line: int | None = None
    detail = f"byte 0x{exc.object[exc.start]:02x}" if exc.start < len(exc.object) else "bytes"
    try:
        data = Path(path).read_bytes()
        try:
            data.decode(encoding)
        except UnicodeDecodeError as full:
            line = data.count(b"\n", 0, full.start) + 1
            column = full.start - (data.rfind(b"\n", 0, full.start) + 1) + 1
            byte = data[full.start]
            detail = f"byte 0x{byte:02x} at offset {full.start}, byte {column} of the line"
    except OSError:
        pass
    shown = "utf-8" if encoding == "utf-8-sig" else encoding
    return DataError(f"{where(path, line)}: not {shown} text ({detail}); {fix}")
