"""Running a frozen model with a soft prompt.

v1 prompts are concatenated before the input embeddings (positions 0..k-1, inputs after them,
as PEFT prompt tuning does). v2 prompts are a pre-filled key/value cache of length k in every
layer (inputs take positions k.., as PEFT prefix tuning does). For a v2 layer subset the other
layers get a zero prefix that an attention pre-hook masks out, so they see the inputs only.

The forward returns hidden states of the *input* positions only, so callers index inputs the
same way whatever the prompt; logits are computed by the caller for the positions it needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from promptatlas.models.precision import autocast_dtype
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.kv import cache_for as _cache_for
from promptatlas.prompts.kv import output_cache, token_key_values, with_cache
from promptatlas.prompts.soft_prompt import SoftPrompt, check_context

__all__ = [
    "HEAD_CHUNK_ELEMENTS",
    "PromptedForward",
    "PromptedLM",
    "autocast_dtype",
    "token_key_values",
]


@dataclass
class PromptedForward:
    hidden: torch.Tensor  # (B, T, d) final hidden states at the input positions
    past_key_values: Any = None
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, T_q, T_kv), with prompt
    hidden_states: tuple[torch.Tensor, ...] | None = None  # per layer output, with prompt positions


# Largest logits block a loss or score materialises at once, in elements (128 MiB of float32):
# Gemma's 262k-word head then works on 128 positions at a time.
HEAD_CHUNK_ELEMENTS = 32 * 1024 * 1024


def _to_heads(x: torch.Tensor, n_kv: int, batch: int) -> torch.Tensor:
    """(k, d_kv) → (B, n_kv, k, head_dim)."""
    k = x.shape[0]
    return x.reshape(k, n_kv, -1).permute(1, 0, 2).unsqueeze(0).expand(batch, -1, -1, -1)


class PromptedLM:
    """A frozen model plus (optionally) a soft prompt. ``prompt=None`` is the base model."""

    def __init__(
        self,
        handle: ModelHandle,
        prompt: SoftPrompt | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        """``autocast_dtype=torch.bfloat16`` runs the frozen backbone under autocast (about 3×
        faster on CPUs with bf16 instructions and on GPUs); prompts, losses and the LM head
        stay in float32."""
        self.handle = handle
        self.prompt = prompt
        self.autocast_dtype = autocast_dtype
        self.head_autocast = False
        self._fixed: dict[str, Any] | None = None  # see fixed_prompt()
        if prompt is not None and prompt.geometry != handle.geometry:
            from promptatlas.prompts.config import PromptConfigError

            raise PromptConfigError(
                f"the prompt was built for geometry {prompt.geometry} but model "
                f"{handle.name!r} has {handle.geometry}"
            )
        if prompt is not None:
            check_context(prompt.length, handle, warn=False)  # room left for any input

    @property
    def n_prompt(self) -> int:
        return 0 if self.prompt is None else self.prompt.length

    @property
    def device(self) -> torch.device:
        return self.handle.device

    @property
    def sliding_window(self) -> int | None:
        """The model's sliding-attention window (cache slots its windowed layers keep), if any."""
        window = getattr(self.handle.model.config, "sliding_window", None)
        return None if window is None else int(window)

    # -- building blocks -------------------------------------------------------------------
    def mask_with_prompt(self, mask: torch.Tensor) -> torch.Tensor:
        """An input attention mask (B, T) extended by the k always-visible prompt positions."""
        ones = torch.ones(mask.shape[0], self.n_prompt, dtype=mask.dtype, device=mask.device)
        return torch.cat([ones, mask], dim=1)

    def prefix_cache(self, batch: int, key_values: Any = None) -> Any:
        """v2: a cache pre-filled with the prompt's keys/values in every layer (``key_values``:
        the prompt's :meth:`~SoftPrompt.key_values`, when already computed)."""
        assert self.prompt is not None and self.prompt.method == "v2"
        g = self.handle.geometry
        dtype = self.handle.dtype
        cache = _cache_for(self.handle.model)
        k = self.prompt.length
        states = self.prompt.key_values() if key_values is None else key_values
        per_layer = dict(zip(self.prompt.layer_indices, states, strict=True))
        zeros = torch.zeros(k, g.d_kv, device=self.device, dtype=dtype)
        positions = torch.arange(k, device=self.device)
        for layer in range(g.n_layers):
            key, value = per_layer.get(layer, (zeros, zeros))
            where = self.handle.layer_device(layer)  # a device_map puts layers apart
            cache.update(
                _to_heads(key.to(where, dtype), g.n_kv_heads, batch),
                _to_heads(value.to(where, dtype), g.n_kv_heads, batch),
                layer,
                cache_kwargs={"cache_position": positions.to(where)},
            )
        return cache

    @contextlib.contextmanager
    def _mask_unprompted_layers(self) -> Iterator[None]:
        """Hide the zero prefix from layers outside a v2 layer subset."""
        prompt = self.prompt
        if prompt is None or prompt.method != "v2" or prompt.config.layers is None:
            yield
            return
        k = prompt.length
        chosen = set(prompt.layer_indices)
        handles = []

        def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            mask = kwargs.get("attention_mask")
            if mask is None or mask.dim() != 4:
                raise RuntimeError(
                    "v2 layer subsets need a materialised 4-D attention mask; load the model "
                    "with attn_implementation='eager'"
                )
            mask = mask.clone()
            if mask.dtype == torch.bool:
                mask[..., :k] = False
            else:
                mask[..., :k] = torch.finfo(mask.dtype).min
            kwargs["attention_mask"] = mask
            return args, kwargs

        layers = self.handle.adapter.layers(self.handle.model)
        for i, layer in enumerate(layers):
            if i not in chosen:
                attn = self.handle.adapter.attention(layer)
                handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        share_prompt: bool = False,
    ) -> PromptedForward:
        """Run the backbone on right- or left-padded ``input_ids`` (B, T) with the prompt.

        With ``past_key_values`` (incremental decoding) the prompt is already in the cache and
        ``attention_mask`` must cover it; positions are then the caller's business.

        ``share_prompt`` (v1, right-padded, default positions): a v1 prompt comes first and a
        causal model's prompt states do not depend on the input, so the prompt runs once (batch
        1) and its keys/values are shared by every row, instead of being recomputed B times;
        the result is the same (tested), and gradients reach the prompt through the shared
        cache. Hooks then see two passes, so analyses keep the default (off).
        """
        if share_prompt and self._can_share_prompt(
            input_ids, past_key_values, position_ids, output_attentions, output_hidden_states
        ):
            return self._forward_shared_prompt(input_ids, attention_mask, use_cache=use_cache)
        handle = self.handle
        backbone = handle.adapter.backbone(handle.model)
        batch, _ = input_ids.shape
        embed = handle.adapter.input_embeddings(handle.model)
        kwargs: dict[str, Any] = {
            "use_cache": use_cache,
            "output_attentions": output_attentions,
            "output_hidden_states": output_hidden_states,
        }
        prompt = self.prompt if past_key_values is None else None
        if prompt is not None:  # a clear error instead of an index error past the window
            check_context(prompt.length, handle, budget=input_ids.shape[1], warn=False)
        mask = attention_mask if prompt is None else self.mask_with_prompt(attention_mask)
        n_drop = 0
        if prompt is not None and prompt.method == "v1":
            p = prompt.tensor().to(self.device, handle.dtype)
            embeds = torch.cat([p.unsqueeze(0).expand(batch, -1, -1), embed(input_ids)], dim=1)
            kwargs["inputs_embeds"] = embeds
            n_drop = prompt.length
            if position_ids is not None:
                prompt_pos = torch.arange(prompt.length, device=self.device).expand(batch, -1)
                position_ids = torch.cat([prompt_pos, position_ids + prompt.length], dim=1)
        else:
            kwargs["input_ids"] = input_ids
            if prompt is not None:  # v2
                past_key_values = self.prefix_cache(batch)
                if position_ids is not None:
                    position_ids = position_ids + prompt.length
                kwargs["use_cache"] = True
        if past_key_values is not None:
            kwargs.update(with_cache(backbone, past_key_values))
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        with self._mask_unprompted_layers(), self._autocast():
            out = backbone(attention_mask=mask, **kwargs)
        hidden = out.last_hidden_state[:, n_drop:].to(handle.dtype)
        return PromptedForward(
            hidden=hidden,
            past_key_values=output_cache(out) if use_cache else None,
            attentions=getattr(out, "attentions", None),
            hidden_states=getattr(out, "hidden_states", None),
        )

    def _can_share_prompt(
        self,
        input_ids: torch.Tensor,
        past_key_values: Any,
        position_ids: torch.Tensor | None,
        output_attentions: bool,
        output_hidden_states: bool,
    ) -> bool:
        prompt = self.prompt
        if prompt is None or prompt.method != "v1" or past_key_values is not None:
            return False
        if position_ids is not None or output_attentions or output_hidden_states:
            return False
        if input_ids.shape[0] < 2:
            return False
        # Sliding-window layers keep a window of cache slots: stay inside it.
        window = self.sliding_window
        return window is None or prompt.length + input_ids.shape[1] <= window

    def _autocast(self) -> Any:
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
        )

    def _v1_prompt_cache(self, mask_dtype: torch.dtype, tensor: torch.Tensor | None = None) -> Any:
        """A cache holding a v1 prompt's keys/values in every layer, batch 1 (differentiable
        w.r.t. the prompt; ``tensor``: the prompt's :meth:`~SoftPrompt.tensor`, when already
        computed)."""
        assert self.prompt is not None and self.prompt.method == "v1"
        handle = self.handle
        backbone = handle.adapter.backbone(handle.model)
        k = self.prompt.length
        cache = _cache_for(handle.model)
        p = (self.prompt.tensor() if tensor is None else tensor).to(self.device, handle.dtype)
        p = p.unsqueeze(0)
        with self._autocast():
            backbone(
                inputs_embeds=p,
                attention_mask=torch.ones(1, k, dtype=mask_dtype, device=self.device),
                use_cache=True,
                **with_cache(backbone, cache),
            )
        return cache

    @contextlib.contextmanager
    def fixed_prompt(self) -> Iterator[None]:
        """While the prompt does not change and no gradient is taken (an evaluation's batches):
        the v1 prompt's keys/values are computed by the first shared-prompt forward and reused
        by every later one, instead of a prompt pass per batch."""
        previous = getattr(self, "_fixed", None)
        self._fixed = {}
        try:
            yield
        finally:
            self._fixed = previous

    def _cache_of(self, key_values: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Any:
        """A cache holding per-layer (1, heads, k, head_dim) keys/values for ``batch`` rows."""
        cache = _cache_for(self.handle.model)
        for layer, (key, value) in enumerate(key_values):
            positions = torch.arange(key.shape[-2], device=key.device)
            cache.update(
                key.expand(batch, -1, -1, -1),
                value.expand(batch, -1, -1, -1),
                layer,
                cache_kwargs={"cache_position": positions},
            )
        return cache

    # -- packed sequences ----------------------------------------------------------------
    def can_pack(self) -> bool:
        """Whether :meth:`forward_packed` applies: the plain prompt injection (no per-input
        prompt of a subclass), a v1 or v2 prompt or none, and an attention implementation
        that takes a materialised 4-D mask (eager or sdpa)."""
        if type(self).forward is not PromptedLM.forward:
            return False
        if self.prompt is not None and self.prompt.method not in ("v1", "v2"):
            return False
        impl = getattr(self.handle.model.config, "_attn_implementation", None) or "eager"
        return impl in ("eager", "sdpa") and "device_map" not in self.handle.info

    def prompt_states(self) -> Any:
        """The prompt's tensor (v1) or per-layer keys/values (v2), computed once, for several
        :meth:`forward_packed` calls of one loss (a produced prompt, e.g. with dropout, is
        then the same in every pack); None without a prompt."""
        if self.prompt is None:
            return None
        return self.prompt.tensor() if self.prompt.method == "v1" else self.prompt.key_values()

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        visible: torch.Tensor,
        positions: torch.Tensor,
        states: Any = None,
    ) -> torch.Tensor:
        """Run several sequences packed into one row, without padding: ``input_ids`` (N,)
        holds them back to back, ``visible`` (N, N) says which packed token each token may
        attend to (its own sequence's earlier tokens: a block-causal mask) and ``positions``
        (N,) each token's position inside its own sequence. Every token also sees the prompt
        (v1: its k positions placed first in the same pass; v2: the prefix cache). Returns the
        hidden states (N, d): the same numbers as each sequence run on its own, with no compute
        spent on padding. ``states``: from :meth:`prompt_states` (else computed here)."""
        handle = self.handle
        backbone = handle.adapter.backbone(handle.model)
        input_ids = input_ids.to(self.device)
        positions = positions.to(self.device)
        n = input_ids.shape[0]
        k = self.n_prompt
        v1 = self.prompt is not None and self.prompt.method == "v1"
        allowed = torch.cat(
            [torch.ones(n, k, dtype=torch.bool, device=self.device), visible.to(self.device)], 1
        )
        kwargs: dict[str, Any] = {}
        if v1:
            # The prompt goes first in the same pass (not a pass of its own): each layer's
            # weights are read once for prompt and rows, and the prompt positions see only
            # the prompt, causally, so their states are those of the prompt alone.
            assert self.prompt is not None
            tensor = self.prompt.tensor() if states is None else states
            embed = handle.adapter.input_embeddings(handle.model)
            kwargs["inputs_embeds"] = torch.cat(
                [tensor.to(self.device, handle.dtype), embed(input_ids)], 0
            )[None]
            top = torch.ones(k, k, dtype=torch.bool, device=self.device).tril()
            top = torch.cat([top, torch.zeros(k, n, dtype=torch.bool, device=self.device)], 1)
            allowed = torch.cat([top, allowed], 0)
            positions = torch.cat([torch.arange(k, device=self.device), positions + k])
        else:
            kwargs["input_ids"] = input_ids[None]
            positions = positions + k
            if self.prompt is not None:  # v2: the prefix cache
                kwargs.update(with_cache(backbone, self.prefix_cache(1, states)))
                kwargs["use_cache"] = True
        impl = getattr(handle.model.config, "_attn_implementation", None) or "eager"
        mask: torch.Tensor
        if impl == "sdpa":
            mask = allowed[None, None]
        else:  # eager adds the mask to the scores
            mask = torch.zeros(allowed.shape, dtype=handle.dtype, device=self.device)
            mask = mask.masked_fill(~allowed, torch.finfo(handle.dtype).min)[None, None]
        with self._mask_unprompted_layers(), self._autocast():
            out = backbone(attention_mask=mask, position_ids=positions[None], **kwargs)
        hidden: torch.Tensor = out.last_hidden_state[0, k if v1 else 0 :].to(handle.dtype)
        return hidden

    def _forward_shared_prompt(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, use_cache: bool
    ) -> PromptedForward:
        assert self.prompt is not None
        handle = self.handle
        backbone = handle.adapter.backbone(handle.model)
        batch, width = input_ids.shape
        k = self.prompt.length
        fixed = getattr(self, "_fixed", None)
        if fixed is not None and not torch.is_grad_enabled():
            if "key_values" not in fixed:  # the first batch inside fixed_prompt()
                once = self._v1_prompt_cache(attention_mask.dtype)
                fixed["key_values"] = [(layer.keys, layer.values) for layer in once.layers]
            cache = self._cache_of(fixed["key_values"], batch)
        else:
            cache = self._v1_prompt_cache(attention_mask.dtype)
            cache.batch_repeat_interleave(batch)
        autocast = self._autocast()
        positions = torch.arange(k, k + width, device=self.device).expand(batch, -1)
        with autocast:
            out = backbone(
                input_ids=input_ids,
                attention_mask=self.mask_with_prompt(attention_mask),
                position_ids=positions,
                use_cache=True,
                **with_cache(backbone, cache),
            )
        return PromptedForward(
            hidden=out.last_hidden_state.to(handle.dtype),
            past_key_values=output_cache(out) if use_cache else None,
        )

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits for already-selected hidden states (N, d) → (N, V), float32.

        The head runs in float32 unless ``head_autocast`` is set (with ``autocast_dtype``):
        language modelling on raw text scores every token, so there the 262k-row head is most
        of the step and bf16 makes it about 3× faster."""
        with self._head_autocast():
            # .to(): with a device_map the head may sit on another device than the inputs
            return self.handle.adapter.logits(self.handle.model, hidden).float().to(self.device)

    def token_logits(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The logits of tokens ``ids`` only, (N, len(ids)) float32: ``logits(hidden)[:, ids]``
        without computing the rest of the vocabulary (where only differences between these
        tokens' scores matter, e.g. ranking label words)."""
        with self._head_autocast():
            model = self.handle.model
            return self.handle.adapter.token_logits(model, hidden, ids).float().to(self.device)

    @property
    def head_rows(self) -> int:
        """Hidden states per LM-head block (at least 1): a block's logits stay within
        :data:`HEAD_CHUNK_ELEMENTS` floats."""
        return max(1, HEAD_CHUNK_ELEMENTS // max(1, self.handle.geometry.vocab_size))

    def token_log_probs(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log p(ids[i, j] | hidden[i]), (N, J) float32: ``log_softmax(logits(hidden))``
        gathered at ``ids`` (each row's own tokens), at most :attr:`head_rows` hidden states
        at a time (one (rows × vocabulary) block each, as the LM loss's chunks)."""
        ids = ids.to(self.device)
        step = self.head_rows
        parts = [
            torch.log_softmax(self.logits(hidden[i : i + step]), -1).gather(1, ids[i : i + step])
            for i in range(0, hidden.shape[0], step)
        ]
        if not parts:
            return torch.zeros(0, ids.shape[1], device=self.device)
        return torch.cat(parts)

    def _head_autocast(self) -> Any:
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.head_autocast and self.autocast_dtype is not None,
        )

    def full_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits at every input position (B, T, V). For tests and small inputs only."""
        return self.logits(self.forward(input_ids, attention_mask).hidden)
