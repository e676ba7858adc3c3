"""Step time (and peak memory) of three choices, each against its baseline in the same run.

* ``precision``: one v1 training step (forward + backward, rank objective) in float32 vs under
  bf16 autocast, same batch, interleaved. On a CPU without native bf16 the bf16 step is slow:
  this is why ``precision: auto`` picks fp32 there.
* ``chunked``: one language-prompt step (every token scored through the LM head) with the
  chunked head+loss (``target_loss``: no (tokens × vocab) tensor) vs the whole logits tensor
  at once. Each variant runs in a fresh child process, which reports its median step time and
  its peak resident memory above the loaded model.
* ``shared``: one v1 training step with the prompt run once per batch and shared by the rows
  (``share_prompt=True``, the default in losses and scoring) vs the prompt concatenated to
  every row.
* ``packed``: v1 training steps of the main job's tasks (SA-en with its cue, NLI-en, SA-ko;
  the trainer's own seeded micro-batches of 8) with the rows packed into one padding-free
  sequence (the default of ``rank_loss``) vs right-padded rows; also the largest loss
  difference between the two.
* ``head``: the LM head for a few rows (forward + backward of the gathered log-probabilities)
  applied as (rows × vocabulary) vs as the tall (vocabulary × rows) product transposed back
  (what ``logits`` does up to 64 rows); and rank-loss steps of the main job's tasks with the
  label words' first-token logits (the default: the row's normaliser cancels in the loss) vs
  exact log-probabilities through the full head, with the largest loss difference.

Prints medians, the ratio (baseline / option; > 1 = the option is faster) and the CPU::

    .venv/bin/python benchmarks/step_options.py --what precision
    .venv/bin/python benchmarks/step_options.py --what chunked
    .venv/bin/python benchmarks/step_options.py --what shared
    .venv/bin/python benchmarks/step_options.py --what packed --reps 8
    .venv/bin/python benchmarks/step_options.py --what head --reps 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def _setup(model: str, method: str = "v1") -> tuple[Any, Any, Any]:
    from promptatlas.formatting import FormatConfig, TaskFormatter
    from promptatlas.models import load_model
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
    from promptatlas.tasks import get_task

    handle = load_model(model)
    prompt = SoftPrompt(PromptConfig(method=method, length=20), handle.geometry)  # type: ignore[arg-type]
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"), FormatConfig(separator="\n"))
    return handle, PromptedLM(handle, prompt), fmt


def _task_batch(handle: Any, fmt: Any, batch: int) -> Any:
    from promptatlas.formatting import EncodedExample, collate
    from promptatlas.tasks import load_split

    examples = load_split("sa", "en", "train", limit=batch)
    ctx = [fmt.encode_context(ex, reserve=1) for ex in examples]
    return collate([EncodedExample(tuple(c), len(c)) for c in ctx], handle.tokenizer.pad_token_id)


def _interleave(
    fns: dict[str, Callable[[], None]], reps: int, warmup: int
) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _report(times: dict[str, list[float]], baseline: str) -> None:
    from promptatlas.models.precision import cpu_info

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} | capability {cpu['capability']} | flags {cpu['flags']}")
    base = statistics.median(times[baseline])
    for name, t in times.items():
        med = statistics.median(t)
        print(
            f"{name:>24}: median {med:.3f} s (min {min(t):.3f}, max {max(t):.3f}); "
            f"{baseline} / {name} = {base / med:.2f}"
        )


def bench_precision(a: argparse.Namespace) -> None:
    from promptatlas.evaluation.predict import label_suffixes, rank_loss

    handle, plm, fmt = _setup(a.model)
    batch = _task_batch(handle, fmt, a.batch)
    golds = torch.zeros(a.batch, dtype=torch.long)
    suffixes = label_suffixes(fmt)

    def step(dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            plm.autocast_dtype = dtype
            loss = rank_loss(plm, batch, golds, suffixes)
            loss.backward()

        return run

    times = _interleave({"fp32": step(None), "bf16": step(torch.bfloat16)}, a.reps, a.warmup)
    print(f"v1 training step, batch {a.batch} x {batch.input_ids.shape[1]} tokens + 20 prompt")
    _report(times, "fp32")


def _chunked_child(model: str, chunked: bool, batch: int, tokens: int, reps: int, q: Any) -> None:
    from promptatlas.evaluation.predict import target_loss
    from promptatlas.formatting import TextLMFormatter, collate
    from promptatlas.tasks import Example
    from promptatlas.tasks.rawtext import load_raw_text

    handle, plm, _ = _setup(model)
    fmt = TextLMFormatter(handle.tokenizer, tokens)
    lines = load_raw_text("en", ())[: batch * 4]
    text = [" ".join(lines[i : i + 4]) for i in range(0, len(lines), 4)][:batch]
    b = collate([fmt.encode(Example((t,), "")) for t in text], handle.tokenizer.pad_token_id)

    def unchunked() -> torch.Tensor:
        out = plm.forward(b.input_ids, b.attention_mask, share_prompt=True)
        select = b.target_mask[:, 1:]
        logits = plm.logits(out.hidden[:, :-1][select])
        return F.cross_entropy(logits.float(), b.input_ids[:, 1:][select])

    fn = (lambda: target_loss(plm, b)) if chunked else unchunked
    fn().backward()  # warm-up
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn().backward()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    q.put(
        {
            "times": times,
            "rss_mb": peak / 1024,
            "rss_above_warm_mb": (peak - base_rss) / 1024,
            "positions": int(b.target_mask[:, 1:].sum()),
        }
    )


def bench_chunked(a: argparse.Namespace) -> None:
    ctx = mp.get_context("spawn")
    results = {}
    for name, chunked in (("whole logits", False), ("chunked", True)):
        q = ctx.Queue()
        p = ctx.Process(
            target=_chunked_child, args=(a.model, chunked, a.batch, a.tokens, a.reps, q)
        )
        p.start()
        results[name] = q.get()
        p.join()
    print(
        f"language-prompt step, batch {a.batch} x {a.tokens} tokens, "
        f"{results['chunked']['positions']} scored positions"
    )
    _report({k: v["times"] for k, v in results.items()}, "whole logits")
    for name, r in results.items():
        print(f"{name:>24}: peak RSS {r['rss_mb']:.0f} MB (process, model included)")
    ratio = results["whole logits"]["rss_mb"] / results["chunked"]["rss_mb"]
    print(f"peak RSS whole / chunked = {ratio:.2f}")
    print(json.dumps({k: {**v, "times": None} for k, v in results.items()}))


def bench_shared(a: argparse.Namespace) -> None:
    from promptatlas.evaluation.predict import label_suffixes, rank_loss

    handle, plm, fmt = _setup(a.model)
    batch = _task_batch(handle, fmt, a.batch)
    golds = torch.zeros(a.batch, dtype=torch.long)
    suffixes = label_suffixes(fmt)
    original = plm.forward

    def step(shared: bool) -> Callable[[], None]:
        def run() -> None:
            plm.forward = lambda *x, **k: original(*x, **{**k, "share_prompt": shared})  # type: ignore[method-assign]
            rank_loss(plm, batch, golds, suffixes).backward()

        return run

    times = _interleave({"concatenated": step(False), "shared": step(True)}, a.reps, a.warmup)
    print(f"v1 training step, batch {a.batch} x {batch.input_ids.shape[1]} tokens + 20 prompt")
    _report(times, "concatenated")


def _main_job_batches(handle: Any, reps: int, batch: int) -> dict[str, tuple[Any, list[Any]]]:
    """The main job's three tasks (SA-en with its cue, NLI-en, SA-ko): each one's label
    suffixes and ``reps`` of the trainer's own seeded micro-batches (contexts, golds)."""
    from promptatlas.evaluation.predict import label_suffixes
    from promptatlas.formatting import EncodedExample, FormatConfig, TaskFormatter, collate
    from promptatlas.tasks import get_task, load_split
    from promptatlas.training.trainer import _micro_batch

    cue = {"template": "{text}\nSentiment:", "separator": "", "target_prefix": " "}
    tasks = {
        "sa-en": ("sa", "en", FormatConfig(**cue)),
        "nli-en": ("nli", "en", FormatConfig(separator="\n")),
        "sa-ko": ("sa", "ko", FormatConfig(separator="\n")),
    }
    out: dict[str, tuple[Any, list[Any]]] = {}
    for name, (task, lang, fmt_cfg) in tasks.items():
        fmt = TaskFormatter(handle.tokenizer, get_task(task, lang), fmt_cfg)
        train = load_split(task, lang, "train")
        suffixes = label_suffixes(fmt)
        reserve = max(len(s) for s in suffixes)
        ctx = [fmt.encode_context(ex, reserve=reserve) for ex in train]
        golds_all = torch.tensor([fmt.task.labels.index(ex.label) for ex in train])
        batches = []
        for i in range(reps):
            idx = _micro_batch(len(train), batch, 42, i)
            items = [EncodedExample(tuple(ctx[j]), len(ctx[j])) for j in idx]
            batches.append((collate(items, handle.tokenizer.pad_token_id), golds_all[idx]))
        out[name] = (suffixes, batches)
    return out


def _v1_plm(handle: Any) -> Any:
    from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt

    prompt = SoftPrompt(PromptConfig(method="v1", length=30), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    return PromptedLM(handle, prompt)


def bench_packed(a: argparse.Namespace) -> None:
    from promptatlas.evaluation.predict import rank_loss
    from promptatlas.models import load_model

    handle = load_model(a.model)
    plm = _v1_plm(handle)
    totals: dict[str, float] = {"padded": 0.0, "packed": 0.0}
    for name, (suffixes, batches) in _main_job_batches(handle, a.reps, a.batch).items():
        times: dict[str, list[float]] = {"padded": [], "packed": []}
        worst = 0.0
        for r, (batch, golds) in enumerate(batches):
            losses = {}
            for variant in ("padded", "packed") if r % 2 == 0 else ("packed", "padded"):
                plm.can_pack = lambda v=variant: v == "packed"  # type: ignore[method-assign]
                start = time.perf_counter()
                loss = rank_loss(plm, batch, golds, suffixes)
                loss.backward()
                times[variant].append(time.perf_counter() - start)
                losses[variant] = loss.item()
            worst = max(worst, abs(losses["packed"] - losses["padded"]))
        real = sum(int(b.lengths.sum()) for b, _ in batches)
        padded_tokens = sum(b.input_ids.numel() for b, _ in batches)
        print(
            f"{name}: {a.reps} micro-batches of {a.batch}, {real} real of {padded_tokens} "
            f"padded tokens; largest |loss packed - padded| {worst:.2e}"
        )
        _report(times, "padded")
        for k in totals:
            totals[k] += sum(times[k])
    print(f"all three tasks: padded / packed = {totals['padded'] / totals['packed']:.2f}")


def bench_head(a: argparse.Namespace) -> None:
    from promptatlas.evaluation import predict
    from promptatlas.models import load_model

    handle = load_model(a.model)
    weight = handle.adapter.lm_head(handle.model).weight.detach()
    vocab, d = weight.shape
    gen = torch.Generator().manual_seed(0)
    for rows in (8, 24, 64):
        hidden = torch.randn(rows, d, generator=gen)
        ids = torch.randint(0, vocab, (rows, 1), generator=gen)

        def step(tall: bool, hidden: torch.Tensor = hidden, ids: torch.Tensor = ids) -> None:
            x = hidden.clone().requires_grad_()
            logits = (weight @ x.T).T.contiguous() if tall else F.linear(x, weight)
            torch.log_softmax(logits, -1).gather(1, ids).sum().backward()

        times = _interleave(
            {"rows x vocab": lambda: step(False), "tall": lambda: step(True)}, a.reps, a.warmup
        )
        print(f"LM head ({vocab} x {d}), {rows} rows, forward + backward:")
        _report(times, "rows x vocab")
    plm = _v1_plm(handle)
    totals = {"full head": 0.0, "label logits": 0.0}
    for name, (suffixes, batches) in _main_job_batches(handle, a.reps, a.batch).items():
        times: dict[str, list[float]] = {k: [] for k in totals}
        worst = 0.0
        for r, (batch, golds) in enumerate(batches):
            packs = predict._packs(plm, batch.lengths.tolist(), suffixes)
            losses = {}
            for variant in list(totals) if r % 2 == 0 else list(totals)[::-1]:
                start = time.perf_counter()
                if variant == "full head":  # exact log-probabilities, then the loss
                    scores = predict._score_suffixes_packed(
                        plm, batch, suffixes, False, packs, log_probs=True
                    )
                    loss = F.cross_entropy(scores, golds)
                else:
                    loss = predict.rank_loss(plm, batch, golds, suffixes)
                loss.backward()
                times[variant].append(time.perf_counter() - start)
                losses[variant] = loss.item()
            worst = max(worst, abs(losses["full head"] - losses["label logits"]))
        print(
            f"{name}: {a.reps} packed micro-batches of {a.batch}, label words "
            f"{[len(s) for s in suffixes]} tokens; largest |loss difference| {worst:.2e}"
        )
        _report(times, "full head")
        for k in totals:
            totals[k] += sum(times[k])
    ratio = totals["full head"] / totals["label logits"]
    print(f"all three tasks: full head / label logits = {ratio:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--what", choices=("precision", "chunked", "shared", "packed", "head"), required=True
    )
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128, help="chunked: tokens per sequence")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args()
    {
        "precision": bench_precision,
        "chunked": bench_chunked,
        "shared": bench_shared,
        "packed": bench_packed,
        "head": bench_head,
    }[a.what](a)


if __name__ == "__main__":
    main()
