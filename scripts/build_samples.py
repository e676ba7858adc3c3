"""Build the bundled task samples from the original data files.

Usage (from the repository root)::

    .venv/bin/python scripts/build_samples.py [DATA_DIR]

DATA_DIR defaults to ``../shared/data`` relative to the repository. For every task/language pair
the full splits are parsed with ``promptatlas.tasks.sources.load_source`` (the same code and
carving as ``load_split(..., data_dir=...)``), sampled deterministically (at most 2000 train /
500 dev / 500 test, QA half that, class-balanced, ``random.Random(42)``) and written to
``src/promptatlas/tasks/data/{task}-{lang}/{split}.jsonl``, plus ``SOURCES.md`` with provenance,
licences and sizes. Running it twice gives identical files.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from promptatlas.tasks.files import write_examples
from promptatlas.tasks.loaders import (
    SAMPLE_DIR,
    SAMPLE_LIMITS,
    SAMPLE_LIMITS_BY_TASK,
    sample_path,
    sample_split,
)
from promptatlas.tasks.sources import load_source
from promptatlas.tasks.specs import SPLITS, Split, TaskVariant, list_tasks

REPO = Path(__file__).resolve().parents[1]

# The original files' sizes (from the shared data README, checked by tests/test_tasks.py) and
# how our splits are made from them; SOURCES.md repeats this for users of the bundled sample.
ORIGINAL: dict[str, tuple[str, str]] = {
    "sts-en": (
        "STS-B CSV train/dev/test 5,749 / 1,500 / 1,379 pairs",
        "official splits; score = 3 dropped (315 / 86 / 87)",
    ),
    "sts-ko": (
        "KorSTS TSV train/dev/test 5,749 / 1,500 / 1,379 pairs",
        "official splits; score = 3 dropped (315 / 86 / 87)",
    ),
    "nli-en": (
        "SNLI 1.0 gold dev 9,842 / test 9,824 (e-SNLI line files); no train",
        "dev official; official test halved (stratified) into train and test",
    ),
    "nli-ko": (
        "KorNLI XNLI-ko dev 2,490 / test 5,010; no train",
        "dev official; official test halved (stratified) into train and test",
    ),
    "sa-en": ("SST-2 train/dev/test 67,349 / 872 / 1,821 (test labelled)", "official splits"),
    "sa-ko": (
        "NSMC first 5,000 rows of train, first 25,000 rows of test (2 empty documents skipped)",
        "train = train file; dev = 10% of the test file (stratified), test = the rest",
    ),
    "tc-en": (
        "AG News test 7,600; held-out train subset 10,001 (descriptions only)",
        "test official (description as input); train/dev = 90/10 stratified carve of the subset",
    ),
    "tc-ko": (
        "KLUE-YNAT v1.1 train 45,678 / dev 9,107 titles",
        "dev official; test = 10% of the official train (stratified), train = the rest",
    ),
    "qa-en": (
        "SQuAD v1.1 dev: 10,570 questions / 48 articles (parts 1+2)",
        "split by article: 10% test, 10% dev, 80% train (random.Random(42) over titles)",
    ),
    "qa-ko": (
        "KorQuAD 1.0 dev: 5,774 questions / 140 articles",
        "split by article: 10% test, 10% dev, 80% train (random.Random(42) over titles)",
    ),
    "cg-en": (
        "CommonGen train 39,069 sentences / 27,069 sets; dev 993 sets; test 1,497 sets",
        "official splits; train one example per sentence, dev/test one per concept set",
    ),
    "cg-ko": (
        "KommonGen dev 1,000 lines (991 sets); test 1.1 1,432 sets",
        "dev official; test sets halved into train and test",
    ),
}


def _sizes(counts: Mapping[Split, int]) -> str:
    return " / ".join(f"{counts[s]:,}" for s in SPLITS)


def _labels(task: TaskVariant, examples: list[object]) -> str:
    c = Counter(getattr(e, "label", None) for e in examples)
    return ", ".join(f"{task.verbalizers[k]} {c[k]}" for k in task.labels)


def build(data_dir: Path) -> str:
    rows = []
    details = []
    total = 0
    for task in list_tasks():
        full = load_source(task, data_dir)
        sampled = {s: sample_split(task, s, full[s]) for s in SPLITS}
        pair_dir = SAMPLE_DIR / task.name
        for stale in pair_dir.glob("*.jsonl"):
            stale.unlink()
        for s in SPLITS:
            write_examples(sample_path(task, s), sampled[s])
            total += sample_path(task, s).stat().st_size
        full_n = {s: len(full[s]) for s in SPLITS}
        sample_n = {s: len(sampled[s]) for s in SPLITS}
        rows.append(
            f"| {task.name} | {task.dataset} | {'yes' if task.official_split else 'no'} | "
            f"{_sizes(full_n)} | {_sizes(sample_n)} | {task.licence} |"
        )
        original, carving = ORIGINAL[task.name]
        detail = [
            f"### {task.name}: {task.dataset}",
            f"- source: {task.source}",
            f"- licence: {task.licence}",
            f"- original files: {original}",
            f"- our splits: {carving} (official split: {'yes' if task.official_split else 'no'})",
            f"- full split sizes (train / dev / test): {_sizes(full_n)}",
            f"- sample sizes (train / dev / test): {_sizes(sample_n)}",
        ]
        if task.labels:
            for s in SPLITS:
                detail.append(f"- sample {s} labels: {_labels(task, list(sampled[s]))}")
        details.append("\n".join(detail))
        print(f"{task.name}: full {_sizes(full_n)}  sample {_sizes(sample_n)}")
    limits = " / ".join(str(SAMPLE_LIMITS[s]) for s in SPLITS)
    qa_limits = " / ".join(str(SAMPLE_LIMITS_BY_TASK["qa"][s]) for s in SPLITS)
    text = "\n".join(
        [
            "# Bundled task samples: sources and licences",
            "",
            "Written by `scripts/build_samples.py`; do not edit by hand. Each file holds one",
            "example per line (`uid`, `inputs`, `target`, `label`, `references`, `concepts`).",
            f"Samples are at most {limits} examples (train / dev / test; QA {qa_limits}, as",
            "every QA line carries its whole context), drawn with `random.Random(42)`,",
            "class-balanced for classification, kept in source order. The same splits at full",
            "size come from",
            "`load_split(task, lang, split, data_dir=<folder with the original files>)`.",
            "Where the original release has no such split it was carved deterministically",
            "(official split = no). The original datasets' licences apply to these samples.",
            "",
            "| pair | dataset | official split | full train / dev / test | sample train / dev / "
            "test | licence |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            *[d + "\n" for d in details],
        ]
    )
    (SAMPLE_DIR / "SOURCES.md").write_text(text, encoding="utf-8")
    print(f"wrote {total / 1e6:.1f} MB of samples to {SAMPLE_DIR}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data_dir",
        nargs="?",
        default=str(REPO.parent / "shared" / "data"),
        help="folder laid out like the shared data (default: ../shared/data)",
    )
    args = parser.parse_args(argv)
    build(Path(args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
