"""The prompt bank: a trained prompt is a directory with two files.

``prompt.safetensors`` holds one tensor per segment, named by segment, in the segment layout of
:class:`~promptatlas.prompts.SoftPrompt` (v1 (k, d_model); v2 shared (L, k, d_kv); v2 separate
(L, 2, k, d_kv)). ``prompt.json`` holds :class:`PromptMetadata`: the model the prompt was trained
on (name, weights fingerprint, geometry), the prompt configuration, task/language/seed, metrics,
the full run configuration and library versions.

A prompt directory belongs to the bank: :func:`save_prompt` writes a complete new directory
beside the target and renames it into place, so a reader sees either the old prompt or the new
one, never a mix or a half-written file.
"""

from __future__ import annotations

import dataclasses
import platform
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

from promptatlas.bank._atomic import atomic_directory
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.formatting import FormatConfig
from promptatlas.io import dumps_json, read_json_object, write_text_atomic
from promptatlas.models.adapters import ModelGeometry
from promptatlas.models.registry import ModelHandle
from promptatlas.outputs import OutputPathError, check_output_path
from promptatlas.prompts.config import PromptConfig, PromptConfigError
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "TENSORS_FILE",
    "PromptExistsError",
    "PromptLoadError",
    "PromptMetadata",
    "StoredPrompt",
    "StoredRunSettings",
    "check_compatible",
    "check_prompt_target",
    "list_prompts",
    "load_prompt",
    "read_metadata",
    "save_prompt",
    "update_metrics",
    "versions",
]

FORMAT_VERSION = 1
TENSORS_FILE = "prompt.safetensors"
METADATA_FILE = "prompt.json"
_PROMPT_FILES = frozenset({TENSORS_FILE, METADATA_FILE})


class PromptLoadError(ValueError):
    """A stored prompt cannot be loaded; the message names the file, the problem and the fix."""


class PromptExistsError(OutputPathError):
    """The target already holds a prompt and replacing it was not asked for (``overwrite``)."""


@dataclass(frozen=True)
class StoredRunSettings:
    """The settings of the run that made a prompt (``prompt.json`` ``config``), typed, as later
    commands reuse them: the input format, the evaluation options (a mapping, so options given
    later override single keys; :attr:`eval` builds the config) and the precision."""

    format: FormatConfig
    eval_options: dict[str, Any]
    precision: str

    @classmethod
    def from_config(cls, config: Any) -> StoredRunSettings:
        """From a stored run config; missing or malformed parts fall back to the defaults."""
        config = config if isinstance(config, Mapping) else {}
        fmt, options = config.get("format"), config.get("eval")
        return cls(
            format=FormatConfig(**fmt) if isinstance(fmt, Mapping) else FormatConfig(),
            eval_options=dict(options) if isinstance(options, Mapping) else {},
            precision=str(config.get("precision", "auto")),
        )

    @property
    def eval(self) -> EvalConfig:
        return EvalConfig(**self.eval_options)


@dataclass(frozen=True)
class PromptMetadata:
    """Everything in ``prompt.json``."""

    format_version: int
    model: str  # registry name / path the prompt was trained on
    model_fingerprint: str  # ModelHandle.fingerprint
    geometry: dict[str, int]  # dataclasses.asdict(ModelGeometry)
    prompt: dict[str, Any]  # PromptConfig.to_dict(), with the actual trainable flags
    task: str | None
    lang: str | None
    seed: int | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, str]
    created: str  # ISO-8601 UTC
    num_parameters: int
    extra: dict[str, Any]
    # Where the weights were loaded from (ModelHandle.source); PEFT exports use it as
    # base_model_name_or_path. Defaulted so metadata written without it still reads.
    model_source: str = ""
    # The task the prompt was trained on, as a task file with absolute data paths (so the
    # prompt is evaluated without the original file), and the SHA-256 of its data files (so
    # a changed data file is noticed). None for language prompts and older prompts.
    task_definition: dict[str, Any] | None = None
    data_files: dict[str, dict[str, str]] | None = None

    @property
    def prompt_config(self) -> PromptConfig:
        return PromptConfig.from_dict(self.prompt)

    @property
    def run(self) -> StoredRunSettings:
        """The stored run config's format, evaluation options and precision, typed."""
        return StoredRunSettings.from_config(self.config)

    @property
    def model_geometry(self) -> ModelGeometry:
        return ModelGeometry(**self.geometry)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class StoredPrompt:
    path: Path
    prompt: SoftPrompt
    meta: PromptMetadata


_OPTIONAL = ("model_source", "task_definition", "data_files")
_REQUIRED = tuple(f.name for f in dataclasses.fields(PromptMetadata) if f.name not in _OPTIONAL)


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that determine a run's numbers, and
    the hardware they ran on (CPU model, PyTorch's CPU capability and the flags that decide
    precision and speed; the GPU when there is one)."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("promptatlas", "torch", "transformers", "peft", "safetensors"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "not installed"
    from promptatlas.models.precision import cpu_info

    cpu = cpu_info()
    out["cpu"] = cpu["model"]
    out["cpu_capability"] = cpu["capability"]
    out["cpu_flags"] = " ".join(cpu["flags"])
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _dumps(data: Mapping[str, Any]) -> str:
    return dumps_json(data)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# -- saving ---------------------------------------------------------------------------------


def _prompt_dict(prompt: SoftPrompt) -> dict[str, Any]:
    """The prompt config with each segment's *current* trainable flag: set_trainable() may have
    changed it after construction, and a reloaded prompt must freeze the same segments."""
    data = prompt.config.to_dict()
    for seg in data["segments"]:
        seg["trainable"] = bool(prompt.segments[seg["name"]].requires_grad)
    return data


def _describe_existing(target: Path) -> str:
    try:
        meta = read_metadata(target)
    except PromptLoadError:
        return "an unreadable prompt"
    if meta.task:
        what = f"the {meta.task}-{meta.lang} prompt"
    elif meta.lang:
        what = f"the {meta.lang} language prompt"
    else:
        what = "a prompt"
    return f"{what} ({meta.prompt.get('method', '?')} on {meta.model}, saved {meta.created})"


def check_prompt_target(
    directory: str | Path, *, overwrite: bool = False, option: str = "--out"
) -> Path:
    """Check, before any work, that a prompt directory can be written at ``directory``.

    The path must be writable (:func:`~promptatlas.outputs.check_output_path`); an existing
    prompt there is replaced only with ``overwrite`` (:class:`PromptExistsError` otherwise), so a
    second run never silently takes the place of the first. Returns the absolute path.
    """
    target = check_output_path(
        directory, kind="directory", what="prompt directory", owned_files=_PROMPT_FILES,
        option=option,
    )  # fmt: skip
    if not overwrite and any((target / name).exists() for name in _PROMPT_FILES):
        raise PromptExistsError(
            f"{option} {target} already holds {_describe_existing(target)}; pass --overwrite "
            f"(overwrite=True) to replace it, or choose another {option}"
        )
    return target


def save_prompt(
    directory: str | Path,
    prompt: SoftPrompt,
    handle: ModelHandle,
    *,
    task: str | None = None,
    lang: str | None = None,
    seed: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save ``prompt`` (trained on ``handle``) as a prompt directory and return its path.

    Both files are written to a temporary directory beside ``directory`` which is then renamed
    into place; an existing prompt directory is replaced only with ``overwrite=True`` (else
    :class:`PromptExistsError`) and only after the new one is complete. A non-empty directory
    that is not a prompt directory is never replaced. Files and directory follow the umask.
    """
    target = Path(directory).expanduser().absolute()
    if prompt.geometry != handle.geometry:
        raise ValueError(
            f"cannot save: the prompt was built for "
            f"({_describe_geometry(dataclasses.asdict(prompt.geometry))}) but the model "
            f"{handle.name!r} has ({_describe_geometry(dataclasses.asdict(handle.geometry))})"
        )
    record = _task_record(task, lang, config)
    meta = PromptMetadata(
        format_version=FORMAT_VERSION,
        model=handle.name,
        model_fingerprint=handle.fingerprint,
        geometry=dataclasses.asdict(handle.geometry),
        prompt=_prompt_dict(prompt),
        task=task,
        lang=lang,
        seed=seed,
        metrics=dict(metrics or {}),
        config=dict(config or {}),
        versions=versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        num_parameters=prompt.num_parameters(),
        extra=dict(extra or {}),
        model_source=handle.source or handle.name,
        task_definition=record["definition"] if record else None,
        data_files=record["data"] if record else None,
    )
    # Serialise before touching the disk so a bad config value fails with nothing written.
    text = _dumps(meta.to_dict())
    check_prompt_target(target, overwrite=overwrite, option="path")

    from safetensors.torch import save_file

    with atomic_directory(target, _PROMPT_FILES, "prompt directory") as tmp:
        save_file(prompt.state_tensors(), str(tmp / TENSORS_FILE), metadata={"format": "pt"})
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
    return target


def _task_record(
    task: str | None, lang: str | None, config: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The task definition and data-file hashes of ``task`` (see :class:`PromptMetadata`)."""
    if task is None or lang is None:
        return None
    from promptatlas.tasks.registry import task_record

    data_dir = (config or {}).get("data_dir")
    try:
        return task_record(task, lang, data_dir if isinstance(data_dir, str) else None)
    except OSError:
        return None  # an unreadable data file: the prompt is still saved, without hashes


def update_metrics(directory: str | Path, metrics: Mapping[str, Any]) -> None:
    """Merge ``metrics`` into the stored metrics (nested dicts merge key by key), atomically.

    Not safe against two processes updating the same prompt concurrently (last writer wins)."""
    path = Path(directory) / METADATA_FILE
    raw = _read_json(path)
    _parse_metadata(raw, path)  # refuse to rewrite a file we could not load afterwards
    raw["metrics"] = _deep_merge(dict(raw.get("metrics") or {}), metrics)
    write_text_atomic(path, _dumps(raw))


# -- loading --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.parent.is_dir():
        raise PromptLoadError(f"prompt directory {path.parent} does not exist; check the path")
    if not path.is_file():
        raise PromptLoadError(
            f"{path.name} is missing in {path.parent}; this is not a complete prompt directory "
            "(re-save or re-copy the prompt)"
        )
    return read_json_object(
        path,
        PromptLoadError,
        where=f"{path.name} in {path.parent}",
        fix="restore it from a copy or re-train the prompt",
    )


def _parse_metadata(data: Mapping[str, Any], path: Path) -> PromptMetadata:
    where = f"{path.name} in {path.parent}"
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise PromptLoadError(
            f"{where} has format_version {version!r}; this promptatlas reads version "
            f"{FORMAT_VERSION}. Use the promptatlas version that wrote it (see 'versions' in the "
            "file) or re-train the prompt"
        )
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise PromptLoadError(
            f"{where} lacks the field(s) {missing}; the file is damaged or hand-edited. Restore it "
            "from a copy or re-train the prompt"
        )
    known = {f.name for f in dataclasses.fields(PromptMetadata)}
    # Unknown keys are dropped, so a newer writer adding a field does not break this reader.
    meta = PromptMetadata(**{k: v for k, v in data.items() if k in known})
    try:
        meta.prompt_config  # noqa: B018 - validates the stored prompt configuration
        meta.model_geometry  # noqa: B018
    except (PromptConfigError, TypeError) as exc:
        raise PromptLoadError(
            f"{where} has an invalid prompt configuration or geometry ({exc}); restore it from a "
            "copy or re-train the prompt"
        ) from exc
    return meta


def read_metadata(directory: str | Path) -> PromptMetadata:
    """The metadata of a prompt directory, without reading its tensors. A task definition
    stored in it is registered when its task name is not known yet (so ``get_task`` finds the
    prompt's own task without its task file)."""
    path = Path(directory) / METADATA_FILE
    meta = _parse_metadata(_read_json(path), path)
    if isinstance(meta.task_definition, dict):
        from promptatlas.tasks.registry import register_stored

        register_stored(meta.task_definition, f"prompt {Path(directory)}")
    return meta


def _describe_geometry(geometry: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in geometry.items())


def check_compatible(
    meta: PromptMetadata, handle: ModelHandle, directory: Path, *, check_model: bool = True
) -> None:
    """Raise PromptLoadError unless a prompt with ``meta`` can run on ``handle`` (load_prompt)."""
    if meta.model_geometry != handle.geometry:
        raise PromptLoadError(
            f"the prompt in {directory} was trained on {meta.model} "
            f"({_describe_geometry(meta.geometry)}) and cannot run on {handle.name} "
            f"({_describe_geometry(dataclasses.asdict(handle.geometry))}); train a new prompt "
            f"for {handle.name} or use `promptatlas project` to map this one onto it"
        )
    if meta.model_fingerprint != handle.fingerprint:
        message = (
            f"the prompt in {directory} was trained on {meta.model} with weights fingerprint "
            f"{meta.model_fingerprint}, but {handle.name} has fingerprint {handle.fingerprint}: "
            "same shapes, different weights (another checkpoint, dtype or a fine-tuned copy)"
        )
        if check_model:
            raise PromptLoadError(
                message + "; pass check_model=False to load it anyway (results may differ)"
            )
        warnings.warn(message + "; loading anyway (check_model=False)", stacklevel=3)


def load_prompt(
    directory: str | Path, handle: ModelHandle | None = None, *, check_model: bool = True
) -> StoredPrompt:
    """Load a prompt directory. With ``handle`` the prompt must fit that model's geometry (always)
    and weights fingerprint (unless ``check_model=False``), and is moved to its device."""
    path = Path(directory).expanduser().absolute()
    meta = read_metadata(path)
    if handle is not None:
        check_compatible(meta, handle, path, check_model=check_model)
    config = meta.prompt_config
    try:
        prompt = SoftPrompt(config, meta.model_geometry)
    except PromptConfigError as exc:
        raise PromptLoadError(
            f"{METADATA_FILE} in {path}: the prompt configuration does not fit the stored "
            f"geometry ({exc}); the file is damaged, restore it or re-train the prompt"
        ) from exc
    tensors_path = path / TENSORS_FILE
    if not tensors_path.is_file():
        raise PromptLoadError(
            f"{TENSORS_FILE} is missing in {path}; this is not a complete prompt directory "
            "(re-save or re-copy the prompt)"
        )
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # SafetensorError, or OSError/ValueError from a damaged header
        raise PromptLoadError(
            f"{TENSORS_FILE} in {path} is corrupt or truncated ({exc}); re-train or re-copy it"
        ) from exc
    try:
        prompt.load_state_tensors(tensors)
    except PromptConfigError as exc:
        raise PromptLoadError(
            f"{TENSORS_FILE} in {path} does not match the prompt configuration in "
            f"{METADATA_FILE} ({exc}); the files come from different prompts, re-copy the "
            "directory as a whole or re-train"
        ) from exc
    if handle is not None:
        prompt.to(handle.device)
    return StoredPrompt(path=path, prompt=prompt, meta=meta)


def list_prompts(root: str | Path) -> list[tuple[Path, PromptMetadata]]:
    """Every prompt directory below ``root`` (inclusive), sorted by path.

    Hidden directories (the bank's temporary save directories among them) are skipped;
    directories whose metadata cannot be read are skipped with a warning."""
    base = Path(root).expanduser()
    if not base.is_dir():
        return []
    found: list[tuple[Path, PromptMetadata]] = []
    for meta_path in sorted(base.rglob(METADATA_FILE)):
        directory = meta_path.parent
        if any(part.startswith(".") for part in directory.relative_to(base).parts):
            continue
        if not (directory / TENSORS_FILE).is_file():
            continue
        try:
            found.append((directory, read_metadata(directory)))
        except PromptLoadError as exc:
            warnings.warn(f"skipping {directory}: {exc}", stacklevel=2)
    return found
