"""Import a PEFT prompt adapter (``PeftModel.save_pretrained``) as a promptatlas prompt.

The reverse of :mod:`promptatlas.bank.peft_export`, and exact for what it writes:

* PEFT **prompt tuning** (and **P-tuning**, whose saved ``prompt_embeddings`` are the encoder's
  output, the vectors PEFT itself puts before the input) → a v1 prompt of
  ``num_virtual_tokens`` positions, one segment named ``task``.
* PEFT **prefix tuning** → a v2 prompt on every layer. The saved ``prompt_embeddings`` row of
  virtual token i is laid out [layer, key/value, kv_head, head_dim], our (L, 2, k, d_kv) tensor
  with the token axis first. ``kv="auto"`` gives a "shared" prompt when keys and values are
  identical in every layer (what the export of a shared prompt writes), else "separate".
  An adapter trained with ``prefix_projection=True`` is imported too when its file holds the
  projected prefix (what ``save_pretrained`` of a trained model writes: the MLP's output); a
  file holding only the MLP's input cannot be mapped and is refused.

Only the files are read (``adapter_config.json`` and ``adapter_model.safetensors``, or a
``adapter_model.bin`` opened with ``torch.load(weights_only=True)``, which runs no code); PEFT
itself is not needed. PEFT records no weights fingerprint, so the only check against the model
is the geometry: a prompt imported for the wrong model of the same shape loads but means nothing.
Segment names and frozen flags of an exported prompt are not in a PEFT adapter: an import has
one trainable segment ``task``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from promptatlas.bank.peft_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from promptatlas.bank.store import save_prompt
from promptatlas.io import read_json_object
from promptatlas.models.adapters import ModelGeometry
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.config import PromptConfig
from promptatlas.prompts.soft_prompt import SoftPrompt

__all__ = [
    "ADAPTER_WEIGHTS_BIN",
    "PeftAdapter",
    "PeftImportError",
    "import_peft",
    "prompt_from_peft",
    "read_peft_adapter",
]

ADAPTER_WEIGHTS_BIN = "adapter_model.bin"
KVImport = Literal["auto", "separate", "shared"]

_V1_TYPES = ("PROMPT_TUNING", "P_TUNING")
_V2_TYPES = ("PREFIX_TUNING",)
_CAUSAL = ("CAUSAL_LM", None)


class PeftImportError(ValueError):
    """A PEFT adapter that cannot be imported; the message names the problem and the fix."""


@dataclass(frozen=True)
class PeftAdapter:
    """The two things a PEFT prompt adapter is: its config and its ``prompt_embeddings``."""

    path: Path
    config: dict[str, Any]
    weights: torch.Tensor  # (virtual tokens, width) as saved

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", ""))

    @property
    def method(self) -> Literal["v1", "v2"]:
        return "v2" if self.peft_type in _V2_TYPES else "v1"

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.config.get("num_virtual_tokens") or self.weights.shape[0])

    def describe(self) -> dict[str, Any]:
        """Where the prompt came from, for the imported prompt's metadata."""
        keys = ("peft_type", "task_type", "num_virtual_tokens", "base_model_name_or_path")
        return {"peft_dir": str(self.path), **{k: self.config.get(k) for k in keys}}


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise PeftImportError(f"PEFT adapter folder {folder} does not exist; check the path")
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise PeftImportError(
            f"{folder} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter folder (the folder "
            "PeftModel.save_pretrained writes); pass that folder"
        )
    return read_json_object(
        path, PeftImportError, where=str(path), fix="re-save the adapter with save_pretrained"
    )


def _check_config(config: Mapping[str, Any], folder: Path) -> None:
    peft_type = config.get("peft_type")
    if peft_type not in (*_V1_TYPES, *_V2_TYPES):
        raise PeftImportError(
            f"{folder} is a PEFT {peft_type or 'unknown-type'} adapter; promptatlas imports soft "
            "prompts only: PROMPT_TUNING or P_TUNING (→ v1) and PREFIX_TUNING (→ v2). Adapters "
            "that change the model's weights (LoRA and the like) have no soft-prompt equivalent"
        )
    task_type = config.get("task_type")
    if task_type not in _CAUSAL:
        raise PeftImportError(
            f"{folder} is a {peft_type} adapter for task_type {task_type}; promptatlas runs "
            "prompts on causal language models only (task_type CAUSAL_LM). Train the prompt "
            "with task_type='CAUSAL_LM' to import it"
        )
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise PeftImportError(
            f"{folder} has num_transformer_submodules={submodules} (an encoder-decoder "
            "adapter); promptatlas prompts are for decoder-only models (1 submodule)"
        )


def _read_weights(folder: Path) -> torch.Tensor:
    safe, binary = folder / ADAPTER_WEIGHTS, folder / ADAPTER_WEIGHTS_BIN
    state: Mapping[str, Any]
    if safe.is_file():
        from safetensors.torch import load_file

        try:
            state = load_file(str(safe))
        except Exception as exc:  # SafetensorError, OSError: damaged or truncated
            raise PeftImportError(
                f"{safe} is damaged or not a safetensors file ({exc}); re-save the adapter"
            ) from exc
        source = safe
    elif binary.is_file():
        try:
            state = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for anything but plain tensors, OSError
            raise PeftImportError(
                f"{binary} could not be read with torch.load(weights_only=True) ({exc}); it "
                "holds more than plain tensors or is damaged. Re-save the adapter with "
                "save_pretrained(safe_serialization=True)"
            ) from exc
        source = binary
    else:
        raise PeftImportError(
            f"{folder} has neither {ADAPTER_WEIGHTS} nor {ADAPTER_WEIGHTS_BIN}; copy the whole "
            "folder save_pretrained wrote"
        )
    if not isinstance(state, Mapping) or "prompt_embeddings" not in state:
        found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise PeftImportError(
            f"{source} has no 'prompt_embeddings' tensor (found {found}); it is not a PEFT "
            "prompt adapter's weight file"
        )
    extra = sorted(k for k in state if k != "prompt_embeddings")
    if extra:
        raise PeftImportError(
            f"{source} also holds {extra} (modules of the base model trained with the prompt, "
            "e.g. modules_to_save); a soft prompt cannot carry them, so the import would not "
            "reproduce the adapter. Train the prompt alone to import it"
        )
    weights = state["prompt_embeddings"]
    if not isinstance(weights, torch.Tensor) or weights.dim() != 2:
        raise PeftImportError(
            f"{source}: 'prompt_embeddings' must be a 2-D tensor (virtual tokens × width)"
        )
    return weights.detach().to("cpu", torch.float32).contiguous()


def read_peft_adapter(adapter_dir: str | Path) -> PeftAdapter:
    """Read and check a PEFT prompt adapter folder (no model needed).

    Raises :class:`PeftImportError` for anything that is not a causal-LM prompt-tuning,
    P-tuning or prefix-tuning adapter."""
    folder = Path(adapter_dir).expanduser().absolute()
    config = _read_config(folder)
    _check_config(config, folder)
    weights = _read_weights(folder)
    adapter = PeftAdapter(folder, config, weights)
    k = adapter.num_virtual_tokens
    if weights.shape[0] != k:
        raise PeftImportError(
            f"{folder}: prompt_embeddings has {weights.shape[0]} rows but the config says "
            f"num_virtual_tokens={k}; the config and the weights come from different adapters"
        )
    return adapter


def _describe(geometry: ModelGeometry) -> str:
    return (
        f"{geometry.n_layers} layers, d_model={geometry.d_model}, "
        f"{geometry.n_kv_heads} key/value heads × {geometry.head_dim} = d_kv {geometry.d_kv}"
    )


def prompt_from_peft(
    adapter: PeftAdapter | str | Path, geometry: ModelGeometry, *, kv: KVImport = "auto"
) -> SoftPrompt:
    """The :class:`SoftPrompt` equal to a PEFT adapter on a model of ``geometry``.

    kv (prefix tuning only): "separate" keys and values (PEFT's own layout), "shared" (only when
    keys equal values in every layer), or "auto" (shared exactly when they are equal)."""
    if not isinstance(adapter, PeftAdapter):
        adapter = read_peft_adapter(adapter)
    if kv not in ("auto", "separate", "shared"):
        raise PeftImportError(f"kv must be 'auto', 'separate' or 'shared', got {kv!r}")
    weights, k, where = adapter.weights, adapter.num_virtual_tokens, adapter.path
    width = weights.shape[1]
    base = adapter.config.get("base_model_name_or_path") or "named in its adapter_config.json"
    if adapter.method == "v1":
        if width != geometry.d_model:
            raise PeftImportError(
                f"{where}: the adapter's virtual tokens have width {width}, but the model has "
                f"d_model={geometry.d_model} ({_describe(geometry)}); import it for the model it "
                f"was trained on ({base})"
            )
        prompt = SoftPrompt(PromptConfig(method="v1", length=k), geometry)
        prompt.set_segment("task", weights)
        return prompt

    n_layers, d_kv = geometry.n_layers, geometry.d_kv
    if width != n_layers * 2 * d_kv:
        projected = bool(adapter.config.get("prefix_projection"))
        hint = (
            " The adapter uses prefix_projection=True and its file holds the MLP's input, not "
            "the prefix the MLP makes of it (promptatlas has no MLP to apply). On the trained "
            "PEFT model, save model.get_prompt_embedding_to_save('default') as the file's "
            "prompt_embeddings (save_pretrained in training mode does that) and import again"
            if projected and width == adapter.config.get("token_dim")
            else f" Import it for the model it was trained on ({base})."
        )
        raise PeftImportError(
            f"{where}: the prefix rows have width {width}, but this model needs "
            f"layers × 2 × d_kv = {n_layers} × 2 × {d_kv} = {n_layers * 2 * d_kv} "
            f"({_describe(geometry)}).{hint}"
        )
    full = weights.reshape(k, n_layers, 2, d_kv).permute(1, 2, 0, 3).contiguous()  # (L,2,k,d)
    equal = torch.equal(full[:, 0], full[:, 1])
    if kv == "shared" and not equal:
        raise PeftImportError(
            f"{where}: kv='shared' needs identical key and value prefixes, but they differ; "
            "import with kv='separate' (or 'auto')"
        )
    shared = kv == "shared" or (kv == "auto" and equal)
    config = PromptConfig(method="v2", length=k, kv="shared" if shared else "separate")
    prompt = SoftPrompt(config, geometry)
    prompt.set_segment("task", full[:, 1].contiguous() if shared else full)
    return prompt


def import_peft(
    adapter_dir: str | Path,
    out_dir: str | Path,
    handle: ModelHandle,
    *,
    kv: KVImport = "auto",
    task: str | None = None,
    lang: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Import a PEFT adapter for ``handle``'s model and save it as a prompt directory.

    The prompt directory records where it came from (``extra["imported_from"]``: the folder,
    PEFT type, base model); ``task``/``lang`` label it as :func:`save_prompt` does. Returns the
    prompt directory's path."""
    adapter = read_peft_adapter(adapter_dir)
    prompt = prompt_from_peft(adapter, handle.geometry, kv=kv)
    return save_prompt(
        out_dir,
        prompt,
        handle,
        task=task,
        lang=lang,
        extra={"imported_from": adapter.describe()},
        overwrite=overwrite,
    )
