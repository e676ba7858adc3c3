"""The training defaults of each prompt method, in one table.

Every place that needs a default — :class:`~promptatlas.training.TrainConfig` (``lr=None``,
``objective="auto"``), :class:`~promptatlas.prompts.PromptConfig` (``init="auto"``), the CLI's
options and help texts, the experiment files and the docs — reads it from here, so there is one
copy. It sits in the ground layer (no imports) so that prompts and training can both read it.

The values come from a measured sweep on Gemma-3-270M (``scripts/sweep_defaults.py``; the
table with seeds, steps to target and final dev scores is in ``docs/defaults.md``): the
setting that reached the target dev score in the fewest steps without losing final score.
The sweep ran on Gemma-3-270M only; other families use the same rows until a measurement says
they need their own. ``language_lr`` was not swept. The rule for the choice is in the docs:
within the sweep's noise, the lower, steadier rate wins.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DEFAULTS", "MethodDefaults", "default_lr", "defaults_for", "describe_lr"]


@dataclass(frozen=True)
class MethodDefaults:
    """Defaults of one prompt method.

    init: how a task prompt starts (PromptConfig.init).
    lr: AdamW learning rate of a task prompt.
    objective: training loss for classification tasks ("rank": cross-entropy over the labels'
        rank-classification scores; "lm": −log p(y, eos)); generation tasks always use "lm".
    schedule, warmup: learning-rate schedule after a linear warm-up over that fraction.
    language_lr: learning rate of a language sub-prompt (raw-text LM loss; not swept).
    """

    init: str
    lr: float
    objective: str
    schedule: str
    warmup: float
    language_lr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS: dict[str, MethodDefaults] = {
    "v1": MethodDefaults(
        init="vocab", lr=0.1, objective="rank", schedule="linear", warmup=0.1, language_lr=0.1
    ),
    "v2": MethodDefaults(
        init="uniform", lr=0.1, objective="rank", schedule="linear", warmup=0.1, language_lr=0.03
    ),
}


def defaults_for(method: str) -> MethodDefaults:
    """The defaults of ``method`` ("v1" or "v2")."""
    try:
        return DEFAULTS[method]
    except KeyError:
        raise ValueError(
            f"no defaults for method {method!r}; methods: {', '.join(DEFAULTS)}"
        ) from None


def default_lr(method: str, *, language: bool = False) -> float:
    """The default learning rate of a task prompt (or a language prompt) of ``method``."""
    d = defaults_for(method)
    return d.language_lr if language else d.lr


def describe_lr(*, language: bool = False) -> str:
    """e.g. "0.1 for v1, 0.1 for v2" — for help texts."""
    return ", ".join(f"{default_lr(m, language=language)} for {m}" for m in DEFAULTS)
