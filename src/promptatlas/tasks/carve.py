"""Deterministic carving of splits and sampling (fixed seed 42, ``random.Random``).

Everything here is a pure function of its inputs and the seed, so the bundled sample and the
full-data loaders agree across machines and Python versions (``random.Random`` with an integer
seed and ``shuffle`` are stable). Outputs keep the items' original relative order, so a
``limit`` prefix of a split is as mixed as the source file.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")
SEED = 42


def _round_half_up(x: float) -> int:
    return int(x + 0.5)


def _strata(n: int, key: Callable[[int], Hashable] | None) -> list[list[int]]:
    """Indices grouped by stratum, strata in sorted order of their key's repr (deterministic)."""
    if key is None:
        return [list(range(n))]
    groups: dict[Hashable, list[int]] = {}
    for i in range(n):
        groups.setdefault(key(i), []).append(i)
    return [groups[k] for k in sorted(groups, key=repr)]


def carve(
    items: Sequence[T],
    fraction: float,
    *,
    key: Callable[[T], Hashable] | None = None,
    seed: int = SEED,
) -> tuple[list[T], list[T]]:
    """Split ``items`` into ``(rest, held_out)``; ``held_out`` takes ``fraction`` of each stratum.

    With ``key`` (e.g. the label) the split is stratified: every stratum contributes
    ``round(fraction * size)`` items, so class proportions are preserved.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = random.Random(seed)
    held: set[int] = set()
    strata = _strata(len(items), None if key is None else (lambda i: key(items[i])))
    for idx in strata:
        order = idx[:]
        rng.shuffle(order)
        held.update(order[: _round_half_up(fraction * len(order))])
    rest = [x for i, x in enumerate(items) if i not in held]
    out = [x for i, x in enumerate(items) if i in held]
    return rest, out


def carve_groups(
    group_ids: Sequence[Hashable], dev_fraction: float, test_fraction: float, *, seed: int = SEED
) -> dict[Hashable, str]:
    """Assign whole groups (e.g. QA articles) to ``train``/``dev``/``test``.

    Distinct ids are shuffled (in first-seen order, then ``Random(seed)``); the first
    ``round(test_fraction * n)`` go to test, the next ``round(dev_fraction * n)`` to dev, the
    rest to train. Splitting by group keeps every question of an article in one split.
    """
    distinct = list(dict.fromkeys(group_ids))
    order = distinct[:]
    random.Random(seed).shuffle(order)
    n_test = _round_half_up(test_fraction * len(order))
    n_dev = _round_half_up(dev_fraction * len(order))
    assign: dict[Hashable, str] = {}
    for j, g in enumerate(order):
        assign[g] = "test" if j < n_test else "dev" if j < n_test + n_dev else "train"
    return assign


def balanced_quota(sizes: Sequence[int], n: int) -> list[int]:
    """How many items to take from each class so that ``n`` are taken as evenly as possible.

    Classes too small for an even share give all they have; the shortfall is spread over the
    others (water-filling). Any indivisible remainder goes one each to the earliest classes.
    """
    quota = [0] * len(sizes)
    remaining = min(n, sum(sizes))
    open_ = [i for i, s in enumerate(sizes) if s > 0]
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:
            for i in open_[:remaining]:
                quota[i] += 1
            break
        for i in open_:
            take = min(share, sizes[i] - quota[i])
            quota[i] += take
            remaining -= take
        open_ = [i for i in open_ if quota[i] < sizes[i]]
    return quota


def sample(
    items: Sequence[T],
    limit: int,
    *,
    key: Callable[[T], str] | None = None,
    classes: Sequence[str] | None = None,
    seed: int = SEED,
) -> list[T]:
    """At most ``limit`` items; class-balanced over ``classes`` when ``key`` is given.

    Balanced means an equal number per class where possible (:func:`balanced_quota`), not the
    source proportions. The result keeps the source order.
    """
    if len(items) <= limit:
        return list(items)
    rng = random.Random(seed)
    if key is None:
        chosen = set(rng.sample(range(len(items)), limit))
    else:
        names = list(classes) if classes is not None else sorted({key(x) for x in items})
        by_class: dict[str, list[int]] = {c: [] for c in names}
        for i, x in enumerate(items):
            by_class.setdefault(key(x), []).append(i)
        names = list(by_class)
        quota = balanced_quota([len(by_class[c]) for c in names], limit)
        chosen = set()
        for c, q in zip(names, quota, strict=True):
            idx = by_class[c][:]
            rng.shuffle(idx)
            chosen.update(idx[:q])
    return [x for i, x in enumerate(items) if i in chosen]
