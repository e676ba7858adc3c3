"""``promptatlas tasks --check my-task.yaml``: load everything a task file names and report it.

Per language: every split's size and label counts, the majority-class baseline of dev and test
(the score of always answering the most frequent label, under the task's metric), and the label
words' token counts under a model's tokenizer, with a warning when they differ (summed scoring
then favours the shortest word; see :mod:`promptatlas.evaluation.scoring`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from promptatlas.evaluation.metrics import majority_baseline
from promptatlas.tasks.registry import load_task_file, load_task_split, registered_definition
from promptatlas.tasks.specs import SPLITS, TaskVariant, get_task
from promptatlas.tasks.taskfile import TaskDefinition, is_task_file

__all__ = ["check_task"]


def check_task(task: str | Path, *, tokenizer: Any = None, data_dir: str | None = None) -> str:
    """The report of a task file or task name (module docstring); raises the first error
    (a missing file, a bad row, a label that is not in the task) as a DataError."""
    definition: TaskDefinition | None
    if is_task_file(str(task)):
        definition = load_task_file(task)
    else:
        definition = registered_definition(str(task))
        if definition is None:
            get_task(str(task), "en")  # raises the unknown-task error with the valid names
            raise AssertionError("unreachable")
    lines = [
        f"task {definition.name}: {definition.kind}, {len(definition.inputs)} input(s) "
        f"({', '.join(definition.inputs)}), metric {definition.main_metric}"
        + (f" (positive label {definition.positive_label})" if definition.positive_label else "")
    ]
    for lang in definition.languages:
        variant = get_task(definition.name, lang)
        lines.append(f"  {variant.name}:")
        for split in SPLITS:
            try:
                examples = load_task_split(variant, split, data_dir=data_dir)
            except Exception as exc:  # a split that is absent is reported, others raise
                if f"has no {split} data" in str(exc):
                    lines.append(f"    {split:5s} —  (none)")
                    continue
                raise
            line = f"    {split:5s} {len(examples):6d} examples"
            if variant.spec.kind == "classification":
                counts = Counter(str(e.label) for e in examples)
                line += ": " + ", ".join(f"{lab} {counts.get(lab, 0)}" for lab in variant.labels)
                if split != "train":
                    label, score = majority_baseline(variant, [str(e.label) for e in examples])
                    line += (
                        f"; majority baseline {100 * score:.1f} "
                        f"({variant.spec.metric}, always {label!r})"
                    )
            lines.append(line)
        if variant.spec.kind == "classification":
            lines.extend(_label_words(variant, tokenizer))
    return "\n".join(lines)


def _label_words(variant: TaskVariant, tokenizer: Any) -> list[str]:
    words = [variant.verbalizers[lab] for lab in variant.labels]
    if tokenizer is None:
        return [f"    label words: {', '.join(repr(w) for w in words)}"]
    from promptatlas.formatting import TaskFormatter

    counts = {
        lab: len(ids) for lab, ids in TaskFormatter(tokenizer, variant).label_token_ids().items()
    }
    shown = ", ".join(
        f"{variant.verbalizers[lab]!r} {counts[lab]} token{'s' if counts[lab] != 1 else ''}"
        for lab in variant.labels
    )
    out = [f"    label words: {shown}"]
    if len(set(counts.values())) > 1:
        out.append(
            "    note: the label words differ in token count; summed rank scoring (the default) "
            "favours the shortest word before training: compare untrained scores with the "
            "majority baseline, or choose one-token label words"
        )
    firsts = Counter(TaskFormatter(tokenizer, variant).label_token_ids()[lab][0] for lab in counts)
    if max(firsts.values()) > 1:
        out.append("    note: two label words share their first token (first-token scoring fails)")
    return out
