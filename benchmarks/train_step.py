"""Benchmark one prompt-tuning training step: promptatlas vs PEFT, same model, same batch.

A training step is forward + backward on one batch (the optimizer update is the same tiny
in-place op for both and is left out). Both sides run on the *same* frozen model instance with
eager attention, start from the same prompt values, and only the prompt receives gradients.

* ``--method v1``: promptatlas ``SoftPrompt`` v1 (length 20) with ``target_loss`` (logits only
  at the target positions) vs PEFT ``PromptTuningConfig(num_virtual_tokens=20)`` used the
  standard way, ``peft_model(input_ids=..., attention_mask=..., labels=labels).loss`` with
  ``labels`` = -100 except at the target tokens.
* ``--method v2``: promptatlas v2 with separate keys/values (= P-tuning v2) vs PEFT
  ``PrefixTuningConfig(num_virtual_tokens=20)``.

The batch is right-padded like ``formatting.collate`` makes it: ``--batch`` rows, the longest
has ``--tokens`` tokens, the others are up to a quarter shorter, and the last ``--targets`` real
tokens of each row are the targets. Steps alternate between the two implementations (order
flipped every repetition) after warm-up, and the medians are reported.

Run from the repository root, e.g.::

    .venv/bin/python benchmarks/train_step.py --model gemma-3-270m --method v1 --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import peft
import torch
import transformers
from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import Batch, EncodedExample, collate
from promptatlas.models.registry import ModelHandle, load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt

PROMPT_LENGTH = 20
LOSS_TOLERANCE = 1e-4


@dataclass
class Timings:
    """Per-step wall-clock seconds: forward (loss), backward and their sum; and the process
    CPU seconds of the whole step (all threads; OpenMP spin-waits count too)."""

    forward: list[float] = field(default_factory=list)
    backward: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def total(self) -> list[float]:
        return [f + b for f, b in zip(self.forward, self.backward, strict=True)]


def make_batch(handle: ModelHandle, batch: int, tokens: int, targets: int, seed: int) -> Batch:
    """A right-padded batch of random ordinary tokens; the last ``targets`` real ones are the
    targets (built with ``formatting.collate``, as training batches are)."""
    if tokens < targets + 4:
        raise SystemExit(f"--tokens ({tokens}) must be at least --targets + 4 ({targets + 4})")
    gen = torch.Generator().manual_seed(seed)
    tok = handle.tokenizer
    special = set(tok.all_special_ids)
    high = min(handle.geometry.vocab_size, 20_000)
    low = min(300, high // 2)  # skip the specials/bytes at the start of most vocabularies
    items = []
    for i in range(batch):
        length = max(targets + 4, tokens - (i * tokens) // (4 * batch))
        ids = torch.randint(low, high, (length,), generator=gen).tolist()
        ids = [t if t not in special else low + 1 for t in ids]
        if tok.bos_token_id is not None:
            ids[0] = int(tok.bos_token_id)
        items.append(EncodedExample(tuple(ids), length - targets))
    return collate(items, int(tok.pad_token_id))


def peft_labels(batch: Batch) -> torch.Tensor:
    """HF-style labels: the token id at target positions, -100 elsewhere (the model shifts)."""
    return batch.input_ids.masked_fill(~batch.target_mask, -100)


def peft_prompt_weight(prompt: SoftPrompt) -> torch.Tensor:
    """Our prompt values in PEFT's ``prompt_encoder`` embedding layout.

    v1: (k, d_model). v2 separate: PEFT rows are [layer, key/value, kv-head, head_dim], i.e.
    our (L, 2, k, d_kv) with the token axis moved first."""
    full = prompt.tensor().detach()
    if prompt.method == "v1":
        return full
    return full.permute(2, 0, 1, 3).reshape(prompt.length, -1)


def build(
    handle: ModelHandle, method: str, seed: int, batch: Batch
) -> tuple[PromptedLM, SoftPrompt, Any]:
    """Our prompted model, and PEFT wrapped around the *same* model instance (no copy)."""
    if method == "v1":
        config = PromptConfig(method="v1", length=PROMPT_LENGTH)
        peft_config: Any = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_LENGTH
        )
    else:
        config = PromptConfig(method="v2", length=PROMPT_LENGTH, kv="separate")
        peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=PROMPT_LENGTH)
    prompt = SoftPrompt(config, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    prompt.to(handle.device)
    plm = PromptedLM(handle, prompt)
    # PEFT prompt learning leaves the base modules alone (it only wraps the model and freezes
    # its parameters, which load_model has already done), so both sides share one copy of
    # the weights; check that our loss is unchanged by the wrapping.
    with torch.no_grad():
        before = float(target_loss(plm, batch))
    peft_model = get_peft_model(handle.model, peft_config)
    with torch.no_grad():
        after = float(target_loss(plm, batch))
    if before != after:
        raise SystemExit(f"wrapping with PEFT changed our loss: {before} -> {after}")
    encoder = peft_model.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.copy_(peft_prompt_weight(prompt))
    peft_model.eval()  # no dropout, like load_model's eval() for ours
    return plm, prompt, peft_model


def check_trainable(handle: ModelHandle, prompt: SoftPrompt, peft_model: Any) -> None:
    """Only the prompts are trainable, and they have the same number of values."""
    base = [n for n, p in handle.model.named_parameters() if p.requires_grad]
    if base:
        raise SystemExit(f"base model parameters require grad: {base[:5]}")
    ours = prompt.trainable_parameters()
    theirs = [p for p in peft_model.parameters() if p.requires_grad]
    n_ours = sum(p.numel() for p in ours)
    n_theirs = sum(p.numel() for p in theirs)
    if len(theirs) != 1 or n_ours != n_theirs:
        raise SystemExit(f"trainable values differ: ours {n_ours}, PEFT {n_theirs}")
    print(f"trainable prompt values: {n_ours:,} (both); base model frozen")


def timed_step(
    loss_fn: Callable[[], torch.Tensor], params: list[torch.nn.Parameter], timings: Timings | None
) -> torch.Tensor:
    """One training step (zero grads, forward, backward); records its times."""
    for p in params:
        p.grad = None  # = optimizer.zero_grad(set_to_none=True)
    c0 = time.process_time()
    t0 = time.perf_counter()
    loss = loss_fn()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    c1 = time.process_time()
    if timings is not None:
        timings.forward.append(t1 - t0)
        timings.backward.append(t2 - t1)
        timings.cpu.append(c1 - c0)
    return loss.detach()


def head_cost(
    handle: ModelHandle, rows: int, cols: int, labels: torch.Tensor | None, reps: int
) -> float:
    """Median seconds of LM head + loss, forward and backward, on (rows, cols) hidden states.

    With ``labels`` this is the HF path (logits at every position, ``model.loss_function``);
    without, logits at ``rows·cols`` selected positions only, as ``target_loss`` does."""
    model = handle.model
    d = handle.geometry.d_model
    times = []
    for _ in range(reps + 1):
        hidden = torch.randn(rows, cols, d, requires_grad=True)
        t0 = time.perf_counter()
        if labels is None:
            logits = handle.adapter.logits(model, hidden.reshape(-1, d))
            target = torch.randint(0, handle.geometry.vocab_size, (rows * cols,))
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
        else:
            logits = handle.adapter.logits(model, hidden)
            loss = model.loss_function(logits, labels, model.config.vocab_size)
        loss.backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma-3-270m", help="registry name, hub id or directory")
    ap.add_argument("--method", choices=("v1", "v2"), default="v1")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per implementation")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64, help="width of the (padded) batch")
    ap.add_argument("--targets", type=int, default=2, help="target tokens at the end of each row")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the LM head + loss alone (all positions vs target positions)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="print a torch.profiler table of one step each"
    )
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be ≥ 1 and --warmup ≥ 0")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; threads {torch.get_num_threads()}"
    )
    t_load = time.perf_counter()
    handle = load_model(args.model, device="cpu", attn_implementation="eager")
    print(f"loaded {args.model} in {time.perf_counter() - t_load:.1f} s: {handle.geometry}")
    batch = make_batch(handle, args.batch, args.tokens, args.targets, args.seed)
    labels = peft_labels(batch)
    print(
        f"method {args.method}, prompt length {PROMPT_LENGTH}, batch {tuple(batch.input_ids.shape)}"
        f", real lengths {batch.lengths.tolist()}, {int(batch.target_mask.sum())} target tokens"
    )

    plm, prompt, peft_model = build(handle, args.method, args.seed, batch)
    check_trainable(handle, prompt, peft_model)
    ours_params = prompt.trainable_parameters()
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]

    def ours() -> torch.Tensor:
        return target_loss(plm, batch)

    def theirs() -> torch.Tensor:
        out = peft_model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels
        )
        loss: torch.Tensor = out.loss
        return loss

    # -- correctness: same loss and same prompt gradient -----------------------------------
    loss_ours = timed_step(ours, ours_params, None)
    grad_ours = peft_prompt_weight_grad(prompt)
    loss_peft = timed_step(theirs, peft_params, None)
    grad_peft = peft_params[0].grad.detach().clone()
    diff = abs(float(loss_ours) - float(loss_peft))
    gdiff = float((grad_ours - grad_peft).abs().max()) / max(float(grad_peft.abs().max()), 1e-12)
    print(
        f"loss: promptatlas {float(loss_ours):.6f}, PEFT {float(loss_peft):.6f}, "
        f"|diff| {diff:.2e}; prompt gradient max |g| {float(grad_peft.abs().max()):.2e}, "
        f"max rel diff {gdiff:.2e}"
    )
    if diff > LOSS_TOLERANCE:
        print(f"WARNING: losses differ by more than {LOSS_TOLERANCE:g}", file=sys.stderr)

    # -- timing: warm-up, then interleaved repetitions ---------------------------------------
    for _ in range(args.warmup):
        timed_step(ours, ours_params, None)
        timed_step(theirs, peft_params, None)
    t_ours, t_peft = Timings(), Timings()
    for rep in range(args.reps):
        order = [("ours", ours), ("peft", theirs)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            if name == "ours":
                timed_step(fn, ours_params, t_ours)
            else:
                timed_step(fn, peft_params, t_peft)
        print(
            f"  rep {rep + 1}/{args.reps}: promptatlas {t_ours.total[-1]:.3f} s, "
            f"PEFT {t_peft.total[-1]:.3f} s"
        )

    med = statistics.median
    m_ours, m_peft = med(t_ours.total), med(t_peft.total)
    print()
    print(f"model {args.model}, method {args.method}, {args.reps} reps (median seconds/step)")
    for label, t in (("promptatlas", t_ours), ("PEFT", t_peft)):
        print(
            f"  {label:<12} {med(t.total):.3f} s  (forward {med(t.forward):.3f} s, "
            f"backward {med(t.backward):.3f} s; min {min(t.total):.3f}, max {max(t.total):.3f}; "
            f"CPU {med(t.cpu):.3f} s)"
        )
    paired = med([p / o for p, o in zip(t_peft.total, t_ours.total, strict=True)])
    print(
        f"  ratio PEFT/promptatlas: {m_peft / m_ours:.2f}x "
        f"(median of the per-repetition ratios: {paired:.2f}x)"
    )

    if args.breakdown:
        bsz, width = batch.input_ids.shape
        n_pos = width + (PROMPT_LENGTH if args.method == "v1" else 0)
        full_labels = labels
        if args.method == "v1":  # PEFT prepends -100 labels for the virtual tokens
            pad = torch.full((bsz, PROMPT_LENGTH), -100, dtype=labels.dtype)
            full_labels = torch.cat([pad, labels], dim=1)
        n_targets = int(batch.target_mask.sum())
        full = head_cost(handle, bsz, n_pos, full_labels, args.reps)
        selected = head_cost(handle, 1, n_targets, None, args.reps)
        print(
            f"  LM head + loss, forward+backward: all {bsz}x{n_pos} positions (PEFT/HF) "
            f"{full:.3f} s; {n_targets} target positions (promptatlas) {selected:.3f} s"
        )

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        sides = (("promptatlas", ours, ours_params), ("PEFT", theirs, peft_params))
        for label, fn, params in sides:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                timed_step(fn, params, None)
            print(f"\n== torch.profiler: one {label} step ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


def peft_prompt_weight_grad(prompt: SoftPrompt) -> torch.Tensor:
    """Our prompt gradient in PEFT's layout (single-segment prompts)."""
    (param,) = prompt.trainable_parameters()
    assert param.grad is not None
    grad = param.grad.detach()
    if prompt.method == "v1":
        return grad.clone()
    return grad.permute(2, 0, 1, 3).reshape(prompt.length, -1).clone()


if __name__ == "__main__":
    raise SystemExit(main())
