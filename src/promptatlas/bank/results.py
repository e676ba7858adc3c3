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

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from promptatlas.bank.store import _json_default

__all__ = [
    "DEFAULT_COLUMNS",
    "SCHEMA_VERSION",
    "SCORE_KEYS",
    "ResultsDB",
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

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # timeout: wait for another writer's lock instead of failing at once (grid workers).
        self._conn = sqlite3.connect(str(self.path), timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            version = row[0]
            if version is None:
                self._conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        if version is not None and version > SCHEMA_VERSION:
            self._conn.close()
            raise RuntimeError(
                f"results database {self.path} has schema version {version}; this promptatlas "
                f"knows up to {SCHEMA_VERSION}. Upgrade promptatlas or use another database "
                "($PROMPTATLAS_DB)."
            )

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
            task,
            lang,
            method,
            split,
            main,
            json.dumps(dict(metrics), default=_json_default),
            json.dumps(dict(config), default=_json_default),
            str(prompt_dir) if prompt_dir is not None else None,
            seed,
            json.dumps(dict(versions)),
            status,
            key,
        )
        with self._conn:
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
        return [_to_record(row) for row in self._conn.execute(sql, params)]

    def has(self, key: str, *, status: str = "done") -> bool:
        """Whether a run with this cell key and status (default "done") was recorded."""
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
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = source.execute(
                "SELECT created, kind, model, task, lang, method, split, score, metrics, "
                "config, prompt_dir, seed, versions, status, key FROM runs ORDER BY id"
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a promptatlas results database ({exc})") from None
        finally:
            source.close()
        seen = {
            tuple(r) for r in self._conn.execute("SELECT created, kind, key, prompt_dir FROM runs")
        }
        new = [r for r in rows if (r[0], r[1], r[14], r[10]) not in seen]
        with self._conn:
            self._conn.executemany(
                "INSERT INTO runs (created, kind, model, task, lang, method, split, score, "
                "metrics, config, prompt_dir, seed, versions, status, key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new,
            )
        return len(new)

    def __len__(self) -> int:
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
