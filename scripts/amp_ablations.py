"""AMP's ablations (spec composition.md §C) on the task prompts of a bank, over several seeds.

Every variant of :func:`promptatlas.compose.amp_ablations` except ``k=d`` (the same run as
``dam`` here, whose k is d) is trained with the CPU-sized AMP settings (``CPU_AMP``: 60 steps of
batch 8, lr 1e-3, constant, no warm-up) on the bank's prompts of one language, one composition
run per variant and seed (``<out>/<variant>-s<seed>/``, the folder ``promptatlas compose amp``
writes). The summary (``<out>/ablations.md`` and ``ablations.csv``) gives per target and
variant the mean ± std over seeds with each seed's score, the paired difference variant − dam
on the same test examples with its 95% bootstrap interval per seed (``*`` where it excludes 0),
and where each run's attention went (the largest weight of each target's row).

The bank used in docs/composition.md is the source prompts of ``configs/compose-table.yaml``
(``results/compose-table/bank``; with ``compose.methods: []`` and ``ipt`` removed, that file
trains only them, about 4 minutes per language on a 2-core CPU):

    .venv/bin/python scripts/amp_ablations.py --bank results/compose-table/bank --lang en \\
        --tasks sa,nli --seeds 42,43 --test-limit 200 --out results/amp-ablations

Resumable: a variant and seed whose run folder is complete is read back, not rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

VARIANTS = ("dam", "max-pool", "k64", "k256", "value-identity")


def _amp_config(args: argparse.Namespace, variant: str) -> Any:
    """The variant's AMP settings: ``CPU_AMP`` with --steps / --lr where given."""
    from promptatlas.compose import amp_ablations
    from promptatlas.runs.compose import CPU_AMP

    base = dataclasses.replace(
        CPU_AMP,
        steps=CPU_AMP.steps if args.steps is None else args.steps,
        lr=CPU_AMP.lr if args.lr is None else args.lr,
    )
    return amp_ablations(base)[variant]


def _run(args: argparse.Namespace, variant: str, seed: int, handle: Any, db: Any) -> None:
    from promptatlas.runs.compose import ComposeRunConfig, compose_run

    folder = Path(args.out) / f"{variant}-s{seed}"
    if (folder / "run.json").exists():
        return
    cfg = ComposeRunConfig(
        method="amp",
        sources=args.bank,
        tasks=tuple(args.tasks.split(",")),
        lang=args.lang,
        amp=_amp_config(args, variant),
        dev_limit=args.dev_limit,
        test_limit=args.test_limit,
        seed=seed,
    )
    started = time.perf_counter()
    result = compose_run(cfg, folder, handle=handle, db=db, overwrite=True)
    scores = ", ".join(f"{s.key} {100 * s.score:.1f}" for s in result.scores)
    print(f"{variant} seed {seed}: {scores} ({time.perf_counter() - started:.0f} s)", flush=True)


def _read_run(folder: Path, keys: list[str], seed: int) -> dict[str, Any]:
    """A finished run: per target its score row, per-example data and attention row (both
    from the composed prompt's metadata), and the run's seconds."""
    from promptatlas.bank import read_metadata
    from promptatlas.evaluation.evaluate import stored_examples

    data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    scores = {f"{s['task']}-{s['lang']}": s for s in data["scores"]}
    targets = {}
    for key in keys:
        meta = read_metadata(folder / "prompts" / f"{key}-amp-s{seed}")
        row = meta.extra["compose"]["attention"]
        source = max(row, key=row.__getitem__)
        targets[key] = {
            "score": scores[key],
            "examples": stored_examples(meta.metrics.get("test")),
            "attention": (source, row[source]),
        }
    return {"targets": targets, "seconds": data["seconds"]}


def _summary(args: argparse.Namespace, seeds: list[int]) -> None:
    from promptatlas.evaluation.confidence import paired_bootstrap, seed_summary
    from promptatlas.io import write_csv_atomic, write_text_atomic

    out = Path(args.out)
    keys = [f"{t}-{args.lang}" for t in args.tasks.split(",")]
    runs = {
        (variant, seed): _read_run(out / f"{variant}-s{seed}", keys, seed)
        for variant in args.variants
        for seed in seeds
        if (out / f"{variant}-s{seed}" / "run.json").exists()
    }
    if not runs:
        raise ValueError(f"{out} holds no finished ablation run; run without --summary first")
    amp = _amp_config(args, "dam")
    lines = [
        f"AMP ablations on {args.bank} ({args.lang}; seeds {', '.join(map(str, seeds))}; "
        f"{amp.steps} steps at lr {amp.lr}; {args.test_limit or 'all'} test examples). "
        "Scores ×100; per seed: score, and variant − dam with its paired 95% interval "
        "(* excludes 0); attention: the largest weight of the target's row and its source.",
        "",
        "| target | variant | mean ± std | per seed: score (− dam [95% CI]) | attention | s/run |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for key in keys:
        for variant in args.variants:
            done = [s for s in seeds if (variant, s) in runs]
            if not done:
                continue
            values, cells, att = [], [], []
            for seed in done:
                target = runs[(variant, seed)]["targets"][key]
                s = target["score"]
                values.append(100 * s["score"])
                cell = f"{100 * s['score']:.1f}"
                diff = None
                dam = runs.get(("dam", seed))
                if variant != "dam" and dam is not None:
                    a, b = target["examples"], dam["targets"][key]["examples"]
                    if a is not None and b is not None:
                        diff = paired_bootstrap(a, b)
                        cell += f" ({diff.format(signed=True)})"
                cells.append(cell)
                source, weight = target["attention"]
                att.append(f"{source} {weight:.2f}")
                rows.append(
                    [key, variant, seed, s["score"], s["low"], s["high"]]
                    + ([diff.value, diff.low, diff.high] if diff else ["", "", ""])
                )
            summ = seed_summary(values)
            secs = sum(runs[(variant, s)]["seconds"] for s in done) / len(done)
            lines.append(
                f"| {key} | {variant} | {summ.mean:.1f} ± {summ.std:.1f} | {'; '.join(cells)} "
                f"| {'; '.join(att)} | {secs:.0f} |"
            )
    write_text_atomic(out / "ablations.md", "\n".join(lines) + "\n")
    header = ["target", "variant", "seed", "score", "low", "high", "minus_dam", "d_low", "d_high"]
    write_csv_atomic(out / "ablations.csv", header, rows)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from promptatlas.cli import _describe, _user_errors

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bank", required=True, help="a bank folder of task prompts")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--tasks", default="sa,nli", help="target tasks, comma-separated")
    parser.add_argument("--seeds", default="42,43", help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {VARIANTS}")
    parser.add_argument("--steps", type=int, default=None, help="default: CPU_AMP's")
    parser.add_argument("--lr", type=float, default=None, help="default: CPU_AMP's")
    parser.add_argument("--dev-limit", type=int, default=64)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary", action="store_true", help="only write the summary")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    try:
        if not args.summary:
            from promptatlas.bank import ResultsDB
            from promptatlas.models import load_model
            from promptatlas.runs.compose import bank_inputs

            model, _ = bank_inputs(args.bank, langs=[args.lang])
            handle = load_model(model)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            db = ResultsDB(Path(args.out) / "results.sqlite")
            for seed in seeds:  # every variant of a seed before the next seed
                for variant in args.variants:
                    _run(args, variant, seed, handle, db)
        _summary(args, seeds)
    except _user_errors() as exc:
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
