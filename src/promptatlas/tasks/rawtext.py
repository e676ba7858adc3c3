"""Raw text of one language, for training language sub-prompts (SPEC §4, thesis Eq. 8).

The bundled sample (``tasks/data/rawtext/{en,ko}.txt``, 1,000 news sentences each, CC BY-SA
3.0; see ``SOURCES.md``) lets language prompts train without any download. Users pass their own
plain-text files or folders (every ``*.txt`` and extension-less file inside, sorted) instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from promptatlas.tasks.errors import DataError, decode_error
from promptatlas.tasks.specs import LANGS

__all__ = ["RAWTEXT_DIR", "load_raw_text", "pack_lines"]

RAWTEXT_DIR = Path(__file__).resolve().parent / "data" / "rawtext"


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix in ("", ".txt", ".text")
            )
            if not inside:
                raise DataError(f"folder {path} holds no .txt files")
            files += inside
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"text file {path} does not exist")
    return files


def load_raw_text(
    lang: str, files: Sequence[str | Path] = (), *, limit: int | None = None
) -> list[str]:
    """Non-empty, stripped lines of ``files`` (default: the bundled sample of ``lang``)."""
    if not files:
        if lang not in LANGS:
            raise DataError(
                f"no bundled raw text for language {lang!r} (bundled: {', '.join(LANGS)}); "
                "pass text files with --text"
            )
        files = [RAWTEXT_DIR / f"{lang}.txt"]
    lines: list[str] = []
    for path in _expand(files):
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise decode_error(path, exc, "utf-8-sig") from None
        lines += [line.strip() for line in text.splitlines() if line.strip()]
        if limit is not None and len(lines) >= limit:
            return lines[:limit]
    if not lines:
        raise DataError(f"the text files {[str(f) for f in files]} contain no text")
    return lines


def pack_lines(tokenizer: Any, lines: Sequence[str], max_tokens: int) -> list[str]:
    """Join consecutive lines (newline-separated) into chunks of at most ``max_tokens`` tokens,
    so LM batches carry little padding; a single longer line becomes its own chunk (it is
    truncated when encoded)."""
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for line in lines:
        n = len(tokenizer(line + "\n", add_special_tokens=False)["input_ids"])
        if current and used + n > max_tokens:
            chunks.append("\n".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    if current:
        chunks.append("\n".join(current))
    return chunks
