"""Which tasks exist in this process, and where their data comes from.

* **Built-in tasks** are the task files shipped in ``promptatlas/tasks/defs/`` (sts, nli, sa, tc,
  qa, cg in English and Korean), read on first use.
* **Task files** given by path (``--task my-task.yaml``, ``tasks: [my-task.yaml]`` in an
  experiment, ``get_task("my-task.yaml", "en")``) are read and registered under their name,
  replacing an earlier definition of that name; they cannot redefine a built-in name.
* **Prompt metadata** stores the definition of the task a prompt was trained on
  (:func:`task_record`); reading it (:func:`register_stored`) registers the task when its name is
  not known yet, so ``promptatlas eval PROMPT`` works without the task file.

:func:`load_task_split` reads one split: the split's data file (``data_dir`` replaces the task
file's folder for relative paths; for built-in tasks it is the folder of the full original
datasets, see :mod:`promptatlas.tasks.sources`), or a split carved from another one.
:func:`data_hashes` fingerprints the data files, so a prompt can tell when its data changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from promptatlas.configtools import config_hash
from promptatlas.tasks import specs
from promptatlas.tasks.carve import carve
from promptatlas.tasks.errors import DataError, UnknownTaskError
from promptatlas.tasks.specs import Example, TaskSpec, TaskVariant, check_split
from promptatlas.tasks.taskfile import (
    TaskDefinition,
    TaskFileError,
    definition_from_dict,
    is_task_file,
    read_task_file,
)

__all__ = [
    "BUILTIN_DIR",
    "BUILTIN_ORDER",
    "builtin_definitions",
    "builtin_variants",
    "changed_data",
    "data_hashes",
    "is_builtin",
    "load_task_file",
    "load_task_split",
    "register_stored",
    "register_task",
    "registered_definition",
    "resolve_task",
    "task_fingerprint",
    "task_name",
    "task_record",
]

BUILTIN_DIR = Path(__file__).resolve().parent / "defs"
BUILTIN_ORDER = ("sts", "nli", "sa", "tc", "qa", "cg")

_USER: dict[str, TaskDefinition] = {}  # name → definition (task files, prompt metadata)


@functools.cache
def builtin_definitions() -> Mapping[str, TaskDefinition]:
    """The shipped task files, by name, in the thesis order."""
    out = {}
    for name in BUILTIN_ORDER:
        definition = read_task_file(BUILTIN_DIR / f"{name}.yaml")
        if definition.name != name:
            raise TaskFileError(f"{BUILTIN_DIR / name}.yaml defines {definition.name!r}")
        out[name] = definition
    return MappingProxyType(out)


@functools.cache
def builtin_variants() -> Mapping[str, TaskVariant]:
    """Every built-in task/language pair (``"sa-en"`` → variant), task then language."""
    return MappingProxyType(
        {
            f"{d.name}-{lang}": d.variant(lang)
            for d in builtin_definitions().values()
            for lang in d.languages
        }
    )


@functools.cache
def _builtin_specs() -> Mapping[str, TaskSpec]:
    return MappingProxyType(
        {d.name: d.variant(next(iter(d.languages))).spec for d in builtin_definitions().values()}
    )


def BUILTIN_SPECS() -> Mapping[str, TaskSpec]:
    """``TASKS``: built-in task name → :class:`TaskSpec`."""
    return _builtin_specs()


def is_builtin(name: str) -> bool:
    return str(name).strip().lower() in BUILTIN_ORDER


def registered_definition(name: str) -> TaskDefinition | None:
    """The definition of a task name (built-in or registered), or None."""
    key = str(name).strip().lower()
    return builtin_definitions().get(key) or _USER.get(key)


def _same(a: TaskDefinition, b: TaskDefinition) -> bool:
    return a.to_dict() == b.to_dict()


def register_task(definition: TaskDefinition) -> TaskDefinition:
    """Make ``definition`` known under its name (replacing a user task of that name)."""
    builtin = builtin_definitions().get(definition.name)
    if builtin is not None:
        if _same(builtin, definition):
            return builtin
        raise TaskFileError(
            f"task {definition.name!r} is a built-in task name ({', '.join(BUILTIN_ORDER)}) "
            "with another definition; give your task another name"
        )
    _USER[definition.name] = definition
    return definition


def load_task_file(path: str | Path) -> TaskDefinition:
    """Read, validate and register a task file; returns its definition."""
    definition = read_task_file(path)
    try:
        return register_task(definition)
    except TaskFileError as exc:
        raise TaskFileError(f"{path}: {exc}") from None


def register_stored(data: Mapping[str, Any], where: str) -> TaskDefinition | None:
    """Register the task definition stored in a prompt's metadata unless its name is already
    known (a task file given in this run, or a built-in task, wins); returns the definition in
    use. A stored definition that differs from the one in use is reported as a warning."""
    try:
        stored = definition_from_dict(data, where=where)
    except DataError as exc:
        warnings.warn(f"{where}: stored task definition ignored ({exc})", stacklevel=2)
        return None
    current = registered_definition(stored.name)
    if current is None:
        _USER[stored.name] = stored
        return stored
    if not is_builtin(stored.name) and _definition_key(current) != _definition_key(stored):
        warnings.warn(
            f"{where} was trained on a task {stored.name!r} defined differently from the one "
            "in use (labels, label words, metric or inputs differ); using the one in use",
            stacklevel=2,
        )
    return current


def _definition_key(d: TaskDefinition) -> dict[str, Any]:
    """What decides how a task is scored (not where its data lives)."""
    out = d.to_dict()
    for spec in out["languages"].values():
        for key in ("data", "carve", "dataset", "source", "licence", "official_split"):
            spec.pop(key, None)
    out.pop("description", None)
    out.pop("columns", None)
    return out


def task_name(task: str) -> str:
    """The name of a task given by name (``"SA"`` → ``"sa"``) or by task file (read and
    registered)."""
    text = str(task).strip()
    return load_task_file(text).name if is_task_file(text) else text.lower()


def resolve_task(task: str, lang: str) -> TaskVariant:
    """A task name or task file path and a language → the variant (see the module docstring)."""
    text = str(task).strip()
    if is_task_file(text):
        definition = load_task_file(text)
    else:
        found = registered_definition(text)
        if found is None:
            user = f"; task files read in this run: {', '.join(_USER)}" if _USER else ""
            raise UnknownTaskError(
                f"unknown task {task!r} in language {lang!r}; valid tasks: "
                f"{', '.join(BUILTIN_ORDER)} (languages en, ko; pairs: "
                f"{', '.join(builtin_variants())}){user}, or a task file such as my-task.yaml"
            )
        definition = found
    code = str(lang).strip().lower()
    if code not in definition.languages:
        if is_builtin(definition.name):
            raise UnknownTaskError(
                f"unknown task {task!r} in language {lang!r}; valid tasks: "
                f"{', '.join(BUILTIN_ORDER)}; languages: en, ko (pairs: "
                f"{', '.join(builtin_variants())})"
            )
        raise UnknownTaskError(
            f"task {definition.name!r} has no language {lang!r}; its languages: "
            f"{', '.join(definition.languages)} (add one under languages: in its task file)"
        )
    if is_builtin(definition.name):
        return builtin_variants()[f"{definition.name}-{code}"]
    return _user_variant(definition, code)


def _user_variant(definition: TaskDefinition, lang: str) -> TaskVariant:
    key = (config_hash(definition.to_dict()), lang)
    cached = _VARIANTS.get(key)
    if cached is None:
        cached = _VARIANTS[key] = definition.variant(lang)
    return cached


_VARIANTS: dict[tuple[str, str], TaskVariant] = {}


# -- data -------------------------------------------------------------------------------------


def _base(definition: TaskDefinition, data_dir: str | Path | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else Path(definition.base or ".")


def _read_file(
    definition: TaskDefinition, variant: TaskVariant, split: str, base: Path
) -> list[Example]:
    from promptatlas.tasks.files import load_file

    spec = definition.languages[variant.lang].data[split]
    path = definition.path_of(spec.file, base)
    if not path.is_file() and is_builtin(definition.name):
        raise DataError(
            f"{path}: bundled sample missing; rebuild it with scripts/build_samples.py or pass "
            "data_dir= to read the original files"
        )
    if not path.is_file():
        raise DataError(
            f"{path}: no such file (split {split} of task {definition.name}-{variant.lang}); fix "
            "its path in the task file (relative paths start from the task file's folder), or "
            "give --data-dir, the folder it is in"
        )
    columns = {**definition.columns, **spec.columns}
    return load_file(
        path,
        variant,
        columns=columns,
        fmt=spec.format,
        encoding=spec.encoding,
        delimiter=spec.delimiter,
        quoting=spec.quoting,
        header=spec.header,
    )


def _all_splits(
    definition: TaskDefinition, variant: TaskVariant, base: Path
) -> dict[str, list[Example]]:
    """Every split of one language: the files, then the carved splits in the order given."""
    spec = definition.languages[variant.lang]
    key = (
        config_hash(definition.to_dict()),
        variant.lang,
        str(base),
        tuple(_stat(definition.path_of(d.file, base)) for d in spec.data.values()),
    )
    cached = _SPLITS.get(key)
    if cached is not None:
        return cached
    pools = {split: _read_file(definition, variant, split, base) for split in spec.data}
    for split, rule in spec.carve.items():
        labelled = variant.spec.kind == "classification"
        by_label = (lambda e: e.label or "") if labelled else None
        rest, held = carve(pools[rule.from_split], rule.fraction, key=by_label)
        pools[rule.from_split], pools[split] = rest, held
    for split, examples in pools.items():
        if not examples:
            raise DataError(
                f"split {split} of task {definition.name}-{variant.lang} is empty after carving; "
                "lower the carved fraction or add data"
            )
    if len(_SPLITS) > 32:
        _SPLITS.clear()
    _SPLITS[key] = pools
    return pools


_SPLITS: dict[tuple[Any, ...], dict[str, list[Example]]] = {}


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), st.st_size, st.st_mtime_ns)


def load_task_split(
    variant: TaskVariant,
    split: str,
    *,
    data_dir: str | Path | None = None,
) -> list[Example]:
    """All examples of one split of ``variant`` (see the module docstring)."""
    split = check_split(split)
    definition = registered_definition(variant.spec.name)
    if definition is None:
        raise UnknownTaskError(f"task {variant.spec.name!r} is not registered; load its task file")
    if is_builtin(variant.spec.name) and data_dir is not None:
        from promptatlas.tasks.sources import load_source

        return load_source(variant, data_dir)[split]
    pools = _all_splits(definition, variant, _base(definition, data_dir))
    if split not in pools:
        have = ", ".join(pools) or "none"
        raise DataError(
            f"task {definition.name}-{variant.lang} has no {split} data (splits: {have}); add "
            f"{split}: {{file: …}} under languages.{variant.lang}.data in its task file, or "
            f"carve it: carve: {{{split}: {{from_split: train, fraction: 0.1}}}}"
        )
    return list(pools[split])


# -- provenance -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def data_hashes(
    task: str, lang: str, data_dir: str | Path | None = None
) -> dict[str, dict[str, str]] | None:
    """split → ``{"file": absolute path, "sha256": first 16 hex digits}`` of every data file of
    ``task`` in ``lang``; None for a built-in task read from ``data_dir`` (the original files) or
    an unknown task. Missing files are left out."""
    definition = registered_definition(task)
    if definition is None or lang not in definition.languages:
        return None
    if is_builtin(definition.name) and data_dir is not None:
        return None
    out = {}
    for split, path in definition.data_files(lang, _base(definition, data_dir)).items():
        path_s, size, mtime = _stat(Path(os.path.abspath(path)))
        if size >= 0:
            out[split] = {"file": path_s, "sha256": _file_hash(path_s, size, mtime)}
    return out


def task_record(task: str, lang: str, data_dir: str | Path | None = None) -> dict[str, Any] | None:
    """What prompt metadata keeps about a task: ``definition`` (the task file with absolute data
    paths) and ``data`` (:func:`data_hashes`). None for a task name that is not known."""
    definition = registered_definition(task)
    if definition is None:
        return None
    base = _base(definition, data_dir)
    resolved = dataclasses.replace(definition, base=os.path.abspath(base))
    return {"definition": resolved.to_dict(), "data": data_hashes(task, lang, data_dir)}


def task_fingerprint(task: str, lang: str, data_dir: str | Path | None = None) -> str | None:
    """A hash of a user task's definition and data files (None for built-in tasks): part of an
    experiment cell's key, so an edited task file or data file reruns the cell."""
    if is_builtin(task):
        return None
    record = task_record(task, lang, data_dir)
    return None if record is None else config_hash(record)


def changed_data(
    stored: Mapping[str, Any] | None, task: str, lang: str, data_dir: Any = None
) -> list[str]:
    """Descriptions of the data files whose content differs from ``stored`` (a prompt's
    ``data_files``, as :func:`data_hashes` gives them), split by split: changed, or gone.
    A file that moved but kept its content is not a change."""
    if not stored:
        return []
    now = data_hashes(task, lang, data_dir) or {}
    out = []
    for split, before in stored.items():
        if not isinstance(before, Mapping):
            continue
        after = now.get(split)
        if after is None:
            out.append(f"the {split} file {before.get('file')} is gone")
        elif after["sha256"] != before.get("sha256"):
            out.append(
                f"the {split} file {after['file']} changed (sha256 {before.get('sha256')} → "
                f"{after['sha256']})"
            )
    return out


specs.bind_registry(sys.modules[__name__])
