"""Predict-only: a stored prompt's answers for the rows of a file, labelled or not.

``promptatlas predict PROMPT --file unlabelled.tsv --out preds.jsonl`` reads the file with the
prompt's own task (from its metadata, so the task file is not needed), predicts every row and
writes one JSON object per row: ``uid``, ``inputs``, ``prediction`` (the label, or the generated
text), ``label_word`` and the per-label ``scores`` (classification), and ``gold`` when the row
has a label. When every row has one, the task's metrics are computed too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptatlas.tasks import Example, TaskVariant, get_task, load_file

__all__ = ["FileOptions", "PredictResult", "file_options", "predict_file"]


@dataclass(frozen=True)
class FileOptions:
    """How to read the file (as a task file's data entry; None = the task's test file's)."""

    columns: Mapping[str, str] = field(default_factory=dict)
    fmt: str | None = None
    delimiter: str | None = None
    quoting: bool | None = None
    header: bool | None = None
    encoding: str | None = None


@dataclass
class PredictResult:
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    metrics: dict[str, float] | None
    task: str
    out: Path | None


def file_options(task: TaskVariant, path: str | Path, given: FileOptions) -> dict[str, Any]:
    """``load_file`` options: ``given`` where set, else those of the task's test data file when
    it has the same format, plus the task's column mapping."""
    from promptatlas.tasks.files import FORMATS
    from promptatlas.tasks.registry import registered_definition

    definition = registered_definition(task.spec.name)
    spec = None
    columns: dict[str, str] = {}
    if definition is not None and task.lang in definition.languages:
        columns.update(definition.columns)
        data = definition.languages[task.lang].data
        spec = data.get("test") or next(iter(data.values()), None)
    suffix = FORMATS.get(Path(path).suffix.lstrip(".").lower())
    fmt = given.fmt or (spec.format if spec is not None and spec.format != "examples" else None)
    same = spec is not None and (
        spec.format == (given.fmt or suffix)
        or (spec.format is None and Path(spec.file).suffix.lower() == Path(path).suffix.lower())
    )
    if fmt is not None and given.fmt is None and not same:
        fmt = None  # the test file is another format: go by this file's suffix
    if spec is not None and same:
        columns.update(spec.columns)
    columns.update(given.columns)

    def pick(name: str, default: Any) -> Any:
        value = getattr(given, name)
        if value is not None:
            return value
        return getattr(spec, name) if spec is not None and same else default

    return {
        "columns": columns,
        "fmt": fmt,
        "delimiter": pick("delimiter", None),
        "quoting": pick("quoting", True),
        "header": pick("header", True),
        "encoding": pick("encoding", "utf-8"),
    }


def predict_file(
    prompt_dir: str | Path,
    path: str | Path,
    *,
    out: str | Path | None = None,
    options: FileOptions | None = None,
    limit: int | None = None,
    handle: Any = None,
    eval_config: Any = None,
    device: str | None = None,
) -> PredictResult:
    """Predict every row of ``path`` with the prompt at ``prompt_dir`` (module docstring);
    writes JSONL to ``out`` when given."""
    from promptatlas.bank import load_prompt, read_metadata
    from promptatlas.evaluation.evaluate import rank_predict
    from promptatlas.evaluation.metrics import compute_metrics
    from promptatlas.evaluation.predict import generate
    from promptatlas.formatting import TaskFormatter
    from promptatlas.io import write_text_atomic
    from promptatlas.models import load_model
    from promptatlas.prompts import PromptedLM
    from promptatlas.prompts.injection import autocast_dtype

    meta = read_metadata(prompt_dir)
    if meta.task is None or meta.lang is None:
        raise ValueError(f"{prompt_dir} is a language prompt; predict with a task prompt")
    task = get_task(meta.task, meta.lang)
    examples = load_file(
        path, task, require_label=False, **file_options(task, path, options or FileOptions())
    )
    if limit is not None:
        examples = examples[:limit]
    handle = handle or load_model(meta.model, device=device)
    stored = load_prompt(prompt_dir, handle)
    formatter = TaskFormatter(handle.tokenizer, task, meta.run.format)
    if eval_config is None:
        eval_config = meta.run.eval
    plm = PromptedLM(
        handle,
        stored.prompt.to(handle.device),
        autocast_dtype=autocast_dtype("auto", handle.device),
    )
    rows: list[dict[str, Any]] = []
    if task.spec.kind == "classification" and eval_config.mode != "generate":
        preds, scores = rank_predict(plm, formatter, examples, eval_config)
        for ex, pred, row_scores in zip(examples, preds, scores.tolist(), strict=True):
            by_label = zip(task.labels, (round(v, 4) for v in row_scores), strict=True)
            rows.append(
                {
                    **_row(ex),
                    "prediction": pred,
                    "label_word": task.verbalizers[pred],
                    "scores": dict(by_label),
                    **({"gold": ex.label} if ex.label is not None else {}),
                }
            )
        outputs = list(preds)
    else:
        texts = generate(
            plm,
            formatter,
            examples,
            max_new_tokens=eval_config.max_new_tokens,
            batch_size=eval_config.batch_size,
        )
        if task.spec.kind == "classification":
            words = {task.verbalizers[lab]: lab for lab in task.labels}
            outputs = [words.get(t.strip(), "<invalid>") for t in texts]
        else:
            outputs = texts
        for ex, text, pred in zip(examples, texts, outputs, strict=True):
            gold = ex.label if task.spec.kind == "classification" else ex.target or None
            rows.append(
                {**_row(ex), "prediction": pred, "text": text, **({"gold": gold} if gold else {})}
            )
    labelled = all(
        (ex.label is not None) if task.spec.kind == "classification" else bool(ex.target)
        for ex in examples
    )
    metrics = compute_metrics(task, outputs, examples) if labelled else None
    counts = dict(Counter(outputs)) if task.spec.kind == "classification" else {}
    target = None
    if out is not None:
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        write_text_atomic(target, text)
    return PredictResult(rows, counts, metrics, task.name, target)


def _row(ex: Example) -> dict[str, Any]:
    return {"uid": ex.uid, "inputs": list(ex.inputs)}
