"""The sweep behind the library's training defaults (``promptatlas.training.defaults``).

For each method, candidate (init, learning rate) settings are trained on a task for a fixed
number of steps with several seeds; the dev score is read every ``--eval-every`` steps on a
fixed dev subset (the untrained prompt is scored too, at step 0). One JSON line per run goes to
``--out`` (resumable: finished runs are skipped), then ``--summary`` prints the table published
in ``docs/defaults.md``.

    .venv/bin/python scripts/sweep_defaults.py --tasks sa-en --out results/sweep/runs.jsonl
    .venv/bin/python scripts/sweep_defaults.py --summary results/sweep/runs.jsonl

Everything runs in float32 on whatever CPU this is (recorded in each line).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

# method → (objective, init, lr): the candidates of the sweep.
CANDIDATES: dict[str, list[tuple[str, str, float]]] = {
    "v1": [
        ("rank", "vocab", 0.03),
        ("rank", "vocab", 0.1),
        ("rank", "vocab", 0.3),
        ("lm", "vocab", 0.03),
        ("rank", "labels", 0.1),
        ("rank", "uniform", 0.1),
    ],
    "v2": [
        ("rank", "vocab", 0.03),
        ("rank", "vocab", 0.1),
        ("rank", "vocab", 0.3),
        ("lm", "vocab", 0.1),
        ("rank", "uniform", 0.03),
        ("rank", "uniform", 0.1),
        ("rank", "uniform", 0.3),
        ("lm", "uniform", 0.03),
    ],
}


def run_one(
    handle: Any,
    task: str,
    lang: str,
    method: str,
    objective: str,
    init: str,
    lr: float,
    seed: int,
    a: Any,
) -> dict[str, Any]:
    from promptatlas.evaluation import EvalConfig, evaluate
    from promptatlas.formatting import FormatConfig, TaskFormatter
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
    from promptatlas.tasks import get_task, load_split
    from promptatlas.training import TrainConfig, train_prompt

    variant = get_task(task, lang)
    fmt = TaskFormatter(
        handle.tokenizer,
        variant,
        FormatConfig(separator=a.separator, template=a.template, target_prefix=a.label_prefix),
    )
    train = load_split(task, lang, "train")
    dev = load_split(task, lang, "dev", limit=a.dev)
    label_ids = [i for ids in fmt.label_token_ids().values() for i in ids]
    prompt = SoftPrompt(PromptConfig(method=method, length=a.length, init=init), handle.geometry)
    prompt.initialise(
        handle, generator=torch.Generator().manual_seed(seed), label_token_ids=label_ids
    )
    plm = PromptedLM(handle, prompt)
    ecfg = EvalConfig(batch_size=32)
    start = evaluate(plm, fmt, dev, ecfg).score
    cfg = TrainConfig(
        steps=a.steps,
        batch_size=a.batch,
        lr=lr,
        warmup=0.1,
        eval_every=a.eval_every,
        dev_limit=a.dev,
        seed=seed,
        checkpoint_every=0,
        objective=objective,  # type: ignore[arg-type]
    )
    t0 = time.perf_counter()
    result = train_prompt(plm, fmt, train, cfg, dev=dev, eval_config=ecfg, progress=False)
    seconds = time.perf_counter() - t0
    curve = [[0, start]] + [[h["step"], h["dev"]] for h in result.history if "dev" in h]
    return {
        "task": task,
        "lang": lang,
        "method": method,
        "objective": objective,
        "init": init,
        "lr": lr,
        "seed": seed,
        "separator": a.separator,
        "template": a.template,
        "steps": a.steps,
        "batch": a.batch,
        "length": a.length,
        "dev_n": len(dev),
        "curve": curve,
        "loss_first": result.history[0]["loss"],
        "loss_last": result.history[-1]["loss"],
        "seconds": seconds,
        "cpu": torch.backends.cpu.get_cpu_capability(),
    }


def summarise(path: Path, target: float | None = None, target_frac: float = 0.9) -> str:
    """Markdown tables per task: untrained, final and best dev score (mean ± std over seeds),
    and the mean step at which the dev score first reaches ``target`` (default: 90% of the best
    mean final score of the task's configurations)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["task"], r["lang"], r["method"], r["objective"], r["init"], r["lr"])
        groups.setdefault(key, []).append(r)
    out = []
    for task_lang in sorted({(k[0], k[1]) for k in groups}):
        sub = {k: v for k, v in groups.items() if (k[0], k[1]) == task_lang}
        best = max(statistics.mean(r["curve"][-1][1] for r in v) for v in sub.values())
        goal = target if target is not None else target_frac * best
        how = "" if target is not None else f" = {target_frac:.0%} of the best mean final score"
        out.append(f"\n### {task_lang[0]}-{task_lang[1]} (target dev score {goal:.3f}{how})\n")
        out.append(
            "| method | objective | init | lr | seeds | untrained | final dev (mean ± std) | "
            "best dev (mean) | steps to target (mean; ∞ = not reached) | s/run (median) |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for key in sorted(sub, key=lambda k: (k[2], k[3], k[4], k[5])):
            v = sub[key]
            finals = [r["curve"][-1][1] for r in v]
            starts = [r["curve"][0][1] for r in v]
            reach = []
            for r in v:
                hit = [s for s, d in r["curve"][1:] if d >= goal]
                reach.append(hit[0] if hit else float("inf"))
            finite = [x for x in reach if x != float("inf")]
            reach_txt = (
                f"{statistics.mean(finite):.0f} ({len(finite)}/{len(reach)} reached)"
                if finite
                else "∞"
            )
            sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
            best_dev = statistics.mean(max(d for _, d in r["curve"][1:]) for r in v)
            out.append(
                f"| {key[2]} | {key[3]} | {key[4]} | {key[5]} | {len(v)} | "
                f"{statistics.mean(starts):.3f} | {statistics.mean(finals):.3f} ± {sd:.3f} | "
                f"{best_dev:.3f} | "
                f"{reach_txt} | {statistics.median(r['seconds'] for r in v):.0f} |"
            )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sa-en", help="comma-separated task-lang pairs")
    p.add_argument("--methods", default="v1,v2")
    p.add_argument(
        "--only", default=None, help="restrict to 'objective:init:lr' triples, comma-separated"
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--dev", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=20)
    p.add_argument("--separator", default="\n")
    p.add_argument(
        "--template", default=None, help='e.g. "{text}\\nSentiment:" (with --separator "")'
    )
    p.add_argument("--label-prefix", default="", help='text before each label word, e.g. " "')
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--out", type=Path, default=Path("results/sweep/runs.jsonl"))
    p.add_argument("--summary", type=Path, default=None)
    p.add_argument("--target", type=float, default=None, help="--summary: dev score to reach")
    a = p.parse_args()
    if a.summary is not None:
        print(summarise(a.summary, a.target))
        return
    from promptatlas.models import load_model

    a.separator = a.separator.encode().decode("unicode_escape")
    if a.template:
        a.template = a.template.encode().decode("unicode_escape")
    handle = load_model(a.model)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if a.out.exists():
        for line in a.out.read_text().splitlines():
            r = json.loads(line)
            done.add(
                (r["task"], r["lang"], r["method"], r["objective"], r["init"], r["lr"], r["seed"])
            )
    only = None if a.only is None else set(a.only.split(","))
    for task_lang in a.tasks.split(","):
        task, lang = task_lang.split("-")
        for method in a.methods.split(","):
            for objective, init, lr in CANDIDATES[method]:
                if only is not None and f"{objective}:{init}:{lr}" not in only:
                    continue
                for seed in (int(s) for s in a.seeds.split(",")):
                    key = (task, lang, method, objective, init, lr, seed)
                    if key in done:
                        continue
                    row = run_one(handle, task, lang, method, objective, init, lr, seed, a)
                    with a.out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        f"{task}-{lang} {method} {objective} {init} lr={lr} seed={seed}: "
                        + " ".join(f"{s}:{d:.3f}" for s, d in row["curve"])
                        + f" ({row['seconds']:.0f} s)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
