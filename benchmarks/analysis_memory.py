"""Benchmark the peak memory of the attention analysis: streaming reducers vs storing every map.

Two implementations compute the same statistics (attention variability of the base model and
KL(prompted ‖ base) per head, SPEC §5) on the same batches of one task's contexts:

* ``streaming``: :func:`promptatlas.analysis.attention.attention_analysis` on batches from
  :func:`promptatlas.analysis.capture.context_batches` (hooks hand one layer's attention at
  a time to running sums; nothing per example is kept);
* ``baseline``: the straightforward way, ``PromptedLM.forward(..., output_attentions=True)``
  for the base and the prompted model, every example's input attention maps (all layers)
  kept in memory, then the same statistics computed from the stored maps
  (:func:`~promptatlas.analysis.attention.variability_from_maps`,
  :func:`~promptatlas.analysis.attention.attention_kl`).

Each (implementation, number of examples) runs in a fresh child process (the script
re-invokes itself with ``--child``), so peaks never mix. A child loads the model, builds the
batches, warms up with one plain forward per model run, then resets the kernel's high-water
mark (``/proc/self/clear_refs``) and reads it (``VmHWM``) after the analysis: the *analysis
peak* is that high-water mark minus the resident size just before the analysis. torch's CPU
tensors are invisible to ``tracemalloc``, hence resident memory. The parent also reads each
child's whole-process peak (``ru_maxrss`` from ``os.wait4``: model loading included).

By default the 4N set is the N examples repeated four times (distinct example ids), so both
sizes have exactly the same sequence lengths and only the number of examples changes;
``--distinct`` takes the first 4N examples of the split instead (longer outliers then raise
every per-batch peak a little). Both implementations must give the same numbers; the parent
prints the largest difference.

glibc's malloc raises its mmap threshold as big blocks are freed and then keeps part of the
freed heap, which shows up as a few MB of slow drift in the high-water mark; with
``--fixed-mmap-threshold`` the children run with ``MALLOC_MMAP_THRESHOLD_=131072`` so the
mark follows live memory only.

Run from the repository root, e.g.::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/analysis_memory.py --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from promptatlas.analysis.attention import (
    attention_analysis,
    attention_kl,
    variability_from_maps,
    variability_window,
)
from promptatlas.analysis.capture import AnalysisBatch, PromptLayout, context_batches
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle, load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import get_task, load_split

MODES = ("streaming", "baseline")
MB = 1024 * 1024
AGREEMENT_TOLERANCE = 1e-6
# glibc raises its mmap threshold dynamically after big blocks are freed, after which big
# tensors come from the heap, whose top cannot always be returned; a fixed threshold serves
# every block >= 128 KiB by mmap and unmaps it on free, so the high-water mark follows live
# memory rather than heap retention.
MMAP_THRESHOLD = 128 * 1024


# -- resident memory --------------------------------------------------------------------------


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMeter:
    """Peak resident memory over a code region.

    Uses the kernel's high-water mark, reset at the start (``echo 5 > clear_refs``, Linux ≥
    4.0); where that is not allowed, a thread samples the resident size every millisecond
    (can miss very short spikes)."""

    def __init__(self) -> None:
        self.method = ""
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMeter:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM"
        except OSError:
            self.method = "sampled"
            self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        else:
            self.peak = _status_kb("VmHWM") * 1024


# -- the two implementations ------------------------------------------------------------------


def streaming(
    handle: ModelHandle, prompt: SoftPrompt, batches: list[AnalysisBatch], n_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """promptatlas: variability and KL per head with streaming reducers."""
    var, change = attention_analysis(handle, prompt, batches, n_tokens=n_tokens)
    return var.variability, change.kl, 0


@torch.inference_mode()
def baseline(
    handle: ModelHandle, prompt: SoftPrompt, batches: list[AnalysisBatch], n_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Store every example's input attention maps (output_attentions=True), then compute."""
    models = {"base": PromptedLM(handle), "prompted": PromptedLM(handle, prompt)}
    stored: dict[str, list[list[torch.Tensor]]] = {name: [] for name in models}
    kinds: list[torch.Tensor] = []
    for batch in batches:
        lengths = batch.lengths.tolist()
        for name, plm in models.items():
            out = plm.forward(batch.input_ids, batch.attention_mask, output_attentions=True)
            assert out.attentions is not None
            layout = PromptLayout.of(plm)
            q, k = layout.query_offset, layout.key_offset
            for row, n in enumerate(lengths):
                stored[name].append(
                    [a[row, :, q : q + n, k : k + n].float().clone() for a in out.attentions]
                )
            del out
        kinds += [batch.kinds[row, :n].clone() for row, n in enumerate(lengths)]
    stored_bytes = sum(
        t.numel() * t.element_size() for ex in stored.values() for m in ex for t in m
    )
    n_layers = handle.geometry.n_layers
    variability = torch.stack(
        [
            variability_from_maps(
                [
                    variability_window(ex[layer], len(kd), n_tokens)
                    for ex, kd in zip(stored["base"], kinds, strict=True)
                ]
            )
            for layer in range(n_layers)
        ]
    )
    kl_rows = []
    for layer in range(n_layers):
        per_example = []
        for p, b, kd in zip(stored["prompted"], stored["base"], kinds, strict=True):
            try:
                per_example.append(attention_kl(p[layer], b[layer], kd))
            except ValueError:  # no ordinary input token: skipped, as the reducer does
                continue
        kl_rows.append(torch.stack(per_example).mean(0))
    return variability, torch.stack(kl_rows), stored_bytes


# -- child: one measurement -------------------------------------------------------------------


def make_prompt(handle: ModelHandle, method: str, length: int, seed: int) -> SoftPrompt:
    prompt = SoftPrompt(PromptConfig(method=method, length=length), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    prompt.to(handle.device)
    return prompt


def child(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    handle = load_model(args.model, device="cpu", attn_implementation="eager")
    prompt = make_prompt(handle, args.method, args.prompt_length, args.seed)
    fmt = TaskFormatter(handle.tokenizer, get_task(args.task, args.lang))
    if args.distinct:
        examples = load_split(args.task, args.lang, args.split, limit=args.count)
    else:
        examples = load_split(args.task, args.lang, args.split, limit=args.n)
        examples = examples * (args.count // max(1, args.n))
    if len(examples) != args.count:
        raise SystemExit(
            f"{args.task}-{args.lang} {args.split} has only {len(examples)} of the "
            f"{args.count} examples needed; lower --n or use another --split"
        )
    batches = context_batches(fmt, examples, batch_size=args.batch_size)
    # Warm-up: one plain forward per model run (thread pools, lazy initialisations) so the
    # measured region holds the analysis only.
    with torch.inference_mode():
        for plm in (PromptedLM(handle), PromptedLM(handle, prompt)):
            plm.forward(batches[0].input_ids, batches[0].attention_mask)
    gc.collect()
    run = streaming if args.mode == "streaming" else baseline
    before = rss_bytes()
    t0 = time.perf_counter()
    with PeakMeter() as meter:
        variability, kl, stored = run(handle, prompt, batches, args.n_tokens)
    seconds = time.perf_counter() - t0
    geometry = handle.geometry
    print(
        json.dumps(
            {
                "mode": args.mode,
                "count": args.count,
                "batches": len(batches),
                "tokens": int(sum(int(b.lengths.sum()) for b in batches)),
                "seconds": seconds,
                "rss_before": before,
                "peak": meter.peak,
                "meter": meter.method,
                "stored": stored,
                "variability": variability.tolist(),
                "kl": kl.tolist(),
                "geometry": [geometry.n_layers, geometry.n_heads],
            }
        )
    )
    return 0


# -- parent: run the children and report ------------------------------------------------------


def run_child(
    argv: Sequence[str], mode: str, count: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--child", "--mode", mode]
    cmd += ["--count", str(count)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    # wait4 (not wait) to get this child's own rusage: ru_maxrss is its whole-process peak.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} n={count} failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["process_peak"] = usage.ru_maxrss * 1024  # kB on Linux
    return result


def max_diff(a: Any, b: Any) -> float:
    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b)).abs().max())


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m", help="registry name, hub id or directory")
    ap.add_argument("--n", type=int, default=32, help="N: the smaller run; the larger is 4N")
    ap.add_argument("--task", default="nli")
    ap.add_argument("--lang", default="en")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--method", choices=("v1", "v2"), default="v2")
    ap.add_argument("--prompt-length", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-tokens", type=int, default=10, help="variability window (thesis: 10)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--distinct", action="store_true", help="4N distinct examples instead of N repeated 4×"
    )
    ap.add_argument(
        "--fixed-mmap-threshold",
        action="store_true",
        help=f"run the children with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (glibc)",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1:
        ap.error("--n and --batch-size must be ≥ 1")
    if args.child:
        return child(args)

    passthrough = list(argv if argv is not None else sys.argv[1:])
    print(
        f"torch {torch.__version__}; threads {args.threads or torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); model {args.model}, "
        f"{args.task}-{args.lang} {args.split}, {args.method} prompt of length "
        f"{args.prompt_length}, batch {args.batch_size}, "
        f"{'distinct examples' if args.distinct else 'N examples repeated for 4N'}; "
        f"allocator: glibc {'fixed' if args.fixed_mmap_threshold else 'default'} mmap threshold"
    )
    env = dict(os.environ)
    if args.fixed_mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for mode in MODES:
        for count in (args.n, 4 * args.n):
            t0 = time.perf_counter()
            results[(mode, count)] = run_child(passthrough, mode, count, env)
            print(f"  {mode:<9} n={count:<5} done in {time.perf_counter() - t0:.1f} s")
    layers, heads = results[("streaming", args.n)]["geometry"]
    print(f"\n{layers} layers × {heads} heads; memory in MB (1 MB = 2^20 bytes)")
    header = (
        f"{'mode':<10}{'examples':>9}{'batches':>8}{'tokens':>8}{'time s':>8}"
        f"{'RSS before':>11}{'analysis peak':>14}{'stored maps':>12}{'process peak':>13}"
    )
    print(header)
    print("-" * len(header))
    growth: dict[tuple[str, int], float] = {}
    for (mode, count), r in results.items():
        growth[(mode, count)] = (r["peak"] - r["rss_before"]) / MB
        print(
            f"{mode:<10}{count:>9}{r['batches']:>8}{r['tokens']:>8}{r['seconds']:>8.2f}"
            f"{r['rss_before'] / MB:>11.1f}{growth[(mode, count)]:>+14.1f}"
            f"{r['stored'] / MB:>12.1f}{r['process_peak'] / MB:>13.1f}"
        )
    meter = results[("streaming", args.n)]["meter"]
    print(
        f"\nanalysis peak = peak resident memory during the analysis ({meter}) − resident "
        "memory just before it;\nprocess peak = the child's ru_maxrss (model loading included)."
    )
    print("\nratio 4N / N:")
    for mode in MODES:
        small, large = growth[(mode, args.n)], growth[(mode, 4 * args.n)]
        ratio = large / small if small > 0 else float("nan")
        stored = ""
        if mode == "baseline" and results[(mode, args.n)]["stored"]:
            s_ratio = results[(mode, 4 * args.n)]["stored"] / results[(mode, args.n)]["stored"]
            stored = f"; stored maps {s_ratio:.2f}×"
        target = " (target ≈ 1: flat)" if mode == "streaming" else " (grows with the examples)"
        print(f"  {mode:<9} analysis peak {ratio:.2f}×{stored}{target}")
    print("\nagreement of the two implementations (max |difference| over layers and heads):")
    worst = 0.0
    for count in (args.n, 4 * args.n):
        s, b = results[("streaming", count)], results[("baseline", count)]
        dv, dk = max_diff(s["variability"], b["variability"]), max_diff(s["kl"], b["kl"])
        worst = max(worst, dv, dk)
        print(f"  n={count:<5} variability {dv:.2e}, KL {dk:.2e}")
    if worst > AGREEMENT_TOLERANCE:
        print(f"WARNING: the implementations differ by more than {AGREEMENT_TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
