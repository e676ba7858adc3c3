"""Typed, validated prompt configuration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from promptatlas.configtools import ConfigBase, ConfigError

__all__ = ["Init", "Method", "PromptConfig", "PromptConfigError", "SegmentConfig"]

Method = Literal["v1", "v2"]
Init = Literal["auto", "uniform", "vocab", "labels"]
KVMode = Literal["separate", "shared"]


class PromptConfigError(ConfigError):
    """An invalid prompt configuration."""


@dataclass(frozen=True)
class SegmentConfig(ConfigBase):
    """One named run of prompt positions (e.g. a language or a task sub-prompt)."""

    config_error: ClassVar[type[ConfigError]] = PromptConfigError

    name: str
    length: int
    trainable: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise PromptConfigError(
                f"segment name {self.name!r} must be non-empty letters/digits/-/_"
            )
        if self.length < 1:
            raise PromptConfigError(f"segment {self.name!r}: length must be ≥ 1, got {self.length}")


@dataclass(frozen=True)
class PromptConfig(ConfigBase):
    """What kind of soft prompt to build.

    method: "v1" (Lester et al.: k vectors before the input embeddings) or "v2" (P-tuning v2:
        a k-position prefix of keys/values in every chosen layer).
    length: total number of prompt positions when ``segments`` is not given (one segment
        named "task").
    kv: v2 only. "shared" = one k×d_kv tensor per layer used as both key and value (the
        thesis's variant, and the default); "separate" = distinct key and value prefixes
        (original P-tuning v2, = PEFT prefix tuning).
    layers: v2 only; the layers that get a prefix (None = all). Layers left out get no prefix.
    init: "uniform" in ±init_range (thesis), "vocab" (embeddings of random vocabulary tokens;
        for v2, their key/value projections), or "labels" (embeddings of the task's label
        words, cycled).
    segments: named segments, each trainable or frozen; their lengths sum to the prompt length.
    """

    method: Method = "v1"
    length: int = 20
    kv: KVMode = "shared"
    layers: tuple[int, ...] | None = None
    init: Init = "auto"  # the method's default (promptatlas.defaults); the thesis used "uniform"
    init_range: float = 0.5
    segments: tuple[SegmentConfig, ...] = field(default=())

    config_error: ClassVar[type[ConfigError]] = PromptConfigError

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in ("v1", "v2"):
            raise PromptConfigError(f"method must be 'v1' or 'v2', got {self.method!r}")
        if self.kv not in ("separate", "shared"):
            raise PromptConfigError(f"kv must be 'separate' or 'shared', got {self.kv!r}")
        if self.init not in ("auto", "uniform", "vocab", "labels"):
            raise PromptConfigError(
                f"init must be 'auto', 'uniform', 'vocab' or 'labels', got {self.init!r}"
            )
        if self.init_range <= 0:
            raise PromptConfigError("init_range must be positive")
        segs = tuple(
            s if isinstance(s, SegmentConfig) else SegmentConfig(**s) for s in self.segments
        )
        if not segs:
            if self.length < 1:
                raise PromptConfigError(f"length must be ≥ 1, got {self.length}")
            segs = (SegmentConfig("task", self.length),)
        names = [s.name for s in segs]
        if len(set(names)) != len(names):
            raise PromptConfigError(f"segment names must be unique, got {names}")
        total = sum(s.length for s in segs)
        if self.segments and self.length not in (total, PromptConfig.length):
            raise PromptConfigError(
                f"length {self.length} does not equal the sum of segment lengths {total}"
            )
        object.__setattr__(self, "segments", segs)
        object.__setattr__(self, "length", total)
        if self.layers is not None:
            if self.method != "v2":
                raise PromptConfigError("layers applies to v2 prompts only")
            layers = tuple(sorted({int(i) for i in self.layers}))
            if not layers or layers[0] < 0:
                raise PromptConfigError(f"layers must be non-negative indices, got {self.layers}")
            object.__setattr__(self, "layers", layers)

    @property
    def resolved_init(self) -> str:
        """The initialisation used: ``init``, or the method's default when it is "auto"."""
        if self.init != "auto":
            return self.init
        from promptatlas.defaults import defaults_for

        return defaults_for(self.method).init

    def layer_indices(self, n_layers: int) -> tuple[int, ...]:
        """The v2 layers for a model with ``n_layers``; error if a layer does not exist."""
        if self.layers is None:
            return tuple(range(n_layers))
        bad = [i for i in self.layers if i >= n_layers]
        if bad:
            raise PromptConfigError(
                f"prompt layers {bad} do not exist: the model has {n_layers} layers "
                f"(0–{n_layers - 1})"
            )
        return self.layers

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d
