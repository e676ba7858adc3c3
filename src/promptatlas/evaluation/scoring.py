"""How rank classification scores label words of different token lengths.

A label word of several tokens gets a summed log-probability that is lower than a one-token
word's almost by construction (each token adds a negative term), so summed scoring favours
short label words: with SmolLM2's tokenizer "neutral" is one token and "entailment" three, and
an untrained prompt then answers "neutral" for nearly every example. Three scorings:

* ``sum``: the summed log-probability of the label word's tokens (SPEC §2);
* ``mean`` (``length_normalise``): that sum divided by the number of tokens;
* ``first``: the log-probability of the label word's first token only.

When every label word has the same number of tokens, sum and mean rank the labels identically.
The default is ``sum``: measured on SmolLM2-135M (README "Your own task"), no scoring removes
the bias of an *untrained* prompt reliably, and after training with the rank objective summed
scoring scored at least as well as the others. Label words of different token counts under
summed scoring get a warning (:func:`check_label_words`); ``tasks --check`` shows the counts.
"""

from __future__ import annotations

import warnings
from typing import Any

from promptatlas.formatting import TaskFormatter

__all__ = [
    "check_label_words",
    "label_token_counts",
    "resolve_length_normalise",
    "uneven_label_words",
]

_WARNED: set[tuple[str, str]] = set()


def label_token_counts(formatter: TaskFormatter) -> dict[str, int]:
    """Tokens of each label word (classification tasks), in label order."""
    ids = formatter.label_token_ids()
    return {lab: len(ids[lab]) for lab in formatter.task.labels}


def uneven_label_words(formatter: TaskFormatter) -> bool:
    """True when the task's label words differ in token count under this tokenizer."""
    if formatter.task.spec.kind != "classification":
        return False
    return len(set(label_token_counts(formatter).values())) > 1


def resolve_length_normalise(config: Any, formatter: TaskFormatter) -> bool:
    """The ``length_normalise`` a run uses: the config's (None, e.g. a config written by hand:
    True exactly when the label words differ in token count); no config: False."""
    value = False if config is None else getattr(config, "length_normalise", False)
    if value is None:
        return uneven_label_words(formatter)
    return bool(value)


def check_label_words(formatter: TaskFormatter, config: Any = None) -> str | None:
    """Warn (once per task and tokenizer) when the scoring in use is unfair to the label words:
    summed scoring with label words of different token lengths, or first-token scoring with
    two label words that share their first token. Returns the message."""
    if formatter.task.spec.kind != "classification":
        return None
    counts = label_token_counts(formatter)
    shown = ", ".join(f"{formatter.task.verbalizers[lab]!r} {n}" for lab, n in counts.items())
    message = None
    if getattr(config, "first_token", False):
        firsts = [ids[0] for ids in formatter.label_token_ids().values()]
        if len(set(firsts)) < len(firsts):
            message = (
                f"label words of {formatter.task.name} share a first token (tokens: {shown}); "
                "first-token scoring cannot tell them apart: use summed or mean scoring, or "
                "other label words"
            )
    elif not resolve_length_normalise(config, formatter) and len(set(counts.values())) > 1:
        message = (
            f"label words of {formatter.task.name} differ in token count ({shown}) and are "
            "scored by summed log-probability, which favours the shortest word before training; "
            "check untrained scores against the majority baseline, or use label words of one "
            "token each (promptatlas tasks --check shows the counts; --scoring mean or first "
            "scores differently)"
        )
    if message is not None:
        key = (formatter.task.name + message, str(getattr(formatter.tokenizer, "name_or_path", "")))
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(message, stacklevel=2)
    return message
