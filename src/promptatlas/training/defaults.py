"""The training defaults table (:mod:`promptatlas.defaults`), under the training package."""

from promptatlas.defaults import DEFAULTS, MethodDefaults, default_lr, defaults_for, describe_lr

__all__ = ["DEFAULTS", "MethodDefaults", "default_lr", "defaults_for", "describe_lr"]
