"""Task files: a task defined in YAML (name, inputs, labels, label words per language, metric,
per-split data files with a column mapping and CSV/TSV dialect, optional instruction/template).

The six built-in tasks are task files shipped in ``promptatlas/tasks/defs/`` and read by the
same code as a user's file. Example (README "Your own task")::

    name: rte                         # lower-case letters, digits, _
    description: Recognising textual entailment, 2-way
    kind: classification              # or generation
    inputs: [premise, hypothesis]     # input fields; also the default column names
    labels: [entailment, not_entailment]
    metric: macro_f1                  # accuracy, macro_f1, binary_f1, mcc, squad, coverage
    positive_label: entailment        # binary_f1 only
    max_length: 256                   # token budget of input + answer
    columns: {label: label}           # default column mapping of every data file
    languages:
      en:
        label_words: {entailment: "yes", not_entailment: "no"}
        instruction: Does the first text entail the second?     # optional
        data:
          train: {file: rte/train.jsonl}
          test: {file: rte/val.jsonl}
        carve:                        # splits cut from another split (stratified, seed 42)
          dev: {from_split: train, fraction: 0.1}

Data files: ``file`` (relative to the task file's folder), ``format`` (csv, tsv, json, jsonl,
or ``examples`` = the package's own JSONL; default from the suffix), ``columns`` (our field →
the file's column; nested JSON keys as ``labels.binary-label``), ``delimiter``, ``quoting``
(false for GLUE-style TSV whose quotes are plain text), ``header`` (false: columns are named
``"0"``, ``"1"``, … by position), ``encoding``.

Every key is checked by :func:`promptatlas.configtools.from_dict`: an unknown key or a wrong type
is one :class:`TaskFileError` naming the file and the field path.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from promptatlas.configtools import ConfigError, from_dict
from promptatlas.tasks.errors import DataError
from promptatlas.tasks.specs import SPLITS, FrozenMap, TaskSpec, TaskVariant

__all__ = [
    "METRICS",
    "CarveSpec",
    "DataFileSpec",
    "LanguageSpec",
    "TaskDefinition",
    "TaskFileError",
    "check_template",
    "definition_from_dict",
    "is_task_file",
    "read_task_file",
    "template_fields",
]

Metric = Literal["accuracy", "macro_f1", "binary_f1", "mcc", "squad", "coverage"]
METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "binary_f1", "mcc", "squad", "coverage")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "binary_f1", "mcc")
GENERATION_METRICS = ("squad", "coverage")
DataFormat = Literal["csv", "tsv", "json", "jsonl", "examples"]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REQUIRED = object()
_YAML_BOOLS = "YAML reads yes/no/on/off/true/false unquoted as true/false; quote it: 'yes'"


class TaskFileError(DataError):
    """An invalid task file; the message names the file and the field."""


@dataclass(frozen=True)
class DataFileSpec:
    """One split's data file and how to read it."""

    file: str
    format: DataFormat | None = None  # None: from the suffix (.csv .tsv .json .jsonl)
    columns: Mapping[str, str] = field(default_factory=dict)
    delimiter: str | None = None  # default: "," for csv, tab for tsv
    quoting: bool = True  # False: double quotes are plain text (GLUE-style TSV)
    header: bool = True  # False: columns are named "0", "1", … by position
    encoding: str = "utf-8"


@dataclass(frozen=True)
class CarveSpec:
    """A split cut from another split: ``fraction`` of each label (stratified, seed 42)."""

    from_split: Literal["train", "dev", "test"]
    fraction: float


@dataclass(frozen=True)
class LanguageSpec:
    """What a task needs in one language."""

    label_words: Mapping[str, str] | None = None  # label → word; default: the label itself
    labels: tuple[str, ...] | None = None  # this language's labels, if not the task's
    data: Mapping[str, DataFileSpec] = field(default_factory=dict)  # split → file
    carve: Mapping[str, CarveSpec] = field(default_factory=dict)  # split → carved from
    instruction: str | None = None
    template: str | None = None
    max_length: int | None = None
    dataset: str = ""
    source: str = ""
    licence: str = ""
    official_split: bool = True


@dataclass(frozen=True)
class TaskDefinition:
    """A parsed task file (see the module docstring). ``base`` is the folder relative data paths
    start from (the task file's folder); it is not part of the file."""

    name: str
    languages: Mapping[str, LanguageSpec]
    kind: Literal["classification", "generation"] = "classification"
    inputs: tuple[str, ...] = ("text",)
    labels: tuple[str, ...] = ()
    metric: Metric | None = None  # default: macro_f1 (classification), squad (generation)
    positive_label: str | None = None
    max_length: int = 256
    description: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    instruction: str | None = None  # default of every language
    template: str | None = None  # default of every language
    base: str = field(default="", compare=False)

    # -- views -------------------------------------------------------------------------------
    @property
    def main_metric(self) -> str:
        if self.metric is not None:
            return self.metric
        return "macro_f1" if self.kind == "classification" else "squad"

    def labels_of(self, lang: str) -> tuple[str, ...]:
        spec = self.languages[lang]
        return tuple(spec.labels) if spec.labels is not None else tuple(self.labels)

    def label_words_of(self, lang: str) -> dict[str, str]:
        spec = self.languages[lang]
        words = dict(spec.label_words or {})
        return {lab: words.get(lab, lab) for lab in self.labels_of(lang)}

    def path_of(self, file: str, base: str | Path | None = None) -> Path:
        """A data file's path: absolute as given, else under ``base`` (default: the task
        file's folder)."""
        path = Path(file).expanduser()
        if path.is_absolute():
            return path
        return Path(base if base is not None else self.base or ".") / path

    def variant(self, lang: str) -> TaskVariant:
        """This task in ``lang`` as the :class:`TaskVariant` every other module uses."""
        spec = self.languages[lang]
        labels = self.labels_of(lang)
        return TaskVariant(
            spec=TaskSpec(
                self.name, self.kind, len(self.inputs), self.main_metric, self.description
            ),
            lang=lang,
            dataset=spec.dataset or self.name,
            labels=labels,
            verbalizers=FrozenMap(self.label_words_of(lang) if labels else {}),
            positive_label=self.positive_label if self.positive_label in labels else None,
            max_length=spec.max_length or self.max_length,
            official_split=spec.official_split,
            source=spec.source,
            licence=spec.licence,
            inputs=tuple(self.inputs),
            instruction=spec.instruction if spec.instruction is not None else self.instruction,
            template=spec.template if spec.template is not None else self.template,
        )

    def to_dict(self, *, absolute: bool = True) -> dict[str, Any]:
        """The task file as a mapping (what :func:`definition_from_dict` reads back); with
        ``absolute`` data paths are absolute, so the definition works from anywhere (prompt
        metadata stores it)."""
        out = _plain(self)
        out.pop("base", None)
        if absolute:
            for lang, spec in out["languages"].items():
                for split, data in spec["data"].items():
                    data["file"] = os.path.abspath(self.path_of(data["file"]))
                    out["languages"][lang]["data"][split] = data
        return out

    def data_files(self, lang: str, base: str | Path | None = None) -> dict[str, Path]:
        """split → path of the file each split with a file is read from."""
        return {
            split: self.path_of(spec.file, base)
            for split, spec in self.languages[lang].data.items()
        }


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and tuples as plain dicts and lists, defaults left out."""
    if hasattr(value, "__dataclass_fields__"):
        out = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if f.default is not MISSING:
                default: Any = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                default = _REQUIRED
            if v != default:
                out[f.name] = _plain(v)
        return out
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def is_task_file(text: str) -> bool:
    """True when a ``--task`` value names a task file rather than a task name."""
    value = str(text).strip()
    return value.lower().endswith((".yaml", ".yml")) or "/" in value or "\\" in value


def read_task_file(path: str | Path) -> TaskDefinition:
    """Parse and validate a task file; errors name the file and the field."""
    import yaml

    p = Path(path).expanduser()
    if not p.is_file():
        hint = " (relative paths start from the current folder)" if not p.is_absolute() else ""
        raise TaskFileError(f"task file {p} does not exist{hint}; check the path")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise TaskFileError(f"task file {p} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise TaskFileError(f"task file {p} is not valid YAML: {detail}") from None
    definition = definition_from_dict(data, base=p.resolve().parent, where=str(p))
    return definition


def definition_from_dict(
    data: Any, *, base: str | Path = "", where: str = "task definition"
) -> TaskDefinition:
    """A :class:`TaskDefinition` from a mapping (a parsed task file, or prompt metadata)."""
    if not isinstance(data, Mapping):
        raise TaskFileError(f"{where}: a task file must be a YAML mapping (name: …, labels: …)")
    if "base" in data:
        raise TaskFileError(
            f"{where}: base: unknown key; data paths start from the task file's folder"
        )
    try:
        _check_yaml_bools(data)
        definition = from_dict(TaskDefinition, {**data, "base": str(base)})
        _validate(definition)
    except ConfigError as exc:
        raise TaskFileError(f"{where}: {exc}") from None
    return definition


def _check_yaml_bools(data: Mapping[str, Any]) -> None:
    """A label or label word written as yes/no reaches us as a boolean: say how to fix it."""

    def check(values: Any, path: str) -> None:
        if isinstance(values, Mapping):
            for k, v in values.items():
                if isinstance(k, bool) or isinstance(v, bool):
                    raise ConfigError(f"{path}.{k}: {_YAML_BOOLS}")
        elif isinstance(values, list | tuple):
            for i, v in enumerate(values):
                if isinstance(v, bool):
                    raise ConfigError(f"{path}[{i}]: {_YAML_BOOLS}")

    check(data.get("labels"), "labels")
    if isinstance(data.get("positive_label"), bool):
        raise ConfigError(f"positive_label: {_YAML_BOOLS}")
    languages = data.get("languages")
    if isinstance(languages, Mapping):
        for lang, spec in languages.items():
            if isinstance(spec, Mapping):
                check(spec.get("labels"), f"languages.{lang}.labels")
                check(spec.get("label_words"), f"languages.{lang}.label_words")


def template_fields(template: str, path: str) -> list[str]:
    """The ``{name}`` slots of ``template``; a malformed template raises ``ConfigError``
    naming ``path``."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a valid template ({exc}); write inputs as {{name}}"
        ) from None


def _validate(d: TaskDefinition) -> None:
    """Checks beyond types; each error names the field path."""
    if not _NAME.fullmatch(d.name):
        raise ConfigError(
            f"name: {d.name!r} is not a valid task name; use lower-case letters, digits and _ "
            "(starting with a letter), e.g. rte or my_task"
        )
    if not d.languages:
        raise ConfigError("languages: give at least one language, e.g. languages: {en: {…}}")
    if not d.inputs or len(set(d.inputs)) != len(d.inputs):
        raise ConfigError("inputs: give one or more distinct input field names, e.g. [text]")
    metric = d.main_metric
    if d.kind == "classification" and metric not in CLASSIFICATION_METRICS:
        raise ConfigError(
            f"metric: {metric!r} is a generation metric; classification tasks use one of "
            f"{', '.join(CLASSIFICATION_METRICS)}"
        )
    if d.kind == "generation":
        if metric not in GENERATION_METRICS:
            raise ConfigError(
                f"metric: {metric!r} is a classification metric; generation tasks use one of "
                f"{', '.join(GENERATION_METRICS)}"
            )
        if d.labels or d.positive_label:
            raise ConfigError("labels: a generation task has no labels (kind: generation)")
        if metric == "coverage" and len(d.inputs) != 1:
            raise ConfigError("inputs: a coverage (concepts) task has one input")
    if d.max_length < 8:
        raise ConfigError(f"max_length: must be ≥ 8 tokens, got {d.max_length}")
    for key in d.columns:
        _check_column_field(key, "columns")
    if d.template is not None:
        check_template(d.template, d.inputs, "template")
    for lang, spec in d.languages.items():
        where = f"languages.{lang}"
        if not _NAME.fullmatch(str(lang)):
            raise ConfigError(
                f"{where}: {lang!r} is not a language code; use lower-case letters, e.g. en, ko, de"
            )
        if spec.max_length is not None and spec.max_length < 8:
            raise ConfigError(f"{where}.max_length: must be ≥ 8 tokens, got {spec.max_length}")
        if spec.template is not None:
            check_template(spec.template, d.inputs, f"{where}.template")
        labels = d.labels_of(lang)
        if d.kind == "classification":
            _check_labels(d, lang, labels, where)
        elif spec.label_words or spec.labels:
            raise ConfigError(f"{where}: a generation task has no labels or label words")
        if metric in GENERATION_METRICS and lang not in ("en", "ko"):
            raise ConfigError(
                f"{where}: metric {metric!r} is implemented for English and Korean (en, ko); "
                f"{lang!r} is neither"
            )
        _check_data(spec, where)


def check_template(template: str, inputs: tuple[str, ...], path: str) -> None:
    """Every slot of ``template`` names one of ``inputs`` (or ``input1``, ``input2``…), once,
    and every input has a slot; else ``ConfigError`` naming ``path``."""
    names = template_fields(template, path)
    allowed = set(inputs) | {f"input{i}" for i in range(1, len(inputs) + 1)}
    for name in names:
        if name not in allowed:
            slots = ", ".join("{" + n + "}" for n in inputs)
            raise ConfigError(f"{path}: {{{name}}} is not an input; use {slots}")
    if len(names) != len(set(names)):
        raise ConfigError(f"{path}: each input may appear once")
    named = {n if n in inputs else inputs[int(n[5:]) - 1] for n in names}
    missing = [n for n in inputs if n not in named]
    if missing:
        raise ConfigError(f"{path}: the template leaves out input(s) {missing}")


def _check_labels(d: TaskDefinition, lang: str, labels: tuple[str, ...], where: str) -> None:
    spec = d.languages[lang]
    if len(labels) < 2:
        raise ConfigError(
            f"labels: a classification task needs two or more labels ({where} has {list(labels)})"
        )
    if len(set(labels)) != len(labels) or any(not str(lab).strip() for lab in labels):
        raise ConfigError(f"labels: labels must be distinct non-empty names, got {list(labels)}")
    words = dict(spec.label_words or {})
    unknown = [k for k in words if k not in labels]
    if unknown:
        raise ConfigError(
            f"{where}.label_words.{unknown[0]}: not a label; labels: {', '.join(labels)}"
        )
    if spec.label_words is not None and len(words) != len(labels):
        missing = [lab for lab in labels if lab not in words]
        raise ConfigError(
            f"{where}.label_words: no word for label(s) {missing}; give every label a word "
            "(or leave label_words out to use the labels themselves)"
        )
    resolved = d.label_words_of(lang)
    empty = [lab for lab, w in resolved.items() if not w.strip()]
    if empty:
        raise ConfigError(f"{where}.label_words.{empty[0]}: an empty label word")
    folded = [w.strip().casefold() for w in resolved.values()]
    if len(set(folded)) != len(folded):
        raise ConfigError(
            f"{where}.label_words: two labels share a word ({', '.join(resolved.values())}); "
            "each label needs its own word"
        )
    if d.positive_label is not None and d.positive_label not in labels:
        raise ConfigError(
            f"positive_label: {d.positive_label!r} is not a label of {lang}; labels: "
            f"{', '.join(labels)}"
        )
    if d.main_metric == "binary_f1" and (len(labels) != 2 or d.positive_label is None):
        raise ConfigError(
            "metric: binary_f1 needs two labels and positive_label (the class whose F1 is "
            "scored); or use macro_f1 or mcc"
        )


def _check_column_field(key: str, path: str) -> None:
    from promptatlas.tasks.files import FIELDS

    if key not in FIELDS:
        raise ConfigError(
            f"{path}.{key}: unknown field; map these fields to your columns: {', '.join(FIELDS)}"
        )


def _check_data(spec: LanguageSpec, where: str) -> None:
    for split, data in spec.data.items():
        path = f"{where}.data.{split}"
        if split not in SPLITS:
            raise ConfigError(f"{path}: unknown split; use {', '.join(SPLITS)}")
        if not data.file.strip():
            raise ConfigError(f"{path}.file: give the data file's path")
        for key in data.columns:
            _check_column_field(key, f"{path}.columns")
        if data.delimiter is not None and len(data.delimiter) != 1:
            raise ConfigError(
                f'{path}.delimiter: one character, got {data.delimiter!r} (a tab is "\\t")'
            )
        if data.format == "examples" and data.columns:
            raise ConfigError(f"{path}.columns: the examples format has fixed fields; drop it")
    have = set(spec.data)
    for split, carve in spec.carve.items():
        path = f"{where}.carve.{split}"
        if split not in SPLITS:
            raise ConfigError(f"{path}: unknown split; use {', '.join(SPLITS)}")
        if split in spec.data:
            raise ConfigError(f"{path}: split {split} already has a data file; carve it or not")
        if carve.from_split not in have:
            raise ConfigError(
                f"{path}.from_split: split {carve.from_split} has no data (yet); carve from a "
                "split with a data file or one carved above it"
            )
        if not 0.0 < carve.fraction < 1.0:
            raise ConfigError(f"{path}.fraction: a fraction in (0, 1), got {carve.fraction}")
        have.add(split)
    if not have:
        raise ConfigError(f"{where}.data: no data files; give at least test: {{file: …}}")
