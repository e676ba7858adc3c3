"""Summed vs length-normalised vs first-token rank scoring, untrained and briefly trained.

The measurement behind ``EvalConfig.length_normalise=None`` (README "Your own task"): per task,
a v2 prompt is scored before training and after a short training run, with each scoring:

* ``sum``: summed log-probability of the label word's tokens;
* ``mean``: that sum / the word's token count;
* ``first``: the first token's log-probability only.

Trained prompts: one per training objective — ``lm`` (−log p(y, eos), scoring-independent)
and ``rank`` under sum and under mean scoring (the objective scores labels as evaluation does).
Each prompt is evaluated with all three scorings on the same test examples (macro-F1 ×100, with
the 95% bootstrap interval and the majority-class baseline).

    .venv/bin/python scripts/measure_scoring.py --model smollm2-135m \\
        --task nli --task path/to/rte.yaml --test-limit 200 --steps 30 --out scoring.json
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from promptatlas.evaluation.confidence import bootstrap_ci
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.evaluation.metrics import compute_metrics, per_example_scores
from promptatlas.evaluation.predict import rank_classify
from promptatlas.evaluation.scoring import label_token_counts
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.models import load_model
from promptatlas.prompts import PromptConfig, PromptedLM
from promptatlas.runs.train import RunConfig, build_prompt
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig, train_prompt


def _score_all(plm: PromptedLM, fmt: TaskFormatter, test: list[Any]) -> dict[str, Any]:
    """sum, mean and first-token results from two scoring passes (mean = sum / length)."""
    task = fmt.task
    lengths = torch.tensor([label_token_counts(fmt)[lab] for lab in task.labels], dtype=torch.float)
    _, summed = rank_classify(plm, fmt, test, batch_size=16)
    _, first = rank_classify(plm, fmt, test, batch_size=16, first_token=True)
    out = {}
    for name, scores in (("sum", summed), ("mean", summed / lengths), ("first", first)):
        preds = [task.labels[i] for i in scores.argmax(1).tolist()]
        metrics = compute_metrics(task, preds, test)
        est = bootstrap_ci(per_example_scores(task, preds, test))
        counts = {lab: preds.count(lab) for lab in task.labels}
        out[name] = {
            "score": metrics["score"],
            "ci": [est.low, est.high],
            "accuracy": metrics["accuracy"],
            "majority": metrics["majority"],
            "predicted": counts,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", action="append", required=True, help="name or task file")
    parser.add_argument("--lang", default="en")
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--train-limit", type=int, default=400)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--separator", default="\n")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    handle = load_model(args.model)
    results: dict[str, Any] = {"model": args.model, "steps": args.steps, "tasks": {}}
    for task_arg in args.task:
        started = time.perf_counter()
        variant = get_task(task_arg, args.lang)
        cfg = RunConfig(
            task=task_arg,
            lang=args.lang,
            model=args.model,
            prompt=PromptConfig(method="v2", length=20),
            format=FormatConfig(separator=args.separator),
        )
        fmt = TaskFormatter(handle.tokenizer, variant, cfg.format)
        test = load_split(variant.spec.name, args.lang, "test", limit=args.test_limit)
        train = load_split(variant.spec.name, args.lang, "train", limit=args.train_limit)
        entry: dict[str, Any] = {
            "label_tokens": {variant.verbalizers[k]: v for k, v in label_token_counts(fmt).items()},
            "n_test": len(test),
        }
        prompt = build_prompt(cfg, handle, fmt)
        initial = prompt.state_tensors()
        plm = PromptedLM(handle, prompt)
        entry["untrained"] = _score_all(plm, fmt, test)
        for objective, normalise in (("lm", None), ("rank", False), ("rank", True)):
            prompt.load_state_tensors(initial)
            train_prompt(
                plm,
                fmt,
                train,
                TrainConfig(steps=args.steps, objective=objective, checkpoint_every=0),
                eval_config=EvalConfig(length_normalise=normalise),
                progress=False,
            )
            key = objective if objective == "lm" else f"rank-{'mean' if normalise else 'sum'}"
            entry[f"trained-{key}"] = _score_all(plm, fmt, test)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["tasks"][variant.name] = entry
        _print(variant.name, entry)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, ensure_ascii=False)


def _print(name: str, entry: dict[str, Any]) -> None:
    print(f"{name}: label tokens {entry['label_tokens']}, n={entry['n_test']}, {entry['seconds']}s")
    for key, value in entry.items():
        if not isinstance(value, dict) or "sum" not in value:
            continue
        cells = [
            f"{s} {100 * value[s]['score']:.1f} [{100 * value[s]['ci'][0]:.1f}, "
            f"{100 * value[s]['ci'][1]:.1f}]"
            for s in ("sum", "mean", "first")
        ]
        print(
            f"  {key:18s} "
            + "  ".join(cells)
            + f"  (majority {100 * value['sum']['majority']:.1f})"
        )
        print(f"  {'':18s} predicted (sum): {value['sum']['predicted']}")


if __name__ == "__main__":
    main()
