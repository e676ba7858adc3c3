"""The results database: one SQLite file recording every training and evaluation run.

Location: ``$PROMPTATLAS_DB`` if set, else ``./.promptatlas/results.sqlite`` relative to the
current directory (see :func:`default_db_path`). The database runs in WAL mode so that several
processes (e.g. grid workers) can record results while another reads them.

Each row keeps the run's metrics and configuration as JSON text, plus the main ``score`` as a
REAL column for sorting: the ``score`` argument of :meth:`ResultsDB.record` if given, else
``metrics["score"]``, else the first of :data:`SCORE_KEYS` present in ``metrics``.

``key`` is an optional caller-defined cell key for resumable grids: :meth:`ResultsDB.has` says
whether a run with that key finished (status "done"). Keys are not unique in the table, so a
failed attempt and its successful retry are both kept; :meth:`ResultsDB.find` lists newest first.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from promptatlas.io import json_default

__all__ = [
    "DEFAULT_COLUMNS",
    "SCHEMA_VERSION",
    "SCORE_KEYS",
    "ResultsDB",
    "ResultsDBError",
    "RunRecord",
    "default_db_path",
    "format_runs_table",
]

SCHEMA_VERSION = 1
# Main metrics of the tasks (binary_f1: STS, macro_f1: NLI/TC, accuracy: SA, f1/exact_match: QA,
# then generation metrics), in the order tried when record() is not told the score.
SCORE_KEYS: tuple[str, ...] = (
    "binary_f1",
    "macro_f1",
    "accuracy",
    "f1",
    "exact_match",
    "bleu",
    "rougeL",
    "rouge_l",
    "chrf",
)
FILTERS: tuple[str, ...] = (
    "kind",
    "model",
    "task",
    "lang",
    "method",
    "split",
    "key",
    "prompt_dir",
    "seed",
    "status",
)
DEFAULT_COLUMNS: tuple[str, ...] = (
    "id",
    "created",
    "kind",
    "model",
    "task",
    "lang",
    "method",
    "split",
    "seed",
    "score",
    "status",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT,
    lang TEXT,
    method TEXT,
    split TEXT,
    score REAL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    prompt_dir TEXT,
    seed INTEGER,
    versions TEXT NOT NULL,
    status TEXT NOT NULL,
    key TEXT
);
CREATE INDEX IF NOT EXISTS runs_cell ON runs (model, task, lang, method);
CREATE INDEX IF NOT EXISTS runs_key ON runs (key);
"""


class ResultsDBError(ValueError):
    """The results database cannot be opened, read or written; the message names the file,
    the problem and how to choose another (``--db`` or ``$PROMPTATLAS_DB``)."""


_CHOOSE = "choose another with --db or $PROMPTATLAS_DB"


def _problem(path: Path, exc: BaseException) -> str:
    """One line on what went wrong with the database file ``path`` and how to fix it."""
    text = str(exc)
    low = text.lower()
    if "not a database" in low or "malformed" in low:
        return (
            f"results database {path} is not a SQLite database or is damaged ({text}); move it "
            f"aside (a new one is created) or {_CHOOSE}"
        )
    if "readonly" in low or "read-only" in low or isinstance(exc, PermissionError):
        return (
            f"results database {path} cannot be written ({text}): the file or its folder is "
            f"read-only; make it writable or {_CHOOSE}"
        )
    if "unable to open" in low:
        return (
            f"results database {path} cannot be opened ({text}): its folder does not accept "
            f"files there; {_CHOOSE}"
        )
    if "locked" in low or "busy" in low:
        return (
            f"results database {path} stayed locked by another process ({text}); wait for it "
            f"to finish or {_CHOOSE}"
        )
    return f"results database {path}: {text}; {_CHOOSE}"


def default_db_path() -> Path:
    """``$PROMPTATLAS_DB`` if set, else ``./.promptatlas/results.sqlite``."""
    env = os.environ.get("PROMPTATLAS_DB")
    if env:
        return Path(env).expanduser()
    return Path.cwd() / ".promptatlas" / "results.sqlite"


@dataclass(frozen=True)
class RunRecord:
    id: int
    created: str
    kind: str
    model: str
    task: str | None
    lang: str | None
    method: str | None
    split: str | None
    score: float | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    prompt_dir: str | None
    seed: int | None
    status: str
    key: str | None
    versions: dict[str, str] = field(default_factory=dict)


def _absolute(path: str | Path) -> str:
    """Paths are stored absolute (``..`` folded, symlinks kept), so records stay usable from
    any working directory."""
    return os.path.abspath(os.path.expanduser(str(path)))


def _name(value: Any) -> Any:
    """Task and language names are stored and matched in lower case (``SA`` = ``sa``)."""
    return value.strip().lower() if isinstance(value, str) else value


def _main_score(metrics: Mapping[str, Any], score: float | None) -> float | None:
    if score is not None:
        return float(score)
    for name in ("score", *SCORE_KEYS):
        value = metrics.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


class ResultsDB:
    """A results database file; use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path | None = None, *, readonly: bool = False) -> None:
        """Open (and create, unless ``readonly``) the database file; problems with it (a
        directory, a corrupt or foreign file, a read-only place) raise :class:`ResultsDBError`.
        """
        self.path = (Path(path).expanduser() if path is not None else default_db_path()).absolute()
        self.readonly = readonly
        if self.path.is_dir():
            raise ResultsDBError(
                f"results database {self.path} is a directory; give a file, e.g. --db "
                f"{self.path / 'results.sqlite'}"
            )
        if readonly and not self.path.is_file():
            raise ResultsDBError(f"results database {self.path} does not exist; {_CHOOSE}")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise ResultsDBError(_problem(self.path, exc)) from None
        try:
            version = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0]
        except sqlite3.Error as exc:
            self._conn.close()
            raise ResultsDBError(_problem(self.path, exc)) from None
        if version is not None and version > SCHEMA_VERSION:
            self._conn.close()
            raise ResultsDBError(
                f"results database {self.path} has schema version {version}; this promptatlas "
                f"knows up to {SCHEMA_VERSION}. Upgrade promptatlas or use another database "
                "($PROMPTATLAS_DB)."
            )

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            # A read-only file (or folder) can still be listed: read-only mode, and immutable
            # mode when not even the WAL index beside it can be opened.
            try:
                conn = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30.0)
                conn.execute("SELECT COUNT(*) FROM runs").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise sqlite3.DatabaseError("not a promptatlas results database") from None
                conn = sqlite3.connect(f"{self.path.as_uri()}?immutable=1", uri=True)
                conn.execute("SELECT COUNT(*) FROM runs").fetchone()
            conn.row_factory = sqlite3.Row
            return conn
        # timeout: wait for another writer's lock instead of failing at once (grid workers).
        conn = sqlite3.connect(str(self.path), timeout=30.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                conn.executescript(_SCHEMA)
                row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
                if row[0] is None:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            # Can runs be recorded? A read-only file or folder fails here, before any work,
            # not after a training run (the probe row is rolled back).
            conn.execute("SAVEPOINT probe")
            try:
                conn.execute("INSERT INTO schema_version VALUES (-1)")
            finally:
                conn.execute("ROLLBACK TO probe")
                conn.execute("RELEASE probe")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """sqlite3 errors (a full disk, a file made read-only, a lock held too long) as one
        :class:`ResultsDBError` naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise ResultsDBError(_problem(self.path, exc)) from exc

    # -- writing --------------------------------------------------------------------------
    def record(
        self,
        *,
        kind: str,
        model: str,
        task: str | None,
        lang: str | None,
        method: str | None,
        split: str | None,
        metrics: Mapping[str, Any],
        config: Mapping[str, Any],
        prompt_dir: str | Path | None = None,
        seed: int | None = None,
        versions: Mapping[str, str] | None = None,
        status: str = "done",
        key: str | None = None,
        score: float | None = None,
    ) -> int:
        """Add one run; returns its id. ``score`` overrides the score taken from ``metrics``."""
        if versions is None:
            from promptatlas.bank.store import versions as current_versions

            versions = current_versions()
        main = _main_score(metrics, score)
        if main is not None and math.isnan(main):
            main = None  # NaN sorts unpredictably in SQLite; store it as missing
        row = (
            datetime.now(UTC).isoformat(timespec="milliseconds"),
            kind,
            model,
            _name(task),
            _name(lang),
            method,
            split,
            main,
            json.dumps(dict(metrics), default=json_default),
            json.dumps(dict(config), default=json_default),
            _absolute(prompt_dir) if prompt_dir is not None else None,
            seed,
            json.dumps(dict(versions)),
            status,
            key,
        )
        with self._errors(), self._conn:
            cursor = self._conn.execute(
                "INSERT INTO runs (created, kind, model, task, lang, method, split, score, "
                "metrics, config, prompt_dir, seed, versions, status, key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        run_id = cursor.lastrowid
        assert run_id is not None
        return run_id

    # -- reading --------------------------------------------------------------------------
    def find(self, *, limit: int | None = None, **filters: Any) -> list[RunRecord]:
        """Runs matching all filters, newest first.

        Filters: kind, model, task, lang, method, split, key, prompt_dir, seed, status. A value
        of None means "any" (convenient for optional CLI options); a list/tuple/set means "one
        of these".
        """
        unknown = set(filters) - set(FILTERS)
        if unknown:
            raise TypeError(f"unknown filter(s) {sorted(unknown)}; valid: {', '.join(FILTERS)}")
        clauses: list[str] = []
        params: list[Any] = []
        for name, value in filters.items():
            if value is None:
                continue
            if name == "prompt_dir":
                value = (
                    [_absolute(v) for v in value]
                    if isinstance(value, list | tuple | set | frozenset)
                    else _absolute(value)
                )
            elif name in ("task", "lang"):
                value = (
                    [_name(v) for v in value]
                    if isinstance(value, list | tuple | set | frozenset)
                    else _name(value)
                )
            if isinstance(value, list | tuple | set | frozenset):
                values = [str(v) if isinstance(v, Path) else v for v in value]
                if not values:
                    return []
                clauses.append(f"{name} IN ({', '.join('?' * len(values))})")
                params.extend(values)
            else:
                clauses.append(f"{name} = ?")
                params.append(str(value) if isinstance(value, Path) else value)
        sql = "SELECT * FROM runs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._errors():
            return [_to_record(row) for row in self._conn.execute(sql, params)]

    def has(self, key: str, *, status: str = "done") -> bool:
        """Whether a run with this cell key and status (default "done") was recorded."""
        with self._errors():
            row = self._conn.execute(
                "SELECT 1 FROM runs WHERE key = ? AND status = ? LIMIT 1", (key, status)
            ).fetchone()
        return row is not None

    def merge(self, other: str | Path) -> int:
        """Copy into this database the runs of database file ``other`` that it does not hold
        yet (same creation time, kind, key and prompt directory); returns how many were added.
        This is how grid shards run on different machines are combined."""
        path = Path(other).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"results database {path} does not exist")
        if path.resolve() == self.path.resolve():
            raise ValueError(f"cannot merge {path} into itself")
        try:
            source = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise ResultsDBError(_problem(path, exc)) from None
        try:
            rows = source.execute(
                "SELECT created, kind, model, task, lang, method, split, score, metrics, "
                "config, prompt_dir, seed, versions, status, key FROM runs ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a promptatlas results database ({exc})") from None
        finally:
            source.close()
        with self._errors():
            seen = {
                tuple(r)
                for r in self._conn.execute("SELECT created, kind, key, prompt_dir FROM runs")
            }
        new = [r for r in rows if (r[0], r[1], r[14], r[10]) not in seen]
        with self._errors(), self._conn:
            self._conn.executemany(
                "INSERT INTO runs (created, kind, model, task, lang, method, split, score, "
                "metrics, config, prompt_dir, seed, versions, status, key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new,
            )
        return len(new)

    def __len__(self) -> int:
        with self._errors():
            return int(self._conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _to_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        created=row["created"],
        kind=row["kind"],
        model=row["model"],
        task=row["task"],
        lang=row["lang"],
        method=row["method"],
        split=row["split"],
        score=row["score"],
        metrics=json.loads(row["metrics"]),
        config=json.loads(row["config"]),
        prompt_dir=row["prompt_dir"],
        seed=row["seed"],
        status=row["status"],
        key=row["key"],
        versions=json.loads(row["versions"]),
    )


def _cell(record: RunRecord, column: str) -> str:
    """A column value as text; "metrics.x" / "config.x.y" reach into the JSON fields."""
    head, _, rest = column.partition(".")
    value: Any = getattr(record, head, None)
    for part in rest.split(".") if rest else ():
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    if head == "created" and isinstance(value, str):
        return value[:19].replace("T", " ")  # seconds are enough in a table
    return str(value)


def format_runs_table(records: Iterable[RunRecord], columns: Sequence[str] | None = None) -> str:
    """An aligned plain-text table; columns are RunRecord fields or "metrics.<name>" paths.

    Numeric columns are right-aligned; missing values show as "-"."""
    cols = list(columns or DEFAULT_COLUMNS)
    rows = [[_cell(r, c) for c in cols] for r in records]
    if not rows:
        return "(no runs)"
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    numeric = [all(_is_number(row[i]) or row[i] == "-" for row in rows) for i in range(len(cols))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if num else cell.ljust(w)
            for cell, w, num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(cols), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
