"""``load_split``: the bundled sample (default) or the full original files.

The bundled sample lives in ``promptatlas/tasks/data/{task}-{lang}/{split}.jsonl`` (one
:class:`~promptatlas.tasks.specs.Example` per line, written by ``scripts/build_samples.py``). It
is a deterministic subset of what ``load_split(..., data_dir=<shared data>)`` returns: at most
:data:`SAMPLE_LIMITS` examples per split (QA: :data:`SAMPLE_LIMITS_BY_TASK`), class-balanced
(``random.Random(42)``), in source order.
"""

from __future__ import annotations

from pathlib import Path

from promptatlas.tasks.carve import sample
from promptatlas.tasks.errors import DataError
from promptatlas.tasks.registry import load_task_split
from promptatlas.tasks.specs import Example, Split, TaskVariant, check_split, get_task

SAMPLE_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_LIMITS: dict[str, int] = {"train": 2000, "dev": 500, "test": 500}
# QA lines carry their whole context (~1-3 KB each); half-size QA samples keep the package small.
SAMPLE_LIMITS_BY_TASK: dict[str, dict[str, int]] = {"qa": {"train": 1000, "dev": 250, "test": 250}}


def sample_limit(task: TaskVariant, split: str) -> int:
    """Maximum number of examples of ``task``'s ``split`` in the bundled sample."""
    return SAMPLE_LIMITS_BY_TASK.get(task.spec.name, SAMPLE_LIMITS)[split]


def sample_path(task: TaskVariant, split: str) -> Path:
    """Where the bundled sample of ``task``'s ``split`` is stored."""
    return SAMPLE_DIR / task.name / f"{split}.jsonl"


def sample_split(task: TaskVariant, split: str, examples: list[Example]) -> list[Example]:
    """The bundled-sample subset of a full split (class-balanced for classification)."""
    limit = sample_limit(task, split)
    if task.spec.kind == "classification":
        return sample(examples, limit, key=lambda e: e.label or "", classes=task.labels)
    return sample(examples, limit)


def load_split(
    task: str,
    lang: str,
    split: Split,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> list[Example]:
    """Examples of one split of ``task`` (a name or a task file) in ``lang``.

    Built-in tasks: ``data_dir=None`` reads the bundled sample; otherwise ``data_dir`` is a
    folder laid out like the shared data (``en/sst2/...``, ``ko/nsmc/...``) and the original files
    are parsed at full size, with the same deterministic carving the sample builder uses. Task
    files: the split's data file (``data_dir`` replaces the task file's folder for relative
    paths). ``limit`` keeps the first ``limit`` examples (files are in source order, which is
    already mixed).
    """
    variant = get_task(task, lang)
    split = check_split(split)
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0 or None, got {limit}")
    examples = load_task_split(variant, split, data_dir=data_dir)
    return examples if limit is None else examples[:limit]
