"""LoRA on the attention projections, through PEFT: the fine-tuned counterpart of a prompt.

Wang et al. (2022) claim the skill neurons a prompt reveals also matter in the model tuned
another way. To measure that, :func:`train_lora` tunes low-rank adapters (PEFT's ``LoraConfig``,
injected in place with ``peft.inject_adapter_in_model``) on every linear projection inside
each decoder layer's attention module (found through the architecture adapter: q/k/v/o for
Llama and Gemma, c_attn/c_proj for GPT-2), with the same objective and data order as prompt
training; the model stays otherwise frozen. The tuned model is then evaluated without a prompt.

:func:`apply_lora` injects adapters, :func:`remove_lora` restores the original modules,
:func:`lora_state` / :func:`load_lora_state` read and write the adapter tensors.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from promptatlas.configtools import ConfigBase, ConfigError
from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.formatting import TaskFormatter
from promptatlas.models.registry import ModelHandle
from promptatlas.prompts.injection import PromptedLM
from promptatlas.tasks import Example
from promptatlas.training.trainer import (
    TrainConfig,
    TrainConfigError,
    _encode,
    accumulate_gradients,
    apply_update,
    lr_factor,
)

__all__ = [
    "LoRAConfig",
    "LoRAError",
    "LoRAResult",
    "apply_lora",
    "attention_projections",
    "has_lora",
    "load_lora_state",
    "lora_state",
    "remove_lora",
    "train_lora",
]

# A LoRA rate: the prompt methods' defaults (0.1-0.3) would wreck a weight update.
LORA_LR = 5e-4


class LoRAError(ConfigError):
    """An invalid LoRA setting, or adapters that do not fit the model."""


@dataclass(frozen=True)
class LoRAConfig(ConfigBase):
    """r: rank; alpha: scale numerator (update = alpha/r · B·A); dropout on the adapter input.
    The adapters go on every linear projection of each decoder layer's attention module."""

    config_error: ClassVar[type[ConfigError]] = LoRAError

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1 or self.alpha < 1:
            raise LoRAError(f"r and alpha must be ≥ 1, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"dropout must be in [0, 1), got {self.dropout}")


def attention_projections(handle: ModelHandle) -> list[str]:
    """Full module names of the linear projections inside every attention module."""
    names = {id(m): n for n, m in handle.model.named_modules()}
    found = []
    for layer in handle.adapter.layers(handle.model):
        attention = handle.adapter.attention(layer)
        prefix = names[id(attention)]
        for sub, module in attention.named_modules():
            if sub and (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
                found.append(f"{prefix}.{sub}")
    if not found:
        raise LoRAError(f"no linear projection found in the attention modules of {handle.name}")
    return found


def has_lora(handle: ModelHandle) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in handle.model.modules())


def apply_lora(
    handle: ModelHandle, config: LoRAConfig, *, seed: int = 0, trainable: bool = True
) -> list[str]:
    """Inject LoRA adapters (B = 0, so the model's outputs do not change yet; A drawn from
    ``seed``; fp32 whatever the model's dtype) into ``handle.model`` in place; returns the
    adapted module names. With ``trainable`` only the adapters require gradients, otherwise
    nothing does. :func:`remove_lora` undoes it."""
    from peft import LoraConfig, inject_adapter_in_model

    if has_lora(handle):
        raise LoRAError(f"{handle.name} already carries LoRA adapters; remove_lora() first")
    targets = attention_projections(handle)
    gpt2 = handle.adapter.family == "gpt2"
    peft_config = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        fan_in_fan_out=gpt2,  # GPT-2's Conv1D stores weights transposed
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, handle.model)
    for name, param in handle.model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
        param.requires_grad_(trainable and "lora_" in name)
    return targets


def remove_lora(handle: ModelHandle) -> None:
    """Put the original projections back (the adapters are dropped, the weights untouched)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(handle.model.named_modules()):
        if isinstance(module, LoraLayer) and hasattr(module, "base_layer"):
            parent_name, _, child = name.rpartition(".")
            parent = handle.model.get_submodule(parent_name) if parent_name else handle.model
            setattr(parent, child, module.base_layer)
    for param in handle.model.parameters():
        param.requires_grad_(False)
    handle.model.__dict__.pop("peft_config", None)


def lora_state(handle: ModelHandle) -> dict[str, torch.Tensor]:
    """The adapter tensors (CPU copies), keyed by parameter name."""
    return {
        n: p.detach().to("cpu").clone() for n, p in handle.model.named_parameters() if "lora_" in n
    }


def load_lora_state(handle: ModelHandle, tensors: dict[str, torch.Tensor]) -> None:
    """Copy stored adapter tensors into adapters injected with :func:`apply_lora`."""
    params = dict(handle.model.named_parameters())
    have = {n for n in params if "lora_" in n}
    if set(tensors) != have:
        missing, extra = sorted(have - set(tensors)), sorted(set(tensors) - have)
        raise LoRAError(
            f"the stored adapters do not fit {handle.name}: missing {missing[:3]}, unexpected "
            f"{extra[:3]} (trained with another model or rank?)"
        )
    with torch.no_grad():
        for n, t in tensors.items():
            if params[n].shape != t.shape:
                raise LoRAError(
                    f"adapter {n} has shape {tuple(t.shape)}, the model wants "
                    f"{tuple(params[n].shape)}; give the rank it was trained with"
                )
            params[n].copy_(t.to(params[n].device, params[n].dtype))


@dataclass
class LoRAResult:
    history: list[dict[str, float]]
    seconds: float
    lr: float
    objective: str
    targets: list[str]
    best_dev: float | None = None
    best_step: int | None = None
    n_params: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def train_lora(
    handle: ModelHandle,
    formatter: TaskFormatter,
    train: Sequence[Example],
    config: TrainConfig,
    lora: LoRAConfig | None = None,
    *,
    dev: Sequence[Example] | None = None,
    eval_config: EvalConfig | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> LoRAResult:
    """Inject LoRA adapters into ``handle.model`` and train them on ``train`` (the objective,
    per-epoch data order, warm-up/schedule and clipping of prompt training, AdamW at
    ``config.lr`` or :data:`LORA_LR`); with ``dev`` and ``config.eval_every`` the best dev
    adapters are kept. The model is left carrying the trained (frozen) adapters
    (:func:`remove_lora` drops them); if training fails they are removed. Not supported here:
    ``patience`` and resumable checkpoints."""
    lora = lora or LoRAConfig()
    if not train:
        raise TrainConfigError(f"no training examples for {formatter.name}")
    if config.patience is not None:
        raise TrainConfigError("LoRA training has no early stopping; leave patience unset")
    objective = config.objective
    if objective == "auto":
        objective = "rank" if formatter.task.spec.kind == "classification" else "lm"
    lr = config.lr if config.lr is not None else LORA_LR
    targets = apply_lora(handle, lora, seed=config.seed)
    try:
        return _train(
            handle, formatter, train, config, targets, lr, objective, dev, eval_config,
            autocast_dtype, progress,
        )  # fmt: skip
    except BaseException:
        remove_lora(handle)
        raise


def _dropouts(handle: ModelHandle) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [
        d
        for m in handle.model.modules()
        if isinstance(m, LoraLayer)
        for d in m.lora_dropout.values()
    ]


def _train(
    handle: ModelHandle,
    formatter: TaskFormatter,
    train: Sequence[Example],
    config: TrainConfig,
    targets: list[str],
    lr: float,
    objective: str,
    dev: Sequence[Example] | None,
    eval_config: EvalConfig | None,
    autocast_dtype: torch.dtype | None,
    progress: bool,
) -> LoRAResult:
    params = [p for n, p in handle.model.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    batches = _encode(formatter, train, objective, eval_config)
    total = config.total_steps(len(batches.encoded))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total))
    plm = PromptedLM(handle, None, autocast_dtype=autocast_dtype)
    dropouts = _dropouts(handle)
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    started = time.perf_counter()
    bar = tqdm(total=total, desc=f"LoRA {formatter.name}", unit="step", disable=not progress)
    for step in range(total):
        for d in dropouts:  # the model stays in eval mode; only the adapters' dropout acts
            d.train()
        loss_sum = accumulate_gradients(plm, batches, config, optimizer, step)
        lr_now = float(scheduler.get_last_lr()[0])  # the rate this step uses
        record = {"step": float(step + 1), "loss": loss_sum, "lr": lr_now}
        apply_update(params, config, optimizer, scheduler)
        for d in dropouts:
            d.eval()
        if dev and config.eval_every and (step + 1) % config.eval_every == 0:
            subset = list(dev)[: config.dev_limit] if config.dev_limit else list(dev)
            with torch.no_grad():
                score = evaluate(plm, formatter, subset, eval_config).score
            record["dev"] = score
            if best is None or score > best[0]:
                best = (score, step + 1, lora_state(handle))
        history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k not in ("step", "lr")})
        bar.update(1)
    bar.close()
    if best is not None:
        load_lora_state(handle, best[2])
    for p in params:
        p.requires_grad_(False)
    return LoRAResult(
        history,
        time.perf_counter() - started,
        lr,
        objective,
        targets,
        best_dev=None if best is None else best[0],
        best_step=None if best is None else best[1],
        n_params=sum(p.numel() for p in params),
    )
