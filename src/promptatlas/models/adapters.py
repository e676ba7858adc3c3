"""One small adapter per architecture family.

Everything else in promptatlas reaches into a model only through an adapter: where the
decoder layers are, which module is attention and which is the FFN, which module receives
the FFN intermediate activation (the input of the down-projection), and the model's
geometry. Nothing downstream hard-codes a dimension or an attribute path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "ModelGeometry",
    "UnsupportedArchitectureError",
    "adapter_for",
    "context_window",
]


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes read from a model config (d_kv may differ from d_model under grouped-query
    attention)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ffn: int
    vocab_size: int

    @property
    def d_kv(self) -> int:
        return self.n_kv_heads * self.head_dim


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Attribute paths of one architecture family (relative to the *ForCausalLM module)."""

    family: str
    model_types: tuple[str, ...]
    backbone_path: str  # module returning last_hidden_state
    layers_path: str  # ModuleList of decoder layers, relative to the backbone
    attention_name: str
    ffn_name: str
    ffn_down_name: str  # relative to the FFN; its *input* is the intermediate activation
    lm_head_name: str = "lm_head"

    # -- structure -------------------------------------------------------------------
    def backbone(self, model: nn.Module) -> nn.Module:
        module: nn.Module = _get_path(model, self.backbone_path)
        return module

    def layers(self, model: nn.Module) -> Sequence[nn.Module]:
        layers: nn.ModuleList = _get_path(self.backbone(model), self.layers_path)
        return list(layers)

    def attention(self, layer: nn.Module) -> nn.Module:
        module: nn.Module = getattr(layer, self.attention_name)
        return module

    def ffn(self, layer: nn.Module) -> nn.Module:
        module: nn.Module = getattr(layer, self.ffn_name)
        return module

    def ffn_down(self, layer: nn.Module) -> nn.Module:
        module: nn.Module = getattr(self.ffn(layer), self.ffn_down_name)
        return module

    def lm_head(self, model: nn.Module) -> nn.Module:
        module: nn.Module = getattr(model, self.lm_head_name)
        return module

    def input_embeddings(self, model: nn.Module) -> nn.Module:
        """The token embedding module. For Gemma it already applies the sqrt(d) scaling,
        so v1 prompts concatenated after it live in the scaled space."""
        get = getattr(model, "get_input_embeddings", None)
        if get is None:
            raise UnsupportedArchitectureError(f"{type(model).__name__} has no input embeddings")
        module: nn.Module = get()
        return module

    # -- geometry ----------------------------------------------------------------------
    def geometry(self, config: Any) -> ModelGeometry:
        cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        if self.family == "gpt2":
            d = int(cfg.n_embd)
            heads = int(cfg.n_head)
            inner = cfg.n_inner if getattr(cfg, "n_inner", None) else 4 * d
            return ModelGeometry(
                n_layers=int(cfg.n_layer),
                d_model=d,
                n_heads=heads,
                n_kv_heads=heads,
                head_dim=d // heads,
                d_ffn=int(inner),
                vocab_size=int(cfg.vocab_size),
            )
        d = int(cfg.hidden_size)
        heads = int(cfg.num_attention_heads)
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or d // heads
        return ModelGeometry(
            n_layers=int(cfg.num_hidden_layers),
            d_model=d,
            n_heads=heads,
            n_kv_heads=int(kv),
            head_dim=int(head_dim),
            d_ffn=int(cfg.intermediate_size),
            vocab_size=int(cfg.vocab_size),
        )

    # -- computation -----------------------------------------------------------------
    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits for the given hidden states only (callers pass just the positions
        they need: Gemma's 262k vocabulary makes full-sequence logits the dominant cost)."""
        head = self.lm_head(model)
        weight = getattr(head, "weight", None)
        logits: torch.Tensor
        if (
            isinstance(head, nn.Linear)
            and weight is not None
            and hidden.dim() == 2
            and hidden.shape[0] <= TALL_HEAD_ROWS
        ):
            # For a few rows the (vocabulary × rows) product, transposed back, reads a large
            # head about twice as fast on a CPU as (rows × vocabulary); same numbers.
            logits = (weight @ hidden.T).T.contiguous()
            if head.bias is not None:
                logits = logits + head.bias
        else:
            logits = head(hidden)
        return self._softcap(model, logits)

    def token_logits(
        self, model: nn.Module, hidden: torch.Tensor, ids: torch.Tensor
    ) -> torch.Tensor:
        """The logits of the tokens ``ids`` only (N, len(ids)): the same numbers as
        ``logits(...)[:, ids]`` without the other rows of the head (for Gemma, reading its
        262k × 640 head costs more than a whole 30-token pass of the backbone)."""
        head = self.lm_head(model)
        weight = getattr(head, "weight", None)
        if not isinstance(head, nn.Linear) or weight is None:
            return self.logits(model, hidden)[:, ids]
        ids = ids.to(weight.device)
        bias = None if head.bias is None else head.bias[ids]
        logits = F.linear(hidden.to(weight.device), weight[ids], bias)
        return self._softcap(model, logits)

    @staticmethod
    def _softcap(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits


# Up to this many hidden states, :meth:`ArchitectureAdapter.logits` applies the head as one
# tall product (benchmarks/step_options.py --what head measures both forms).
TALL_HEAD_ROWS = 64

_DECODER = {
    "backbone_path": "model",
    "layers_path": "layers",
    "attention_name": "self_attn",
    "ffn_name": "mlp",
    "ffn_down_name": "down_proj",
}

ADAPTERS: tuple[ArchitectureAdapter, ...] = (
    ArchitectureAdapter(
        family="gpt2",
        model_types=("gpt2",),
        backbone_path="transformer",
        layers_path="h",
        attention_name="attn",
        ffn_name="mlp",
        ffn_down_name="c_proj",
    ),
    ArchitectureAdapter(
        family="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3", "olmo2", "phi3", "granite"),
        **_DECODER,
    ),
    ArchitectureAdapter(
        family="gemma3", model_types=("gemma3_text", "gemma2", "gemma"), **_DECODER
    ),
)


def context_window(config: Any) -> int | None:
    """How many positions the model attends over (``max_position_embeddings``, GPT-2's
    ``n_positions``), or None when the config does not say. GPT-2's learned position table ends
    there (an index error beyond it); rotary models degrade beyond what they were trained on."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for a loaded Hugging Face causal LM, chosen by its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise UnsupportedArchitectureError(
        f"no architecture adapter for model_type {model_type!r}. Supported: {', '.join(known)}. "
        "Add an ArchitectureAdapter (layer/attention/FFN attribute paths) in "
        "promptatlas.models.adapters to support it."
    )
