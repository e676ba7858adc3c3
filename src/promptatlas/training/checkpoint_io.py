"""Checkpoint files that hold no pickle: tensors in safetensors, everything else as JSON.

A checkpoint is one safetensors file. Its tensors are the caller's (prompt segments, optimiser
moments, a kept best prompt, under prefixes such as ``prompt.``); everything else (step,
history, scheduler, optimiser hyper-parameters, a configuration fingerprint) is one JSON
document stored in the file's header under :data:`HEADER_KEY`. Opening a checkpoint someone
shared therefore runs no code, unlike ``torch.load(weights_only=False)``.

One file keeps the write atomic: it is written to a temporary file beside the target, flushed
to disk and renamed over it (:func:`promptatlas.io.write_bytes_atomic`), so a reader sees the
old checkpoint or the new one, never half of one. This is the layout the trainer writes
(``checkpoint.safetensors``), so checkpoints written before this module read the same.

:func:`optimizer_to_checkpoint` / :func:`optimizer_from_checkpoint` split a torch optimiser's
``state_dict`` into its tensors (``optimizer.{param index}.{name}``) and a JSON structure (param
groups and the non-tensor state) and put it back together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from promptatlas.io import write_bytes_atomic

__all__ = [
    "HEADER_KEY",
    "OPTIMIZER_PREFIX",
    "CheckpointError",
    "load_checkpoint",
    "optimizer_from_checkpoint",
    "optimizer_to_checkpoint",
    "prefixed",
    "save_checkpoint",
    "unprefixed",
]

HEADER_KEY = "promptatlas_checkpoint"
OPTIMIZER_PREFIX = "optimizer."


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (a foreign or damaged file); the message says what to do."""


def _check_json(state: Mapping[str, Any]) -> str:
    """``state`` as JSON text (NaN and infinities as JSON's NaN/Infinity extension, which
    ``json`` reads back); a value JSON cannot hold is an error naming where it is."""

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            raise TypeError(
                f"checkpoint state {where} is a tensor; pass tensors in the tensors mapping "
                "(the state is JSON)"
            )
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"checkpoint state {where} has the key {key!r}; JSON keys are strings"
                    )
                walk(item, f"{where}.{key}")
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        elif value is not None and not isinstance(value, str | int | float | bool):
            raise TypeError(
                f"checkpoint state {where} is a {type(value).__name__}, which JSON cannot hold; "
                "store it as numbers, strings, lists and mappings"
            )

    walk(state, "state")
    return json.dumps(dict(state))


def _detached(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous copies where needed; tensors sharing storage are copied apart (safetensors
    refuses aliases)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"checkpoint tensor {name!r} is a {type(value).__name__}, not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        if tensor.numel():
            storage = tensor.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
                tensor = tensor.clone()
            seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def save_checkpoint(
    path: str | Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``state`` as one checkpoint file, atomically.

    Tensors are saved on the CPU with their dtypes; ``state`` comes back from
    :func:`load_checkpoint` as JSON returns it (tuples as lists). A state value JSON cannot hold
    (a tensor, an object) is a ``TypeError`` naming where it is, raised before anything is
    written. The parent folder is created. Returns the path."""
    from safetensors.torch import save

    target = Path(path)
    header = _check_json(state)
    payload = save(_detached(tensors), metadata={HEADER_KEY: header, "format": "pt"})
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(target, payload)
    return target


def load_checkpoint(
    path: str | Path, *, fix: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors (on the CPU) and the state of a checkpoint written by :func:`save_checkpoint`.

    Never unpickles anything. A missing, foreign (a safetensors file without a checkpoint
    header) or damaged file raises :class:`CheckpointError`; ``fix`` is the advice it ends with
    (default: delete the file to start over)."""
    from safetensors import safe_open

    source = Path(path)
    advice = fix or f"delete {source} to start over"
    if not source.is_file():
        raise CheckpointError(f"checkpoint {source} does not exist")
    try:
        with safe_open(str(source), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError, OSError, ValueError: not a safetensors file
        raise CheckpointError(
            f"{source} is not a promptatlas checkpoint or is damaged ({exc}); {advice}"
        ) from exc
    try:
        state = json.loads(meta[HEADER_KEY])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{source} is a safetensors file but not a promptatlas checkpoint; {advice}"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} has a damaged checkpoint header; {advice}")
    return tensors, state


# -- helpers ------------------------------------------------------------------------------------


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every name prefixed (``prompt.`` + segment name)."""
    return {f"{prefix}{name}": value for name, value in tensors.items()}


def unprefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors whose name starts with ``prefix``, with the prefix removed."""
    return {name[len(prefix) :]: v for name, v in tensors.items() if name.startswith(prefix)}


def optimizer_to_checkpoint(
    optimizer: torch.optim.Optimizer | Mapping[str, Any], prefix: str = OPTIMIZER_PREFIX
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser (or its ``state_dict()``) as tensors (``{prefix}{param index}.{name}``) and
    a JSON structure (``param_groups`` and the non-tensor per-parameter state)."""
    data = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in data["state"].items():
        plain: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                plain[key] = value
        plain_state[str(index)] = plain
    return tensors, {"param_groups": data["param_groups"], "state": plain_state}


def optimizer_from_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    structure: Mapping[str, Any],
    prefix: str = OPTIMIZER_PREFIX,
) -> dict[str, Any]:
    """The ``state_dict`` for ``optimizer.load_state_dict`` from :func:`optimizer_to_checkpoint`'s
    two parts (``tensors`` may hold other tensors too: only ``prefix`` ones are used)."""
    state: dict[int, dict[str, Any]] = {
        int(index): dict(values) for index, values in structure["state"].items()
    }
    for key, value in unprefixed(prefix, tensors).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": structure["param_groups"]}
