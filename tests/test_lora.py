"""LoRA on the attention projections (PEFT, injected in place): what is adapted, that only the
adapters train and the loss falls, that removing them restores the model, and that stored
adapter tensors reproduce the tuned model."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from promptatlas.formatting import TaskFormatter, collate
from promptatlas.models import load_model
from promptatlas.prompts import PromptedLM
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig
from promptatlas.training.lora import (
    LoRAConfig,
    LoRAError,
    apply_lora,
    attention_projections,
    has_lora,
    load_lora_state,
    lora_state,
    remove_lora,
    train_lora,
)


def _hidden(handle: Any, formatter: TaskFormatter, examples: list[Any]) -> torch.Tensor:
    batch = collate([formatter.encode(ex) for ex in examples], handle.tokenizer.pad_token_id)
    with torch.no_grad():
        return PromptedLM(handle, None).forward(batch.input_ids, batch.attention_mask).hidden


@pytest.mark.parametrize(
    ("model", "names"),
    [("tiny-llama", ("q_proj", "k_proj", "v_proj", "o_proj")), ("tiny-gpt2", ("c_attn", "c_proj"))],
)
def test_adapters_go_on_every_attention_projection_and_start_as_no_op(
    model: str, names: tuple[str, ...]
) -> None:
    handle = load_model(model)
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    data = load_split("sa", "en", "train", limit=4)
    before = _hidden(handle, fmt, data)
    targets = attention_projections(handle)
    assert len(targets) == len(names) * handle.geometry.n_layers
    assert {t.rsplit(".", 1)[1] for t in targets} == set(names)
    assert not any(".mlp." in t for t in targets)  # the FFN (the skill neurons) is untouched
    apply_lora(handle, LoRAConfig(r=2, alpha=4))
    trainable = [n for n, p in handle.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.allclose(_hidden(handle, fmt, data), before, atol=1e-6)  # B = 0
    with pytest.raises(LoRAError, match="already carries"):
        apply_lora(handle, LoRAConfig())
    remove_lora(handle)
    assert not has_lora(handle)
    assert not any(p.requires_grad for p in handle.model.parameters())


def test_training_lowers_the_loss_and_changes_only_the_adapters() -> None:
    handle = load_model("tiny-llama")
    fmt = TaskFormatter(handle.tokenizer, get_task("sa", "en"))
    train = load_split("sa", "en", "train", limit=16)
    base = {n: p.detach().clone() for n, p in handle.model.named_parameters()}
    before = _hidden(handle, fmt, train[:4])
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, seed=3)
    result = train_lora(handle, fmt, train, cfg, LoRAConfig(r=4, alpha=8), progress=False)
    first = sum(r["loss"] for r in result.history[:5]) / 5
    last = sum(r["loss"] for r in result.history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert result.objective == "rank" and result.n_params > 0
    state = lora_state(handle)
    tuned = _hidden(handle, fmt, train[:4])
    assert not torch.allclose(tuned, before, atol=1e-4)
    for n, p in handle.model.named_parameters():
        if "lora_" not in n:
            key = n.replace(".base_layer", "")
            assert torch.equal(p, base[key]), n  # the model's own weights keep their bytes
    # stored adapters reproduce the tuned model on a fresh copy; removal restores the base
    other = load_model("tiny-llama")
    apply_lora(other, LoRAConfig(r=4, alpha=8))
    load_lora_state(other, state)
    assert torch.allclose(_hidden(other, fmt, train[:4]), tuned, atol=1e-6)
    with pytest.raises(LoRAError, match="rank"):
        wrong = load_model("tiny-llama")
        apply_lora(wrong, LoRAConfig(r=2, alpha=8))
        load_lora_state(wrong, state)
    remove_lora(handle)
    assert torch.allclose(_hidden(handle, fmt, train[:4]), before, atol=1e-6)


def test_peft_wraps_exactly_the_named_projections_on_a_deeper_model(tmp_path: Any) -> None:
    """With 20 or more targets PEFT shortens the names to suffixes; those must still match
    only the attention projections (6 layers × q/k/v/o = 24)."""
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tiny = load_model("tiny-llama")
    config = LlamaConfig(
        vocab_size=len(tiny.tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    handle = load_model(str(tmp_path))
    targets = apply_lora(handle, LoRAConfig(r=2), trainable=False)
    assert len(targets) == 24
    wrapped = {n for n, m in handle.model.named_modules() if isinstance(m, LoraLayer)}
    assert wrapped == set(targets)
    assert not any(p.requires_grad for p in handle.model.parameters())  # trainable=False
    assert all(p.dtype == torch.float32 for n, p in handle.model.named_parameters() if "lora_" in n)
    remove_lora(handle)
    assert not has_lora(handle) and not hasattr(handle.model, "peft_config")
    apply_lora(handle, LoRAConfig(r=2))  # again on the same model, cleanly
    assert {n for n, m in handle.model.named_modules() if isinstance(m, LoraLayer)} == set(targets)
