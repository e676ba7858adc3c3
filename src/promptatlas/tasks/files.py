"""Users' own data (CSV/TSV/JSON/JSONL, Hugging Face datasets) and the example JSONL format.

Columns. ``columns`` maps our field names to the file's column names; fields not mapped are
looked up under their own name. Fields:

* ``input1`` (and ``input2`` for pair tasks): the input texts. QA: input1 = context,
  input2 = question. CG: optional; by default the concepts joined by spaces.
* ``label`` (classification): the canonical label key (``"positive"``), the label word in the
  task's language (``"긍정"``; case-insensitive), or an integer index into
  ``TaskVariant.labels`` (an int in JSON, or a string of digits in CSV/TSV). The index order
  follows the Hugging Face datasets (see :mod:`promptatlas.tasks.specs`), e.g. SA
  ``0 = negative, 1 = positive``. The target is always the label word; a ``target`` column is
  ignored for classification.
* ``target`` (generation): the text to produce. May be omitted when ``references`` is given
  (the first reference is used).
* ``references`` (generation, optional): all acceptable outputs; a JSON list, or in CSV/TSV a
  cell holding a JSON list (``["a", "b"]``) or a single text. Defaults to ``(target,)``.
* ``concepts`` (CG): a list, or a string of space-separated concepts.
* ``uid`` (optional): an id; default ``<file stem>-<row index>``.

CSV/TSV files need a header row. JSON is a list of objects; JSONL one object per line (blank
lines ignored). Errors name the file and the line (JSON lists: the item index).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from promptatlas.tasks.errors import REENCODE, DataError, check_encoding, decode_error, where
from promptatlas.tasks.specs import Example, TaskVariant, get_task, validate_example

_ENCODING_FIX = "pass its encoding (load_file(..., encoding='cp949')) or " + REENCODE

FIELDS = ("input1", "input2", "label", "target", "references", "concepts", "uid")
FORMATS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
}


def _column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    cols = dict(columns or {})
    unknown = sorted(set(cols) - set(FIELDS))
    if unknown:
        raise DataError(
            f"columns has unknown field(s) {unknown}; map these fields: {', '.join(FIELDS)}"
        )
    return {f: cols.get(f, f) for f in FIELDS}


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _missing(row: Mapping[str, Any], field: str, cols: Mapping[str, str], loc: str) -> DataError:
    return DataError(
        f"{loc}: missing or empty column {cols[field]!r} (field {field!r}); columns present: "
        f"{sorted(str(k) for k in row)}. Map it with columns={{{field!r}: '<column>'}}"
    )


def _get_text(row: Mapping[str, Any], field: str, cols: Mapping[str, str], loc: str) -> str:
    col = cols[field]
    value = row.get(col)
    if not _present(value):
        raise _missing(row, field, cols, loc)
    if not isinstance(value, str):
        raise DataError(f"{loc}: column {col!r} must hold text, got {type(value).__name__}")
    return value.strip()


def parse_label(value: Any, task: TaskVariant, loc: str) -> str:
    """A label given as key, label word or integer index -> the canonical key."""
    if isinstance(value, bool):
        raise DataError(f"{loc}: label {value!r} is a boolean; use a label key, word or index")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # pandas-style exports write 1.0
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int):
        if not 0 <= value < len(task.labels):
            raise DataError(
                f"{loc}: label index {value} out of range for task {task.name}; indices are "
                + ", ".join(f"{i}={k}" for i, k in enumerate(task.labels))
            )
        return task.labels[value]
    if isinstance(value, str):
        text = value.strip()
        if text in task.labels:
            return text
        try:
            return task.label_of_word(text)
        except DataError:
            pass
    raise DataError(
        f"{loc}: unknown label {value!r} for task {task.name}; use a key "
        f"({', '.join(task.labels)}), a label word ({', '.join(task.verbalizers.values())}) "
        f"or an index 0-{len(task.labels) - 1}"
    )


def _as_list(value: Any, field: str, loc: str, *, split_words: bool) -> tuple[str, ...]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{loc}: {field} looks like a JSON list but is not ({e.msg})"
                ) from e
        else:
            return tuple(text.split()) if split_words else (text,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value)
    raise DataError(f"{loc}: {field} must be a list of strings or a string")


def row_to_example(
    row: Mapping[str, Any],
    task: TaskVariant,
    cols: Mapping[str, str],
    loc: str,
    default_uid: str,
) -> Example:
    """Build and validate one example from a user row (see the module docstring)."""
    spec = task.spec
    uid_val = row.get(cols["uid"])
    uid = str(uid_val).strip() if _present(uid_val) else default_uid
    inputs: tuple[str, ...]
    if spec.kind == "classification":
        inputs = tuple(_get_text(row, f"input{i}", cols, loc) for i in range(1, spec.n_inputs + 1))
        raw = row.get(cols["label"])
        if not _present(raw):
            raise _missing(row, "label", cols, loc)
        label = parse_label(raw, task, loc)
        ex = Example(inputs=inputs, target=task.verbalizers[label], label=label, uid=uid)
        return validate_example(ex, task, loc)
    concepts: tuple[str, ...] = ()
    if spec.name == "cg":
        if _present(row.get(cols["concepts"])):
            concepts = _as_list(row[cols["concepts"]], "concepts", loc, split_words=True)
        else:
            concepts = tuple(_get_text(row, "input1", cols, loc).split())
        concepts = tuple(dict.fromkeys(c for c in concepts if c))
        inputs = (
            (_get_text(row, "input1", cols, loc),)
            if _present(row.get(cols["input1"]))
            else (" ".join(concepts),)
        )
    else:
        inputs = tuple(_get_text(row, f"input{i}", cols, loc) for i in range(1, spec.n_inputs + 1))
    refs: tuple[str, ...] = ()
    if _present(row.get(cols["references"])):
        refs = _as_list(row[cols["references"]], "references", loc, split_words=False)
    if _present(row.get(cols["target"])):
        target = _get_text(row, "target", cols, loc)
    elif refs:
        target = refs[0]
    else:
        raise DataError(
            f"{loc}: generation task {task.name} needs a {cols['target']!r} or "
            f"{cols['references']!r} column; map yours with columns={{'target': '<column>'}}"
        )
    refs = refs or (target,)
    ex = Example(inputs=inputs, target=target, references=refs, concepts=concepts, uid=uid)
    return validate_example(ex, task, loc)


def _detect_format(path: Path, fmt: str | None) -> str:
    key = (fmt or path.suffix.lstrip(".")).lower()
    if key not in FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from {key!r}; pass fmt= one of csv, tsv, json, jsonl"
        )
    return FORMATS[key]


def _delimited_rows(
    path: Path, delimiter: str, encoding: str = "utf-8-sig"
) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding=encoding, newline="") as f:
        try:
            reader = csv.DictReader(f, delimiter=delimiter)
            if not reader.fieldnames:
                raise DataError(
                    f"{where(path, 1)}: empty file; a header row with column names is needed"
                )
            for row in reader:
                loc = where(path, reader.line_num)
                if None in row:
                    raise DataError(
                        f"{loc}: more fields than the header's {len(reader.fieldnames)}; "
                        "quote fields that contain the delimiter"
                    )
                if all(v is None or not str(v).strip() for v in row.values()):
                    continue  # blank line
                yield loc, row
        except UnicodeDecodeError as exc:
            raise decode_error(path, exc, encoding, _ENCODING_FIX) from None


def _json_rows(path: Path, encoding: str = "utf-8-sig") -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        with open(path, encoding=encoding) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: invalid JSON ({e.msg})") from e
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, encoding, _ENCODING_FIX) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (use .jsonl for one per line)")
    for i, obj in enumerate(data):
        loc = f"{path}: item {i}"
        if not isinstance(obj, dict):
            raise DataError(f"{loc}: expected an object, got {type(obj).__name__}")
        yield loc, obj


def _jsonl_rows(
    path: Path, encoding: str = "utf-8-sig", fix: str = REENCODE
) -> Iterator[tuple[str, dict[str, Any]]]:
    from promptatlas.tasks.sources import read_jsonl

    for line, obj in read_jsonl(path, encoding, fix):
        yield where(path, line), obj


def _resolve_task(task: str | TaskVariant, lang: str | None) -> TaskVariant:
    if isinstance(task, TaskVariant):
        return task
    if lang is None:
        raise DataError("lang is required when task is given by name")
    return get_task(task, lang)


def load_file(
    path: str | Path,
    task: str,
    lang: str,
    *,
    columns: Mapping[str, str] | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
) -> list[Example]:
    """Examples of ``task``/``lang`` from a user's CSV/TSV/JSON/JSONL file.

    The format comes from the suffix unless ``fmt`` is given. See the module docstring for
    ``columns`` and the accepted label forms (key, label word, or integer index). ``encoding``:
    the file's text encoding (default UTF-8, with or without a byte-order mark; e.g. ``cp949``
    or ``euc-kr`` for older Korean exports); text that does not decode is a :class:`DataError`
    naming the file, line and byte.
    """
    variant = _resolve_task(task, lang)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    kind = _detect_format(p, fmt)
    cols = _column_map(columns)
    codec = check_encoding(encoding)
    rows: Iterable[tuple[str, dict[str, Any]]]
    if kind in ("csv", "tsv"):
        rows = _delimited_rows(p, "," if kind == "csv" else "\t", codec)
    elif kind == "json":
        rows = _json_rows(p, codec)
    else:
        rows = _jsonl_rows(p, codec, _ENCODING_FIX)
    out = [
        row_to_example(row, variant, cols, loc, f"{p.stem}-{i:05d}")
        for i, (loc, row) in enumerate(rows)
    ]
    if not out:
        raise DataError(
            f"{p}: no examples (an empty file, or a header without rows); add rows to it"
        )
    return out


def load_hf_dataset(
    name: str,
    task: str,
    lang: str,
    *,
    split: str,
    columns: Mapping[str, str],
    config: str | None = None,
) -> list[Example]:
    """Examples from a Hugging Face dataset (needs the optional ``datasets`` package and network).

    Rows are converted like :func:`load_file` rows; integer labels index ``TaskVariant.labels``,
    whose order matches the common HF datasets (e.g. ``glue/sst2``, ``ag_news``, ``klue/ynat``).
    """
    variant = _resolve_task(task, lang)
    cols = _column_map(columns)
    try:
        import datasets  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise DataError(
            f"loading {name!r} needs the optional 'datasets' package (pip install datasets) and "
            "network access; alternatively export the data to CSV/JSONL and use load_file()"
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown name or config: all surface as one clear error
        raise DataError(
            f"could not load Hugging Face dataset {name!r} (config={config!r}, split={split!r}): "
            f"{e}. Check the name, config and split, and that you are online"
        ) from e
    out = []
    for i, row in enumerate(ds):
        loc = f"hf:{name}{'/' + config if config else ''}[{split}] row {i}"
        out.append(row_to_example(row, variant, cols, loc, f"{name}-{split}-{i:05d}"))
    return out


# ---------------------------------------------------------------------------------------------
# the package's own example JSONL format (bundled samples)


def example_to_json(ex: Example) -> dict[str, Any]:
    """JSON object of an example; empty optional fields are left out (the reader defaults them)."""
    obj: dict[str, Any] = {"uid": ex.uid, "inputs": list(ex.inputs), "target": ex.target}
    if ex.label is not None:
        obj["label"] = ex.label
    if ex.references:
        obj["references"] = list(ex.references)
    if ex.concepts:
        obj["concepts"] = list(ex.concepts)
    return obj


def write_examples(path: str | Path, examples: Sequence[Example]) -> None:
    """One example per line as JSON (UTF-8, not ASCII-escaped), ``\\n`` line ends."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            f.write(json.dumps(example_to_json(ex), ensure_ascii=False) + "\n")


def _str_tuple(obj: dict[str, Any], key: str, loc: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{loc}: {key!r} must be a list of strings")
    return tuple(value)


def read_examples(path: str | Path, task: TaskVariant) -> list[Example]:
    """Read and validate an example JSONL file written by :func:`write_examples`."""
    p = Path(path)
    out = []
    for loc, obj in _jsonl_rows(p):
        target, label, uid = obj.get("target"), obj.get("label"), obj.get("uid", "")
        if not isinstance(target, str):
            raise DataError(f"{loc}: 'target' must be a string")
        if label is not None and not isinstance(label, str):
            raise DataError(f"{loc}: 'label' must be a string or null")
        ex = Example(
            inputs=_str_tuple(obj, "inputs", loc),
            target=target,
            label=label,
            references=_str_tuple(obj, "references", loc),
            concepts=_str_tuple(obj, "concepts", loc),
            uid=str(uid),
        )
        out.append(validate_example(ex, task, loc))
    return out
