"""Prediction with a prompted model: LM loss, rank classification and greedy generation.

Logits are computed only where they are needed (target positions, the decoding token, the
last generated position): with a 262k vocabulary the LM head dominates otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from promptatlas.formatting import Batch, EncodedExample, TaskFormatter, collate
from promptatlas.prompts.injection import HEAD_CHUNK_ELEMENTS, PromptedLM
from promptatlas.tasks import Example

__all__ = [
    "HEAD_CHUNK_ELEMENTS",
    "generate",
    "head_chunk",
    "head_nll",
    "label_suffixes",
    "rank_classify",
    "rank_loss",
    "target_logprobs",
    "target_loss",
]


def head_chunk(plm: PromptedLM) -> int:
    """Positions per LM-head chunk for this model (at least 1; :data:`HEAD_CHUNK_ELEMENTS`)."""
    return plm.head_rows


class _ChunkedHeadNLL(torch.autograd.Function):
    """Summed cross-entropy of the LM head over selected hidden states, one chunk of positions
    at a time, so no (positions × vocab) tensor exists beyond one chunk.

    The model is frozen, so the only gradient needed is the one w.r.t. the hidden states; it
    is computed chunk by chunk during the forward (the chunk's logits are freed right after)
    and only scaled in the backward: no recomputation, and the same numbers as the unchunked
    loss (tested to 1e-5 on each model family)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        labels: torch.Tensor,
        plm: PromptedLM,
        chunk: int,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grads = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk):
            stop = start + chunk
            if grads is None:
                logits = plm.logits(hidden[start:stop])
                total += F.cross_entropy(logits.float(), labels[start:stop], reduction="sum")
                continue
            with torch.enable_grad():
                h = hidden[start:stop].detach().requires_grad_(True)
                nll = F.cross_entropy(plm.logits(h).float(), labels[start:stop], reduction="sum")
                (grad,) = torch.autograd.grad(nll, h)
            grads[start:stop] = grad
            total += nll.detach()
        ctx.save_for_backward(*(() if grads is None else (grads,)))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        saved = ctx.saved_tensors
        return (saved[0] * grad_out if saved else None), None, None, None


def head_nll(
    plm: PromptedLM, hidden: torch.Tensor, labels: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Summed next-token NLL of ``labels`` (N,) given ``hidden`` (N, d), the LM head applied in
    chunks of ``chunk`` positions (default :func:`head_chunk`)."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    size = chunk or head_chunk(plm)
    if hidden.shape[0] <= size and torch.is_grad_enabled():
        # One chunk: plain autograd is just as small.
        return F.cross_entropy(plm.logits(hidden).float(), labels, reduction="sum")
    out: torch.Tensor = _ChunkedHeadNLL.apply(hidden, labels, plm, size)
    return out


def target_loss(plm: PromptedLM, batch: Batch, *, chunk: int | None = None) -> torch.Tensor:
    """Mean negative log-likelihood of the target tokens (``y <eos>``, or every token for raw
    text) of a batch. The LM head runs in chunks of positions (:func:`head_nll`), so scoring
    every token of a batch never holds the whole (tokens × vocab) logits."""
    batch = batch.to(plm.device)
    out = plm.forward(batch.input_ids, batch.attention_mask, share_prompt=True)
    select = batch.target_mask[:, 1:]
    labels = batch.input_ids[:, 1:][select]
    hidden = out.hidden[:, :-1][select]
    return head_nll(plm, hidden, labels, chunk) / max(1, labels.shape[0])


def label_suffixes(formatter: TaskFormatter, score_eos: bool = False) -> list[list[int]]:
    """Token ids scored for each label of a classification task (its label words, + eos)."""
    label_ids = formatter.label_token_ids()
    eos = [formatter.eos_id] if score_eos else []
    return [label_ids[lab] + eos for lab in formatter.task.labels]


def rank_loss(
    plm: PromptedLM,
    batch: Batch,
    golds: torch.Tensor,
    suffixes: Sequence[Sequence[int]],
    *,
    length_normalise: bool = False,
) -> torch.Tensor:
    """Cross-entropy of the gold label under rank classification: a softmax over the labels'
    scores (summed, or with ``length_normalise`` mean, log-probabilities of their label words
    after each context), i.e. exactly what :func:`rank_classify` picks from. ``batch`` holds
    contexts only (right-padded); ``golds`` the label indices.

    The cross-entropy does not change when a row's scores move by one constant, and every
    label's first token is read at the same position of a row, so (summed scores) the first
    tokens' log-probabilities are replaced by their logits: the vocabulary's normaliser at the
    decoding token, the whole LM head, is never computed there (exact, not an approximation;
    with ``length_normalise`` the labels divide it differently, so it is computed)."""
    batch = batch.to(plm.device)
    log_probs = length_normalise
    packs = _packs(plm, batch.lengths.tolist(), suffixes) if plm.can_pack() else None
    if packs is not None:
        scores = _score_suffixes_packed(plm, batch, suffixes, length_normalise, packs, log_probs)
    else:
        scores = _score_suffixes(plm, batch, suffixes, length_normalise, log_probs)
    return F.cross_entropy(scores.float(), golds.to(plm.device))


def _first_scores(
    plm: PromptedLM, hidden: torch.Tensor, first: torch.Tensor, log_probs: bool
) -> torch.Tensor:
    """(N, n_labels) scores of each label's first token at the decoding token's hidden states:
    log-probabilities, or (``log_probs`` False) the logits, which differ from them by one
    constant per row (its log-normaliser) and need only the labels' rows of the LM head."""
    if log_probs:
        return plm.token_log_probs(hidden, first.expand(hidden.shape[0], -1))
    return plm.token_logits(hidden, first)


# Most tokens in one packed row: its (tokens × tokens) attention scores stay small.
PACK_TOKENS = 512


def _packs(
    plm: PromptedLM, lengths: Sequence[int], suffixes: Sequence[Sequence[int]]
) -> list[list[int]] | None:
    """Rows of a batch grouped into packs of at most :data:`PACK_TOKENS` tokens (each row's
    context plus the fed tokens of its multi-token labels), or None where one row alone does
    not fit (a sliding window shorter than the pack, say): then the padded path is used."""
    fed = sum(len(s) - 1 for s in suffixes)
    limit = PACK_TOKENS
    window = plm.sliding_window
    if window is not None:
        # Sliding-window layers keep a window of cache slots: prompt + pack stay inside it.
        limit = min(limit, window - plm.n_prompt)
    packs: list[list[int]] = []
    used = limit + 1
    for row, n in enumerate(lengths):
        size = n + fed
        if size > limit:
            return None
        if used + size > limit:
            packs.append([])
            used = 0
        packs[-1].append(row)
        used += size
    return packs


def _score_suffixes_packed(
    plm: PromptedLM,
    batch: Batch,
    suffixes: Sequence[Sequence[int]],
    length_normalise: bool,
    packs: Sequence[Sequence[int]],
    log_probs: bool = True,
) -> torch.Tensor:
    """:func:`_score_suffixes` without padding: each pack holds its rows' contexts back to back,
    each followed by the fed tokens of every multi-token label (tokens 0..n-2 of the label,
    seeing the context and the label's own earlier tokens), under a block-causal mask
    (:meth:`PromptedLM.forward_packed`). Same scores as the padded path; the backbone runs
    only on real tokens, and the context is not repeated per label. ``log_probs``: as in
    :func:`_score_suffixes`."""
    n_rows, n_suf = batch.input_ids.shape[0], len(suffixes)
    device = plm.device
    last_rows: list[torch.Tensor] = []  # hidden at each row's last context token
    fed_rows: list[torch.Tensor] = []  # hidden at each fed label token
    fed_want: list[int] = []  # the label token it predicts
    fed_cell: list[int] = []  # row * n_suf + label
    order: list[int] = []
    states = plm.prompt_states()  # once: every pack sees the same prompt
    for pack in packs:
        ids: list[int] = []
        pos: list[int] = []
        seq: list[int] = []  # which sequence (row) a token belongs to
        part: list[int] = []  # -1: context, j: label j's fed tokens
        last: list[int] = []
        want: list[tuple[int, int, int]] = []  # (packed index, target token, cell)
        for row in pack:
            n = int(batch.lengths[row])
            ids.extend(batch.input_ids[row, :n].tolist())
            pos.extend(range(n))
            seq.extend([row] * n)
            part.extend([-1] * n)
            last.append(len(ids) - 1)
            order.append(row)
            for j, s in enumerate(suffixes):
                for u in range(len(s) - 1):
                    want.append((len(ids), s[u + 1], row * n_suf + j))
                    ids.append(s[u])
                    pos.append(n + u)
                    seq.append(row)
                    part.append(j)
        t_seq = torch.tensor(seq, device=device)
        t_pos = torch.tensor(pos, device=device)
        t_part = torch.tensor(part, device=device)
        visible = (
            (t_seq[:, None] == t_seq[None, :])
            & (t_pos[None, :] <= t_pos[:, None])
            & ((t_part[None, :] == -1) | (t_part[None, :] == t_part[:, None]))
        )
        hidden = plm.forward_packed(torch.tensor(ids, device=device), visible, t_pos, states)
        last_rows.append(hidden[last])
        if want:
            fed_rows.append(hidden[[w[0] for w in want]])
            fed_want.extend(w[1] for w in want)
            fed_cell.extend(w[2] for w in want)
    first = torch.tensor([s[0] for s in suffixes], device=device)
    lp_first = _first_scores(plm, torch.cat(last_rows), first, log_probs)
    scores = torch.empty(n_rows, n_suf, device=device, dtype=lp_first.dtype)
    scores = scores.index_copy(0, torch.tensor(order, device=device), lp_first)
    if fed_rows:
        want_ids = torch.tensor(fed_want, device=device)[:, None]
        token_lp = plm.token_log_probs(torch.cat(fed_rows), want_ids)[:, 0]
        extra = torch.zeros(n_rows * n_suf, device=device).index_add(
            0, torch.tensor(fed_cell, device=device), token_lp
        )
        scores = scores + extra.view(n_rows, n_suf)
    if length_normalise:
        scores = scores / torch.tensor([len(s) for s in suffixes], device=device)[None]
    return scores


def target_logprobs(plm: PromptedLM, batch: Batch) -> torch.Tensor:
    """Per-sequence summed log-probability of the target tokens, and their counts: (B, 2)."""
    batch = batch.to(plm.device)
    out = plm.forward(batch.input_ids, batch.attention_mask, share_prompt=True)
    select = batch.target_mask[:, 1:]
    labels = batch.input_ids[:, 1:][select]
    token_lp = plm.token_log_probs(out.hidden[:, :-1][select], labels[:, None])[:, 0]
    rows = torch.nonzero(select, as_tuple=True)[0]
    total = torch.zeros(batch.input_ids.shape[0], device=token_lp.device).index_add(
        0, rows, token_lp
    )
    count = select.sum(1).float()
    return torch.stack([total, count], dim=1)


def _batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


@torch.no_grad()
def rank_classify(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    *,
    batch_size: int = 16,
    length_normalise: bool = False,
    score_eos: bool = False,
    first_token: bool = False,
    log_probs: bool = True,
) -> tuple[list[str], torch.Tensor]:
    """Score every label's verbalizer after the context and pick the best (SPEC §2).

    Returns the predicted label keys and the (N, n_labels) scores (sum of log-probs, or their
    mean with ``length_normalise``; with ``first_token`` the log-prob of each label word's first
    token only). The context is run once per example; the first label token is read at the
    decoding token, and multi-token label words are continued from the context's key/value
    cache (repeated once per label), so the context is never recomputed.

    ``log_probs`` False: where only the ranking is wanted, each row's scores may be its
    log-probabilities less one constant (summed scoring: the first tokens' logits instead of
    log-probabilities), which skips the full LM head at the decoding token; same predictions.
    """
    labels = list(formatter.task.labels)
    label_ids = formatter.label_token_ids()
    eos = [formatter.eos_id] if score_eos else []
    suffix = [label_ids[lab][:1] if first_token else label_ids[lab] + eos for lab in labels]
    contexts = [
        formatter.encode_context(ex, reserve=max(len(s) for s in suffix)) for ex in examples
    ]
    scores = torch.empty(len(examples), len(labels))
    order = sorted(range(len(examples)), key=lambda i: len(contexts[i]))  # less padding
    pad = formatter.tokenizer.pad_token_id
    window = plm.sliding_window
    with plm.fixed_prompt():  # one v1 prompt pass for all batches
        for idx in _batches(order, batch_size):
            items = [EncodedExample(tuple(contexts[i]), len(contexts[i])) for i in idx]
            width = plm.n_prompt + max(len(it.ids) for it in items) + max(len(s) for s in suffix)
            if window is not None and width > window:
                # Sliding-window layers count cache slots, not positions: padding inside the
                # cache would shift the window, so score whole sequences instead.
                scores[idx] = _score_full(plm, items, suffix, pad, length_normalise)
            else:
                batch = collate(items, pad).to(plm.device)
                scores[idx] = _score_suffixes(plm, batch, suffix, length_normalise, log_probs).cpu()
    best = scores.argmax(dim=1).tolist()
    return [labels[i] for i in best], scores


def _score_full(
    plm: PromptedLM,
    items: Sequence[EncodedExample],
    suffixes: Sequence[Sequence[int]],
    pad: int,
    length_normalise: bool,
) -> torch.Tensor:
    """Reference path: one full sequence per (context, suffix)."""
    seqs = [EncodedExample((*it.ids, *s), len(it.ids)) for it in items for s in suffixes]
    lp = target_logprobs(plm, collate(seqs, pad)).cpu()
    value = lp[:, 0] / lp[:, 1] if length_normalise else lp[:, 0]
    return value.view(len(items), len(suffixes))


def _score_suffixes(
    plm: PromptedLM,
    batch: Batch,
    suffixes: Sequence[Sequence[int]],
    length_normalise: bool,
    log_probs: bool = True,
) -> torch.Tensor:
    """(B, n_suffixes) summed log-probs of each suffix after each right-padded context; with
    ``log_probs`` False (not with ``length_normalise``) each row less one constant, its
    log-normaliser at the decoding token (same ranking and softmax over the suffixes)."""
    log_probs = log_probs or length_normalise
    n_rows, n_suf = batch.input_ids.shape[0], len(suffixes)
    longest = max(len(s) for s in suffixes)
    out = plm.forward(
        batch.input_ids, batch.attention_mask, use_cache=longest > 1, share_prompt=True
    )
    last = out.hidden[torch.arange(n_rows), batch.lengths - 1]
    first = torch.tensor([s[0] for s in suffixes], device=plm.device)
    scores = _first_scores(plm, last, first, log_probs)  # (B, n_suf)
    if longest > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_suf)
        # Feed suffix tokens 0..n-2 to predict tokens 1..n-1, at the positions that follow each
        # row's own context (its padding is masked), in every layer's cache.
        width = longest - 1
        feed = torch.zeros(n_rows * n_suf, width, dtype=torch.long, device=plm.device)
        want = torch.zeros_like(feed)
        real = torch.zeros_like(feed, dtype=torch.bool)
        for j, s in enumerate(suffixes):
            if len(s) > 1:
                feed[j::n_suf, : len(s) - 1] = torch.tensor(s[:-1], device=plm.device)
                want[j::n_suf, : len(s) - 1] = torch.tensor(s[1:], device=plm.device)
                real[j::n_suf, : len(s) - 1] = True
        context_mask = plm.mask_with_prompt(batch.attention_mask)
        mask = torch.cat([context_mask.repeat_interleave(n_suf, 0), torch.ones_like(feed)], dim=1)
        start = (batch.lengths + plm.n_prompt).repeat_interleave(n_suf)[:, None]
        positions = start + torch.arange(width, device=plm.device)[None]
        step = plm.forward(feed, mask, position_ids=positions, past_key_values=cache)
        token_lp = plm.token_log_probs(step.hidden[real], want[real][:, None])[:, 0]
        rows = torch.nonzero(real, as_tuple=True)[0]
        extra = torch.zeros(n_rows * n_suf, device=plm.device).index_add(0, rows, token_lp)
        scores = scores + extra.view(n_rows, n_suf)
    if length_normalise:
        scores = scores / torch.tensor([len(s) for s in suffixes], device=plm.device)[None]
    return scores


@torch.no_grad()
def generate(
    plm: PromptedLM,
    formatter: TaskFormatter,
    examples: Sequence[Example],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> list[str]:
    """Greedy decoding after the context until eos or ``max_new_tokens``.

    Batches are left-padded with explicit position ids, so every example sees exactly the
    positions it sees in training (prompt first, then its own tokens)."""
    contexts = [formatter.encode_context(ex, reserve=max_new_tokens) for ex in examples]
    outputs: list[list[int]] = [[] for _ in examples]
    order = sorted(range(len(examples)), key=lambda i: len(contexts[i]))
    pad = formatter.tokenizer.pad_token_id
    eos = formatter.eos_id
    for idx in _batches(order, batch_size):
        width = max(len(contexts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            n = len(contexts[i])
            ids[row, width - n :] = torch.tensor(contexts[i])
            mask[row, width - n :] = 1
        ids, mask = ids.to(plm.device), mask.to(plm.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        out = plm.forward(ids, mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        full_mask = plm.mask_with_prompt(mask)
        next_pos = positions[:, -1:] + 1 + plm.n_prompt
        last = out.hidden[:, -1]
        done = torch.zeros(len(idx), dtype=torch.bool, device=plm.device)
        for _ in range(max_new_tokens):
            token = plm.logits(last).argmax(-1)
            token = torch.where(done, torch.full_like(token, eos), token)
            for row, i in enumerate(idx):
                if not done[row] and int(token[row]) != eos:
                    outputs[i].append(int(token[row]))
            done |= token == eos
            if bool(done.all()):
                break
            full_mask = torch.cat([full_mask, torch.ones_like(full_mask[:, :1])], 1)
            step = plm.forward(
                token[:, None],
                full_mask,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache = step.past_key_values
            next_pos = next_pos + 1
            last = step.hidden[:, -1]
    return [formatter.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outputs]
