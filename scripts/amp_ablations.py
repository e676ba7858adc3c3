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
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

VARIANTS = ("dam", "max-pool", "k64", "k256", "value-identity")


def _run(args: argparse.Namespace, variant: str, seed: int, handle: Any, db: Any) -> Path:
    from promptatlas.compose import amp_ablations
    from promptatlas.runs.compose import CPU_AMP, ComposeRunConfig, compose_run

    folder = Path(args.out) / f"{variant}-s{seed}"
    if (folder / "run.json").exists():
        return folder
    amp = amp_ablations(dataclasses.replace(CPU_AMP, steps=args.steps, lr=args.lr))[variant]
    cfg = ComposeRunConfig(
        method="amp",
        sources=args.bank,
        tasks=tuple(args.tasks.split(",")),
        lang=args.lang,
        amp=amp,
        dev_limit=args.dev_limit,
        test_limit=args.test_limit,
        seed=seed,
    )
    started = time.perf_counter()
    result = compose_run(cfg, folder, handle=handle, db=db, overwrite=True)
    scores = ", ".join(f"{s.key} {100 * s.score:.1f}" for s in result.scores)
    print(f"{variant} seed {seed}: {scores} ({time.perf_counter() - started:.0f} s)", flush=True)
    return folder


def _examples(folder: Path, key: str, seed: int) -> Any:
    from promptatlas.bank import read_metadata
    from promptatlas.evaluation.evaluate import stored_examples

    meta = read_metadata(folder / "prompts" / f"{key}-amp-s{seed}")
    return stored_examples(meta.metrics.get("test"))


def _attention(folder: Path) -> dict[str, tuple[str, float]]:
    """Per target row: the source with the largest weight and that weight."""
    with open(folder / "attention.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header = rows[0][1:]
    out = {}
    for row in rows[1:]:
        weights = [float(v) for v in row[1:]]
        best = max(range(len(weights)), key=weights.__getitem__)
        out[row[0]] = (header[best], weights[best])
    return out


def _summary(args: argparse.Namespace, seeds: list[int]) -> None:
    from promptatlas.evaluation.confidence import paired_bootstrap, seed_summary

    out = Path(args.out)
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for variant in args.variants:
        for seed in seeds:
            folder = out / f"{variant}-s{seed}"
            if (folder / "run.json").exists():
                data = json.loads((folder / "run.json").read_text(encoding="utf-8"))
                runs[(variant, seed)] = {
                    "folder": folder,
                    "scores": {f"{s['task']}-{s['lang']}": s for s in data["scores"]},
                    "seconds": data["seconds"],
                    "attention": _attention(folder),
                }
    keys = [f"{t}-{args.lang}" for t in args.tasks.split(",")]
    lines = [
        f"AMP ablations on {args.bank} ({args.lang}; seeds {', '.join(map(str, seeds))}; "
        f"{args.steps} steps at lr {args.lr}; {args.test_limit or 'all'} test examples). "
        "Scores ×100; per seed: score, and variant − dam with its paired 95% interval "
        "(* excludes 0); attention: the largest weight of the target's row and its source.",
        "",
        "| target | variant | mean ± std | per seed: score (− dam [95% CI]) | attention | s/run |",
        "|---|---|---|---|---|---|",
    ]
    rows = [["target", "variant", "seed", "score", "low", "high", "minus_dam", "d_low", "d_high"]]
    for key in keys:
        for variant in args.variants:
            done = [s for s in seeds if (variant, s) in runs]
            if not done:
                continue
            values, cells, att = [], [], []
            for seed in done:
                run = runs[(variant, seed)]
                s = run["scores"][key]
                values.append(100 * s["score"])
                cell = f"{100 * s['score']:.1f}"
                diff = None
                if variant != "dam" and ("dam", seed) in runs:
                    a = _examples(run["folder"], key, seed)
                    b = _examples(runs[("dam", seed)]["folder"], key, seed)
                    if a is not None and b is not None:
                        diff = paired_bootstrap(a, b)
                        cell += f" ({diff.format(signed=True)})"
                cells.append(cell)
                source, weight = run["attention"][key]
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
    (out / "ablations.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / "ablations.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bank", required=True, help="a bank folder of task prompts")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--tasks", default="sa,nli", help="target tasks, comma-separated")
    parser.add_argument("--seeds", default="42,43", help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"from {VARIANTS}")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--dev-limit", type=int, default=64)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--out", required=True)
    parser.add_argument("--summary", action="store_true", help="only write the summary")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
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


if __name__ == "__main__":
    main()
