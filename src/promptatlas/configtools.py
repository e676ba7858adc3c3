"""Strict mapping → config dataclass conversion, shared by every config that YAML or JSON fills.

Experiment and grid files, ``RunConfig.from_dict``, language-prompt and projection configs all
turn plain mappings into frozen dataclasses through :func:`from_dict`. It checks each value
against the dataclass annotations (``int``, ``float``, ``str``, ``bool``, ``Optional``/unions,
``Literal``, tuples, mappings and nested dataclasses) *before* the dataclass sees it, so a wrong
type or a misspelt key ends in one :class:`ConfigError` naming the field path (``train.steps``),
the expected type and the valid keys, instead of a Python-internal message from a comparison
deep inside ``__post_init__``.

Conversions: lists become tuples where a tuple is annotated, mappings become nested
dataclasses, integers are accepted for floats, and a string holding a number for a float
(YAML 1.1 reads ``1e-3`` as a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Self, TypeVar, Union

__all__ = [
    "PRECISIONS",
    "ConfigBase",
    "ConfigError",
    "Precision",
    "check_fields",
    "config_hash",
    "from_dict",
]

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration value or key; the message names the field path."""


# Numeric precision of a forward pass: "auto" (bf16 autocast where the hardware runs it natively,
# else fp32), "fp32" or "bf16". One type for every config that has a ``precision`` field.
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


class ConfigBase:
    """The base of every frozen config dataclass.

    * :meth:`from_dict` — strict conversion from a mapping (YAML, JSON): unknown keys, wrong
      types and missing fields end in one :attr:`config_error` naming the field;
    * :meth:`to_dict` — the plain mapping (``dataclasses.asdict``);
    * ``__post_init__`` — the checks every config shares (today ``precision``); a subclass with
      its own ``__post_init__`` calls ``super().__post_init__()`` first and raises
      :meth:`invalid` (a :class:`ConfigError`) for its own rules.
    """

    config_error: ClassVar[type[ConfigError]] = ConfigError

    def __post_init__(self) -> None:
        precision = getattr(self, "precision", "auto")
        if precision not in PRECISIONS or not isinstance(precision, str):
            raise self.invalid(
                "precision", f"expected {_expected(Precision)}, got {_show(precision)}"
            )

    @classmethod
    def from_dict(cls, data: Any, *, path: str = "") -> Self:
        """A config from a mapping; see :func:`from_dict`."""
        return from_dict(cls, data, path=path, error=cls.config_error)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def invalid(cls, field: str, message: str) -> ConfigError:
        """The error for an invalid value of ``field`` (``"field: message"``)."""
        return cls.config_error(f"{field}: {message}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError:  # an annotation that cannot be resolved here: leave that field unchecked
        return {f.name: Any if isinstance(f.type, str) else f.type for f in dataclasses.fields(cls)}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def from_dict(
    cls: type[T],
    data: Any,
    *,
    path: str = "",
    error: type[ValueError] = ConfigError,
) -> T:
    """``cls(**data)`` after :func:`check_fields`; an instance of ``cls`` is returned as is."""
    if isinstance(data, cls):
        return data
    return _build(cls, data, path, error)


def _build(cls: type[T], data: Any, path: str, error: type[ValueError]) -> T:
    """``cls`` from ``data`` checked by :func:`check_fields`, with every required field given."""
    values = check_fields(cls, data, path=path, error=error)
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in values
    ]
    if missing:
        more = f" (and {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise error(f"{_join(path, missing[0])}: missing; this field is required{more}")
    return cls(**values)


def check_fields(
    cls: type,
    data: Any,
    *,
    path: str = "",
    error: type[ValueError] = ConfigError,
) -> dict[str, Any]:
    """``data`` checked against the fields of dataclass ``cls``: every key known and every value
    of its annotated type. Returns the converted values (keys left out are left out, so a
    partial mapping such as a per-task override can be checked too).

    ``path`` prefixes field names in messages (``"train"`` → ``train.steps``); ``error`` is the
    exception class raised (a subclass of :class:`ValueError`; default :class:`ConfigError`).
    """
    if not isinstance(data, Mapping):
        raise error(
            f"{path or cls.__name__}: expected a mapping of {cls.__name__} options "
            f"(key: value), got {_show(data)}"
        )
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = str(unknown[0])
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        others = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise error(
            f"{_join(path, key)}: unknown key{hint}{others}; valid keys"
            f"{' of ' + path if path else ''}: {', '.join(fields)}"
        )
    hints = _hints(cls)
    return {k: _convert(v, hints.get(k, Any), _join(path, str(k)), error) for k, v in data.items()}


def _convert(value: Any, tp: Any, path: str, error: type[ValueError]) -> Any:
    """``value`` as type ``tp``, or ``error`` naming ``path``."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            try:
                return _convert(value, options[0], path, error)
            except error as exc:
                if not str(exc).startswith(f"{path}: expected "):
                    raise  # a problem inside the value (a nested field): keep its path
                raise _wrong(value, tp, path, error) from None
        for option in options:
            try:
                return _convert(value, option, path, error)
            except error:
                continue
        raise _wrong(value, tp, path, error)
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        raise _wrong(value, tp, path, error)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(value, tp, path, error)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(value, tp, path, error)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _wrong(value, tp, path, error)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong(value, tp, path, error)
    if tp is type(None):
        if value is None:
            return None
        raise _wrong(value, tp, path, error)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong(value, tp, path, error)
        return _build(tp, value, path, error)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _wrong(value, tp, path, error)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _wrong(value, tp, path, error)
            pairs = zip(args, value, strict=True)
            items = [_convert(v, a, f"{path}[{i}]", error) for i, (a, v) in enumerate(pairs)]
        else:
            item = args[0] if args else Any
            items = [_convert(v, item, f"{path}[{i}]", error) for i, v in enumerate(value)]
        return list(items) if origin is list or tp is list else tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _wrong(value, tp, path, error)
        key_tp, val_tp = args if len(args) == 2 else (Any, Any)
        return {
            _convert(k, key_tp, path, error): _convert(v, val_tp, _join(path, str(k)), error)
            for k, v in value.items()
        }
    return value  # a type this helper does not check (left to the dataclass)


def _wrong(value: Any, tp: Any, path: str, error: type[ValueError]) -> ValueError:
    return error(f"{path}: expected {_expected(tp)}, got {_show(value)}")


def _expected(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        parts = [_expected(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} options"
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} items"
        item = args[0] if args else Any
        return "a list" if item is Any else f"a list of {_plural(item)}"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _plural(tp: Any) -> str:
    names = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
    return names.get(tp, _expected(tp) + " items")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return f"a list {list(value)!r}" if len(value) <= 5 else "a list"
    return repr(value)


def config_hash(data: Any) -> str:
    """A short stable hash of a JSON-able config (key order does not matter): the identity of
    a resolved configuration, e.g. in the cell keys of experiments and grids."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
