"""Users' own data (CSV/TSV/JSON/JSONL, Hugging Face datasets) and the example JSONL format.

Columns. ``columns`` maps our field names to the file's column names; fields not mapped are
looked up under their own name. Fields:

* ``input1`` (and ``input2`` for pair tasks): the input texts. QA: input1 = context,
  input2 = question. CG: optional; by default the concepts joined by spaces. Unmapped inputs
  are looked up under the task's input names (a task file's ``inputs``, e.g. ``premise``),
  then under ``input1``/``input2``.
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

A column name with dots (``labels.binary-label``) reaches into nested JSON objects when no
column has that exact name.

CSV/TSV files have a header row (``header=False``: columns are named ``"0"``, ``"1"``, … by
position); ``delimiter`` overrides the format's; ``quoting=False`` reads double quotes as plain
text (GLUE-style TSV, whose fields contain unescaped ``"``). JSON is a list of objects; JSONL
one object per line (blank lines ignored). Errors name the file and the line (JSON lists: the
item index).
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
_QUOTING_FIX = (
    "if double quotes in this file are plain text (GLUE-style TSV), read it with quoting off "
    "(task file: quoting: false; load_file(..., quoting=False); predict --no-quoting)"
)
FORMATS = {
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "json": "json",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
}


class Columns(dict[str, str]):
    """field → column name, with fallback column names for unmapped inputs."""

    fallbacks: dict[str, str]


def _column_map(columns: Mapping[str, str] | None, task: TaskVariant | None = None) -> Columns:
    cols = dict(columns or {})
    unknown = sorted(set(cols) - set(FIELDS))
    if unknown:
        raise DataError(
            f"columns has unknown field(s) {unknown}; map these fields: {', '.join(FIELDS)}"
        )
    out = Columns({f: cols.get(f, f) for f in FIELDS})
    out.fallbacks = {}
    names = task.inputs if task is not None else ()
    for i, name in enumerate(names[:2], 1):
        field = f"input{i}"
        if field not in cols:
            out[field] = name  # the task's own input name first, then input1/input2
            out.fallbacks[field] = field
    return out


def _lookup(row: Mapping[str, Any], col: str) -> Any:
    """``row[col]``; a dotted name reaches into nested objects when no column has that name."""
    if col in row:
        return row[col]
    if "." in col:
        value: Any = row
        for part in col.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        return value
    return None


def _value(row: Mapping[str, Any], field: str, cols: Mapping[str, str]) -> Any:
    value = _lookup(row, cols[field])
    fallback = getattr(cols, "fallbacks", {}).get(field)
    if not _present(value) and fallback is not None:
        value = _lookup(row, fallback)
    return value


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _missing(row: Mapping[str, Any], field: str, cols: Mapping[str, str], loc: str) -> DataError:
    return DataError(
        f"{loc}: missing or empty column {cols[field]!r} (field {field!r}); columns present: "
        f"{sorted(str(k) for k in row)}. Map it with columns={{{field!r}: '<column>'}}"
    )


def _get_text(row: Mapping[str, Any], field: str, cols: Mapping[str, str], loc: str) -> str:
    col = cols[field]
    value = _value(row, field, cols)
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
    *,
    require_label: bool = True,
) -> Example:
    """Build and validate one example from a user row (see the module docstring).

    ``require_label=False`` (prediction): a row without a label (classification) or target
    (generation) gives an example with ``label=None`` and an empty target."""
    spec = task.spec
    uid_val = _value(row, "uid", cols)
    uid = str(uid_val).strip() if _present(uid_val) else default_uid
    inputs: tuple[str, ...]
    if spec.kind == "classification":
        inputs = tuple(_get_text(row, f"input{i}", cols, loc) for i in range(1, spec.n_inputs + 1))
        raw = _value(row, "label", cols)
        if not _present(raw) and not require_label:
            return Example(inputs=inputs, target="", label=None, uid=uid)
        if not _present(raw):
            raise _missing(row, "label", cols, loc)
        label = parse_label(raw, task, loc)
        ex = Example(inputs=inputs, target=task.verbalizers[label], label=label, uid=uid)
        return validate_example(ex, task, loc)
    concepts: tuple[str, ...] = ()
    if spec.metric == "coverage":
        if _present(_value(row, "concepts", cols)):
            concepts = _as_list(_value(row, "concepts", cols), "concepts", loc, split_words=True)
        else:
            concepts = tuple(_get_text(row, "input1", cols, loc).split())
        concepts = tuple(dict.fromkeys(c for c in concepts if c))
        inputs = (
            (_get_text(row, "input1", cols, loc),)
            if _present(_value(row, "input1", cols))
            else (" ".join(concepts),)
        )
    else:
        inputs = tuple(_get_text(row, f"input{i}", cols, loc) for i in range(1, spec.n_inputs + 1))
    refs: tuple[str, ...] = ()
    if _present(_value(row, "references", cols)):
        refs = _as_list(_value(row, "references", cols), "references", loc, split_words=False)
    if _present(_value(row, "target", cols)):
        target = _get_text(row, "target", cols, loc)
    elif refs:
        target = refs[0]
    elif not require_label:
        return Example(inputs=inputs, target="", concepts=concepts, uid=uid)
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
            f"{path}: cannot tell the format from {key!r}; pass fmt= one of csv, tsv, json, jsonl "
            "(task file: format: tsv)"
        )
    return FORMATS[key]


def _field_count_error(
    loc: str, n: int, expected: int, quoting: bool, raw_lines: int, quoted: bool
) -> DataError:
    what = "more" if n > expected else "fewer"
    text = f"{loc}: {n} fields, {what} than the header's {expected}"
    if quoting and (quoted or raw_lines > 1):
        text += f" (a double quote opened a quoted field here); {_QUOTING_FIX}"
    elif n > expected:
        text += "; quote fields that contain the delimiter"
    else:
        text += "; every row needs a value (may be empty) for each column"
    return DataError(text)


def _delimited_rows(
    path: Path,
    delimiter: str,
    encoding: str = "utf-8-sig",
    *,
    quoting: bool = True,
    header: bool = True,
) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding=encoding, newline="") as f:
        try:
            # strict: text after a closing quote ('"Hi," she said') is an error, not silently
            # merged; such files have plain-text quotes and need quoting off.
            reader = csv.reader(
                f,
                delimiter=delimiter,
                quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
                strict=quoting,
            )
            names: list[str] | None = None
            previous = 0
            for values in reader:
                loc = where(path, reader.line_num)
                lines = reader.line_num - previous
                previous = reader.line_num
                if not values or all(not v.strip() for v in values):
                    continue  # blank line
                if names is None:
                    if header:
                        names = [v.strip() for v in values]
                        continue
                    names = [str(i) for i in range(len(values))]
                if len(values) != len(names):
                    # Only a quoted field can hold the delimiter or a line end.
                    quoted = any(delimiter in v or "\n" in v or '"' in v for v in values)
                    raise _field_count_error(loc, len(values), len(names), quoting, lines, quoted)
                if (
                    quoting
                    and delimiter == "\t"
                    and lines > 1
                    and any("\n" in v and "\t" in v for v in values)
                ):
                    # A quote that was plain text swallowed a delimiter and a line end.
                    raise DataError(
                        f"{loc}: a quoted field spans {lines} lines and holds the delimiter; "
                        + _QUOTING_FIX
                    )
                yield loc, dict(zip(names, values, strict=True))
            if names is None:
                raise DataError(
                    f"{where(path, 1)}: empty file; a header row with column names is needed"
                    if header
                    else f"{path}: empty file"
                )
        except csv.Error as exc:
            raise DataError(
                f"{where(path, reader.line_num)}: not readable as "
                f"{'TSV' if delimiter == chr(9) else 'CSV'} ({exc}); {_QUOTING_FIX}"
            ) from None
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
    task: str | TaskVariant,
    lang: str | None = None,
    *,
    columns: Mapping[str, str] | None = None,
    fmt: str | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    quoting: bool = True,
    header: bool = True,
    require_label: bool = True,
) -> list[Example]:
    """Examples of ``task``/``lang`` (a name, a task file, or a :class:`TaskVariant`) from a
    user's CSV/TSV/JSON/JSONL file.

    The format comes from the suffix unless ``fmt`` is given (``examples``: the package's own
    JSONL). See the module docstring for ``columns`` and the accepted label forms (key, label
    word, or integer index). ``encoding``: the file's text encoding (default UTF-8, with or
    without a byte-order mark; e.g. ``cp949`` or ``euc-kr`` for older Korean exports); text that
    does not decode is a :class:`DataError` naming the file, line and byte. ``delimiter``,
    ``quoting`` and ``header`` set the CSV/TSV dialect (module docstring).
    ``require_label=False`` reads unlabelled rows too (prediction).
    """
    variant = _resolve_task(task, lang)
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    if (fmt or "").lower() == "examples":
        return read_examples(p, variant)
    kind = _detect_format(p, fmt)
    cols = _column_map(columns, variant)
    codec = check_encoding(encoding)
    rows: Iterable[tuple[str, dict[str, Any]]]
    if kind in ("csv", "tsv"):
        sep = delimiter or ("," if kind == "csv" else "\t")
        rows = _delimited_rows(p, sep, codec, quoting=quoting, header=header)
    elif kind == "json":
        rows = _json_rows(p, codec)
    else:
        rows = _jsonl_rows(p, codec, _ENCODING_FIX)
    out = [
        row_to_example(row, variant, cols, loc, f"{p.stem}-{i:05d}", require_label=require_label)
        for i, (loc, row) in enumerate(rows)
    ]
    if not out:
        raise DataError(
            f"{p}: no examples (an empty file, or a header without rows); add rows to it"
        )
    return out


def load_hf_dataset(
    name: str,
    task: str | TaskVariant,
    lang: str | None,
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
    cols = _column_map(columns, variant)
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
