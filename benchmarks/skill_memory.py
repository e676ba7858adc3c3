"""Benchmark the peak memory of neuron predictivity: streaming accumulators vs storing every state.

Two implementations compute the same predictivity of every FFN neuron (skill neurons, spec §A1)
of one prompted model on the same training and held-out contexts:

* ``streaming``: :func:`promptatlas.analysis.skill.predictivity_from_batches` (per-class sums
  on the training pass, per-class counts of ``a > threshold`` on the held-out pass; nothing per
  example is kept);
* ``baseline``: every example's decoding-token states (all layers) kept in memory, then the
  thresholds and accuracies computed with numpy
  (:func:`~promptatlas.analysis.skill.simple_predictivity`).

As in ``analysis_memory.py`` (whose meter this script uses), each (implementation, number of
examples) runs in a fresh child process; the *analysis peak* is the resident high-water mark
during the analysis minus the resident size just before it. The 4N run repeats the N examples
four times, so only the number of examples changes. Both implementations must agree.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/skill_memory.py --model gemma-3-270m --n 64
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/skill_memory.py --model tiny-llama --n 16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from analysis_memory import MB, PeakMeter, rss_bytes  # same folder

from promptatlas.analysis.capture import AnalysisBatch, context_batches
from promptatlas.analysis.skill import (
    NeuronRead,
    default_subtasks,
    example_labels,
    predictivity_from_batches,
    read_neurons,
    simple_predictivity,
)
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split

MODES = ("streaming", "baseline")


def streaming(
    plm: PromptedLM,
    tr: list[AnalysisBatch],
    y_tr: np.ndarray,
    dv: list[AnalysisBatch],
    y_dv: np.ndarray,
    labels: Sequence[str],
) -> tuple[np.ndarray, int]:
    acc = predictivity_from_batches(
        plm, tr, y_tr, dv, y_dv, default_subtasks(labels), n_classes=len(labels)
    )
    sub = acc.result()  # (S, P, L, D)
    return sub.mean(0)[0], 0


@torch.inference_mode()
def baseline(
    plm: PromptedLM,
    tr: list[AnalysisBatch],
    y_tr: np.ndarray,
    dv: list[AnalysisBatch],
    y_dv: np.ndarray,
    labels: Sequence[str],
) -> tuple[np.ndarray, int]:
    layers = list(range(plm.handle.geometry.n_layers))

    def states(batches: list[AnalysisBatch], n: int) -> np.ndarray:
        out = np.zeros((n, len(layers), plm.handle.geometry.d_ffn), dtype=np.float32)
        for batch in batches:
            ids = batch.example_ids.numpy()

            def sink(read: NeuronRead, ids: np.ndarray = ids) -> None:
                out[ids, read.layer] = read.at("decoding")[:, 0].numpy()

            read_neurons(plm, batch, layers, sink)
        return out

    a_tr, a_dv = states(tr, len(y_tr)), states(dv, len(y_dv))
    stored = a_tr.nbytes + a_dv.nbytes
    if len(labels) == 2:
        return simple_predictivity(a_tr, a_dv, y_dv), stored
    per_class = [
        simple_predictivity(a_tr, a_dv, (y_dv == c).astype(int), balanced=True)
        for c in range(len(labels))
    ]
    return np.mean(per_class, axis=0), stored


def child(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model(args.model, device="cpu")
    prompt = SoftPrompt(
        PromptConfig(method=args.method, length=args.prompt_length), handle.geometry
    )
    prompt.initialise(handle, generator=torch.Generator().manual_seed(args.seed))
    fmt = TaskFormatter(handle.tokenizer, get_task(args.task, args.lang))
    repeat = args.count // args.n
    train = load_split(args.task, args.lang, "train", limit=args.n) * repeat
    dev = load_split(args.task, args.lang, "dev", limit=args.n) * repeat
    tr = context_batches(fmt, train, batch_size=args.batch_size)
    dv = context_batches(fmt, dev, batch_size=args.batch_size)
    plm = PromptedLM(handle, prompt)
    with torch.inference_mode():
        plm.forward(tr[0].input_ids, tr[0].attention_mask)
    gc.collect()
    run = streaming if args.mode == "streaming" else baseline
    labels = list(fmt.task.labels)
    before = rss_bytes()
    t0 = time.perf_counter()
    with PeakMeter() as meter:
        values, stored = run(
            plm, tr, example_labels(fmt, train), dv, example_labels(fmt, dev), labels
        )
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": args.mode,
                "count": args.count,
                "seconds": seconds,
                "rss_before": before,
                "peak": meter.peak,
                "meter": meter.method,
                "stored": stored,
                "values": values.tolist(),
            }
        )
    )
    return 0


def run_child(argv: Sequence[str], mode: str, count: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", "--mode", mode]
    cmd += ["--count", str(count)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} n={count} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=64, help="N train and N dev examples; then 4N")
    ap.add_argument("--task", default="sa")
    ap.add_argument("--lang", default="en")
    ap.add_argument("--method", choices=("v1", "v2"), default="v1")
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    passthrough = list(argv if argv is not None else sys.argv[1:])
    results = {(m, c): run_child(passthrough, m, c) for m in MODES for c in (args.n, 4 * args.n)}
    setting = f"{args.task}-{args.lang}, {args.method} prompt, batch {args.batch_size}"
    print(f"model {args.model}, {setting}")
    print(f"{'mode':<10}{'examples':>9}{'time s':>8}{'analysis peak MB':>18}{'stored MB':>11}")
    growth = {}
    for (mode, count), r in results.items():
        growth[(mode, count)] = (r["peak"] - r["rss_before"]) / MB
        print(
            f"{mode:<10}{count:>9}{r['seconds']:>8.2f}{growth[(mode, count)]:>+18.1f}"
            f"{r['stored'] / MB:>11.1f}"
        )
    for mode in MODES:
        small, large = growth[(mode, args.n)], growth[(mode, 4 * args.n)]
        print(f"ratio 4N/N {mode}: {large / small if small > 0 else float('nan'):.2f}×")
    for count in (args.n, 4 * args.n):
        diff = np.abs(
            np.asarray(results[("streaming", count)]["values"])
            - np.asarray(results[("baseline", count)]["values"])
        ).max()
        print(f"agreement n={count}: max |difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
