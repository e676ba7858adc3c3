"""Task objects: :class:`Example`, :class:`TaskSpec` and :class:`TaskVariant` (SPEC §2).

A :class:`TaskSpec` is language-independent (what is computed and how it is scored); a
:class:`TaskVariant` is that task in one language with its data source, label words
(verbalizers, thesis Appendix Tables 4-5) and input token budget (thesis Table 6).

Tasks are defined by task files (:mod:`promptatlas.tasks.taskfile`): the six tasks of the thesis
in English and Korean are shipped in ``promptatlas/tasks/defs/``; a user's own file works the same
way (:mod:`promptatlas.tasks.registry`).

Label order. ``TaskVariant.labels`` is the order used when a label is given as an integer index
(``load_file``/``load_hf_dataset``). It follows the Hugging Face datasets' ``ClassLabel`` order of
the source sets, so integer labels from those sets map correctly without a column remap:

========  ===========================================================================
sts       different=0, similar=1 (KLUE-STS ``binary-label``)
nli       entailment=0, neutral=1, contradiction=2 (SNLI, XNLI, KLUE-NLI)
sa        negative=0, positive=1 (SST-2, NSMC)
tc-en     world=0, sports=1, business=2, scitech=3 (``ag_news``; the CSV's 1-4 minus one)
tc-ko     itscience=0, economy=1, society=2, culture=3, world=4, sports=5, politics=6
          (``klue``/``ynat``)
========  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from promptatlas.tasks.errors import DataError

TaskKind = Literal["classification", "generation"]
Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
LANGS: tuple[str, ...] = ("en", "ko")


@dataclass(frozen=True)
class Example:
    """One task instance in the unified text-to-text format (SPEC §2).

    ``inputs`` holds one text (single-input task) or two (pair task). QA: ``(context, question)``;
    CG: ``(concepts joined by " ",)``. ``target`` is what the model must produce: the gold
    verbalizer word (classification) or the target text (QA answer, CG sentence).
    """

    inputs: tuple[str, ...]
    target: str
    label: str | None = None
    references: tuple[str, ...] = ()
    concepts: tuple[str, ...] = ()
    uid: str = ""

    def __post_init__(self) -> None:
        # Callers often build examples from JSON lists; store tuples so examples stay hashable.
        for name in ("inputs", "references", "concepts"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class TaskSpec:
    """A task independent of language: its kind, number of inputs and main metric."""

    name: str
    kind: TaskKind
    n_inputs: int
    metric: str
    description: str


@dataclass(frozen=True)
class TaskVariant:
    """A task in one language with its data source and label words."""

    spec: TaskSpec
    lang: str
    dataset: str
    labels: tuple[str, ...]
    # hash=False: a Mapping is unhashable, but variants are used as dict keys elsewhere.
    verbalizers: Mapping[str, str] = field(hash=False)
    positive_label: str | None
    max_length: int
    official_split: bool
    source: str
    licence: str
    # Names of the input fields (default column names in user files), and the optional text
    # put before the inputs (instruction) or around them (template, with {field} slots).
    inputs: tuple[str, ...] = ()
    instruction: str | None = None
    template: str | None = None

    @property
    def name(self) -> str:
        return f"{self.spec.name}-{self.lang}"

    def label_of_word(self, word: str) -> str:
        """Inverse verbalizer: the label key whose label word is ``word``.

        Surrounding whitespace is ignored and, failing an exact match, case is too (English
        label words are lower-case but generated text may not be).
        """
        text = word.strip()
        for key, w in self.verbalizers.items():
            if w == text:
                return key
        folded = text.casefold()
        for key, w in self.verbalizers.items():
            if w.casefold() == folded:
                return key
        valid = ", ".join(repr(w) for w in self.verbalizers.values())
        raise DataError(
            f"{word!r} is not a label word of task {self.name}; expected one of {valid}"
        )


class FrozenMap(Mapping[str, str]):
    """A read-only, hashable and picklable str -> str mapping (``MappingProxyType`` cannot be
    pickled, and variants travel to DataLoader workers)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


# The registry (tasks/registry.py, which builds on this module) binds itself here when the
# package is imported, so names resolve without this module importing it back.
_registry: Any = None


def bind_registry(registry: Any) -> None:
    """Called once by :mod:`promptatlas.tasks.registry`: the resolver behind :func:`get_task`."""
    global _registry
    _registry = registry


def list_tasks() -> list[TaskVariant]:
    """Every built-in task/language pair, in a fixed order (task, then language)."""
    return list(_registry.builtin_variants().values())


def get_task(task: str, lang: str) -> TaskVariant:
    """The variant of ``task`` in ``lang``: a built-in task, a task registered from a task file
    or prompt metadata, or a task file path (``my-task.yaml``, read and registered).
    :class:`UnknownTaskError` lists the valid names."""
    result: TaskVariant = _registry.resolve_task(task, lang)
    return result


# TASKS (built-in task name → spec) and VARIANTS ("sa-en" → variant) are read from the shipped
# task files on first use (module __getattr__ below).
TASKS: Mapping[str, TaskSpec]
VARIANTS: Mapping[str, TaskVariant]


def __getattr__(name: str) -> object:
    if name in ("TASKS", "VARIANTS"):
        if name == "TASKS":
            return _registry.BUILTIN_SPECS()
        return _registry.builtin_variants()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_split(split: str) -> Split:
    """Validate a split name (the public API is typed, but names often come from configs)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def validate_example(ex: Example, task: TaskVariant, loc: str) -> Example:
    """Check an example against its task; raise :class:`DataError` naming ``loc`` if invalid."""
    spec = task.spec
    if len(ex.inputs) != spec.n_inputs:
        raise DataError(
            f"{loc}: task {task.name} needs {spec.n_inputs} input text(s), got {len(ex.inputs)}"
        )
    for i, text in enumerate(ex.inputs, 1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{loc}: input {i} is empty or not a string; every input needs text")
    if spec.kind == "classification":
        if ex.label not in task.labels:
            raise DataError(
                f"{loc}: unknown label {ex.label!r} for task {task.name}; "
                f"use one of {', '.join(task.labels)}"
            )
        if ex.target != task.verbalizers[ex.label]:
            raise DataError(
                f"{loc}: target {ex.target!r} is not the label word "
                f"{task.verbalizers[ex.label]!r} of label {ex.label!r}"
            )
        if ex.references or ex.concepts:
            raise DataError(f"{loc}: classification examples take no references or concepts")
    else:
        if ex.label is not None:
            raise DataError(f"{loc}: generation task {task.name} takes no label")
        if not ex.target.strip():
            raise DataError(f"{loc}: empty target; a generation example needs its target text")
        if not ex.references or any(not r.strip() for r in ex.references):
            raise DataError(f"{loc}: generation examples need non-empty references")
        if spec.metric == "coverage" and (
            not ex.concepts or any(not c.strip() for c in ex.concepts)
        ):
            raise DataError(f"{loc}: CG examples need their non-empty concepts")
    return ex
