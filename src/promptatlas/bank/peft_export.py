"""Export a stored prompt as a PEFT adapter (``PeftModel.from_pretrained(base, out_dir)``).

v1 prompts are PEFT prompt tuning; v2 prompts are PEFT prefix tuning without the reparametrising
MLP (``prefix_projection=False``). Both are exactly equivalent: PEFT's prefix embedding row for
virtual token i is laid out [layer, key/value, kv_head, head_dim], which is our (L, 2, k, d_kv)
tensor with the token axis moved first. A v2 "shared" prompt (one tensor used as key and value)
is exported with keys = values. PEFT prefix tuning has no layer subsets, so v2 prompts on some
layers only cannot be exported.

The files are written the way ``PeftModel.save_pretrained`` writes them (``adapter_config.json``
from the PEFT config class, ``adapter_model.safetensors`` with key ``prompt_embeddings``), without
building a PeftModel: that would need a copy of the base model's weights in memory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from promptatlas.bank._atomic import atomic_directory
from promptatlas.bank.store import StoredPrompt, check_compatible, load_prompt
from promptatlas.models.adapters import ModelGeometry
from promptatlas.models.registry import ModelHandle

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "ExportError", "export_peft", "peft_weights"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ExportError(ValueError):
    """A prompt that has no exact PEFT equivalent (or cannot be exported as asked)."""


def peft_weights(stored: StoredPrompt) -> torch.Tensor:
    """The PEFT ``prompt_embeddings`` matrix: v1 (k, d_model); v2 (k, L·2·d_kv)."""
    prompt = stored.prompt
    config = prompt.config
    full = prompt.tensor().detach().cpu()
    if config.method == "v1":
        return full.contiguous()
    n_layers = prompt.geometry.n_layers
    if tuple(prompt.layer_indices) != tuple(range(n_layers)):
        raise ExportError(
            f"the prompt in {stored.path} has prefixes on layers {list(prompt.layer_indices)} "
            f"only, but PEFT prefix tuning puts a prefix in every layer (0–{n_layers - 1}) and "
            "has no way to leave layers out, so there is no exact PEFT equivalent. Train a v2 "
            "prompt on all layers to export it, or use the prompt with promptatlas."
        )
    if config.kv == "shared":
        full = torch.stack([full, full], dim=1)  # (L, k, d_kv) → (L, 2, k, d_kv), keys = values
    k = config.length
    return full.permute(2, 0, 1, 3).reshape(k, -1).contiguous()


def _peft_config(stored: StoredPrompt, geometry: ModelGeometry, base: str) -> Any:
    from peft import PrefixTuningConfig, PromptTuningConfig

    k = stored.prompt.config.length
    common: dict[str, Any] = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": k,
        "num_layers": geometry.n_layers,
        "num_transformer_submodules": 1,
        "base_model_name_or_path": base,
        "inference_mode": True,
    }
    if stored.prompt.config.method == "v1":
        return PromptTuningConfig(
            token_dim=geometry.d_model, num_attention_heads=geometry.n_heads, **common
        )
    # As peft.utils.other._prepare_prompt_learning_config does for grouped-query attention:
    # the prefix lives in key/value space (token_dim = head_dim·n_kv_heads, heads = n_kv_heads).
    return PrefixTuningConfig(
        prefix_projection=False,
        token_dim=geometry.d_kv,
        num_attention_heads=geometry.n_kv_heads,
        encoder_hidden_size=geometry.d_kv,
        **common,
    )


def _readme(stored: StoredPrompt, base: str, out: Path) -> str:
    meta = stored.meta
    config = stored.prompt.config
    if config.method == "v1":
        kind = (
            f"PEFT prompt tuning ({config.length} virtual tokens). The model's logits include "
            f"the {config.length} virtual positions first: drop them "
            f"(`logits[:, {config.length}:]`) to get the logits at the input positions."
        )
    else:
        shared = (
            " The promptatlas prompt shares one tensor between keys and values; it is exported "
            "with identical key and value prefixes, which is exactly equivalent."
            if config.kv == "shared"
            else ""
        )
        kind = (
            f"PEFT prefix tuning without projection ({config.length} virtual tokens of keys and "
            f"values in each of the {stored.prompt.geometry.n_layers} layers).{shared}"
        )
    geometry = ", ".join(f"{k}={v}" for k, v in meta.geometry.items())
    seed = "-" if meta.seed is None else meta.seed
    lines = [
        f"# Soft prompt for `{meta.model}` (PEFT adapter)",
        "",
        f"Exported by promptatlas from `{stored.path}`.",
        "",
        f"- Base model: `{meta.model}` (loaded from `{base}`), weights fingerprint "
        f"`{meta.model_fingerprint}` ({geometry}). The adapter only works on this model.",
        f"- Method: promptatlas {config.method}; {kind}",
        f"- Task: {meta.task or '-'}; language: {meta.lang or '-'}; seed: {seed}",
        f"- Trained with: {', '.join(f'{k} {v}' for k, v in meta.versions.items())}",
        "",
        "## Load",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}", attn_implementation="eager")',
        f'model = PeftModel.from_pretrained(base, "{out}")',
        "```",
        "",
        f"or with promptatlas: `base = promptatlas.models.load_model({meta.model!r}).model`.",
        "",
    ]
    if meta.metrics:
        lines += ["## Metrics (from prompt.json)", "", "```", str(meta.metrics), "```", ""]
    return "\n".join(lines)


def export_peft(
    stored_or_dir: StoredPrompt | str | Path,
    out_dir: str | Path,
    handle: ModelHandle | None = None,
) -> Path:
    """Write a PEFT adapter directory for a stored prompt and return its path.

    With ``handle`` the prompt is first checked against that model (geometry and fingerprint)
    and the adapter records ``handle.source`` as its base model.
    """
    if isinstance(stored_or_dir, StoredPrompt):
        stored = stored_or_dir
        if handle is not None:
            check_compatible(stored.meta, handle, stored.path)
    else:
        stored = load_prompt(stored_or_dir, handle)
    geometry = stored.prompt.geometry
    if dataclasses.asdict(geometry) != stored.meta.geometry:
        raise ExportError(
            f"the prompt object's geometry {geometry} differs from its metadata "
            f"{stored.meta.geometry}; reload it with load_prompt"
        )
    weights = peft_weights(stored)
    base = (handle.source if handle is not None else "") or stored.meta.model_source
    base = base or stored.meta.model
    peft_config = _peft_config(stored, geometry, base)
    target = Path(out_dir).expanduser().absolute()

    from safetensors.torch import save_file

    with atomic_directory(target, {ADAPTER_CONFIG, ADAPTER_WEIGHTS}, "PEFT adapter") as tmp:
        peft_config.save_pretrained(str(tmp))
        save_file({"prompt_embeddings": weights}, str(tmp / ADAPTER_WEIGHTS), {"format": "pt"})
        (tmp / "README.md").write_text(_readme(stored, base, target), encoding="utf-8")
    return target
