"""The two cross-model projectors (SPEC B5) on the same prompts, SmolLM2-135M → Gemma-3-270M.

1. Task prompts on each model: v1, 20 positions, 30 steps of batch 8, seed 42, input format
   ``x "\\n" y`` (max 64 tokens), 200 test examples, the untrained prompt scored too
   (``<out>/bank-smol``, ``<out>/bank-gemma``), for SA, NLI, TC and STS in English.
2. Projectors (a 2-layer tanh MLP per position, ``ProjectConfig``), each applied zero-shot to the
   SmolLM2 prompts and evaluated on Gemma (``<out>/proj/<name>``):
   * ``task``: trained with SA's task loss through the frozen Gemma (100 steps, lr 1e-3);
   * ``dist-sa``: distance-minimised on the SA pair only (the information ``task`` gets);
   * ``dist-loo-<t>``: distance-minimised on the three pairs other than t, applied to t.
3. ``--summary``: every projected prompt's Gemma score beside Gemma's own and untrained prompt,
   with paired 95% bootstrap intervals (projected − untrained, task − distance).

    .venv/bin/python scripts/compare_projectors.py --out results/projector
    .venv/bin/python scripts/compare_projectors.py --out results/projector --summary

Resumable: finished prompts and projectors are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

TASKS = ("sa", "nli", "tc", "sts")
SOURCE, TARGET = "smollm2-135m", "gemma-3-270m"


def _train_prompts(out: Path, handles: dict[str, Any], db: Any) -> None:
    from promptatlas.evaluation.evaluate import EvalConfig
    from promptatlas.formatting import FormatConfig
    from promptatlas.prompts import PromptConfig
    from promptatlas.runs.train import RunConfig, train_run
    from promptatlas.training import TrainConfig

    for model, bank in ((SOURCE, "bank-smol"), (TARGET, "bank-gemma")):
        for task in TASKS:
            folder = out / bank / f"{task}-en-v1-s42"
            if (folder / "prompt.json").exists():
                continue
            cfg = RunConfig(
                task=task,
                lang="en",
                model=model,
                prompt=PromptConfig(method="v1", length=20),
                train=TrainConfig(steps=30, batch_size=8, seed=42),
                eval=EvalConfig(batch_size=32),
                format=FormatConfig(separator="\n", max_length=64),
                dev_limit=64,
                test_limit=200,
                baseline=True,
            )
            started = time.time()
            r = train_run(cfg, folder, handle=handles[model], db=db, progress=False)
            untrained = r.untrained.score if r.untrained else float("nan")
            print(
                f"{model} {task}: untrained {100 * untrained:.1f}, trained "
                f"{100 * r.trained.score:.1f} ({time.time() - started:.0f} s)",
                flush=True,
            )


def _projectors(out: Path) -> dict[str, dict[str, Any]]:
    def source(task: str) -> str:
        return str(out / "bank-smol" / f"{task}-en-v1-s42")

    others = TASKS[1:]
    runs: dict[str, dict[str, Any]] = {
        "task": {"objective": "task", "fit": [], "apply": [source(t) for t in others]},
        "dist-sa": {"objective": "distance", "fit": [], "apply": [source(t) for t in others]},
    }
    for held in others:
        runs[f"dist-loo-{held}"] = {
            "objective": "distance",
            "fit": [source(t) for t in others if t != held],
            "apply": [source(held)],
        }
    return runs


def _run_projectors(out: Path, handles: dict[str, Any], db: Any) -> None:
    from promptatlas.runs.crossmodel import ProjectConfig, project_across_models
    from promptatlas.training import TrainConfig

    for name, spec in _projectors(out).items():
        folder = out / "proj" / name
        if (folder / "summary.json").exists():
            continue
        extra: dict[str, Any]
        if spec["objective"] == "distance":
            extra = {
                "target_bank": str(out / "bank-gemma"),
                "fit": tuple(spec["fit"]),
                "train": TrainConfig(steps=500, lr=1e-3, warmup=0.1, seed=42),
            }
        else:
            extra = {"train": TrainConfig(steps=100, batch_size=8, lr=1e-3, warmup=0.1, seed=42)}
        cfg = ProjectConfig(
            source_model=SOURCE,
            target_model=TARGET,
            source_prompt=str(out / "bank-smol" / "sa-en-v1-s42"),
            apply=tuple(spec["apply"]),
            objective=spec["objective"],
            test_limit=200,
            **extra,
        )
        started = time.time()
        summary = project_across_models(
            cfg,
            folder,
            source_handle=handles[SOURCE],
            target_handle=handles[TARGET],
            db=db,
            progress=False,
            overwrite=True,
        )
        print(
            f"{name}: projector {summary['projector_seconds']:.0f} s, "
            f"total {time.time() - started:.0f} s",
            flush=True,
        )


def summarise(out: Path) -> list[dict[str, Any]]:
    """One row per (projector, projected prompt): Gemma score with its interval, Gemma's own
    and untrained prompt, paired differences (projected − untrained, task − distance)."""
    from promptatlas.bank import read_metadata
    from promptatlas.evaluation.evaluate import paired_gain, stored_examples

    def test(folder: Path, split: str = "test") -> dict[str, Any]:
        return dict(read_metadata(folder).metrics.get(split) or {})

    rows: list[dict[str, Any]] = []
    projected: dict[tuple[str, str], dict[str, Any]] = {}
    for name in _projectors(out):
        summary = json.loads((out / "proj" / name / "summary.json").read_text())
        for r in summary["rows"]:
            projected[(name, r["task"])] = test(Path(r["projected_dir"]))
    for (name, task), got in projected.items():
        own_dir = out / "bank-gemma" / f"{task}-en-v1-s42"
        own, untrained = test(own_dir), test(own_dir, "untrained_test")
        smol = test(out / "bank-smol" / f"{task}-en-v1-s42")
        ex = stored_examples(got)
        row = {
            "projector": name,
            "task": task,
            "smol_own": smol.get("score"),
            "projected": got.get("score"),
            "projected_ci": got.get("ci"),
            "gemma_untrained": untrained.get("score"),
            "gemma_own": own.get("score"),
            "vs_untrained": paired_gain(ex, stored_examples(untrained)),
            "vs_own": paired_gain(ex, stored_examples(own)),
        }
        if name != "task" and ("task", task) in projected:
            row["task_minus_this"] = paired_gain(stored_examples(projected[("task", task)]), ex)
        rows.append(row)
    return rows


def _print(rows: list[dict[str, Any]]) -> None:
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}"

    def gain(g: dict[str, Any] | None) -> str:
        if not g:
            return "—"
        star = "*" if g["significant"] else ""
        return f"{100 * g['value']:+.1f}{star} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"

    print("| projector | task | SmolLM2 prompt | projected on Gemma | Gemma untrained | Gemma own "
          "| projected − untrained | task − this |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ci = r["projected_ci"] or [None, None]
        print(
            f"| {r['projector']} | {r['task']} | {pct(r['smol_own'])} | {pct(r['projected'])} "
            f"[{pct(ci[0])}, {pct(ci[1])}] | {pct(r['gemma_untrained'])} | {pct(r['gemma_own'])} "
            f"| {gain(r['vs_untrained'])} | {gain(r.get('task_minus_this'))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/projector"))
    parser.add_argument("--summary", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    if not args.summary:
        from promptatlas.bank import ResultsDB
        from promptatlas.models import load_model

        handles = {SOURCE: load_model(SOURCE), TARGET: load_model(TARGET)}
        with ResultsDB(str(args.out / "results.sqlite")) as db:
            _train_prompts(args.out, handles, db)
            _run_projectors(args.out, handles, db)
    rows = summarise(args.out)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1))
    _print(rows)


if __name__ == "__main__":
    main()
