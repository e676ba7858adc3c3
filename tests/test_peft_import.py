"""PEFT import: export → import is exact on every tiny family; adapters written by the real
``peft`` library give the same logits through promptatlas as through PEFT; unsupported adapters
end in one clear error."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.bank import export_peft, load_prompt, save_prompt
from promptatlas.bank.peft_import import (
    PeftImportError,
    import_peft,
    prompt_from_peft,
    read_peft_adapter,
)
from promptatlas.models import ModelHandle, load_model
from promptatlas.prompts import PromptConfig, PromptedLM, SegmentConfig, SoftPrompt

MODELS = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")

CASES = {
    "v1": PromptConfig(method="v1", length=4),
    "v2-separate": PromptConfig(method="v2", length=3, kv="separate"),
    "v2-shared": PromptConfig(method="v2", length=3, kv="shared"),
}


@pytest.fixture(scope="module")
def handles() -> dict[str, ModelHandle]:
    return {name: load_model(name, device="cpu") for name in MODELS}


def make_prompt(handle: ModelHandle, config: PromptConfig, seed: int = 0) -> SoftPrompt:
    prompt = SoftPrompt(config, handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(seed))
    return prompt


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two right-padded sequences (the second has 3 padding positions)."""
    ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def logits(handle: ModelHandle, prompt: SoftPrompt | None) -> torch.Tensor:
    ids, mask = batch()
    with torch.no_grad():
        return PromptedLM(handle, prompt).full_logits(ids, mask)


# -- export → import -------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("model_name", MODELS)
def test_export_import_round_trip_is_exact(
    model_name: str, case: str, handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles[model_name]
    config = CASES[case]
    prompt = make_prompt(handle, config)
    stored = save_prompt(tmp_path / "p", prompt, handle, task="sa", lang="en")
    adapter_dir = export_peft(stored, tmp_path / "peft", handle)

    back = prompt_from_peft(adapter_dir, handle.geometry)
    assert back.config.method == config.method
    assert back.config.length == config.length
    if config.method == "v2":
        assert back.config.kv == config.kv  # "auto" recovers a shared prompt
    assert torch.equal(back.tensor(), prompt.tensor())
    assert torch.equal(logits(handle, back), logits(handle, prompt))

    imported = import_peft(adapter_dir, tmp_path / "imported", handle, task="sa", lang="en")
    loaded = load_prompt(imported, handle)
    assert torch.equal(loaded.prompt.tensor(), prompt.tensor())
    source = loaded.meta.extra["imported_from"]
    assert source["peft_dir"] == str(adapter_dir)
    assert source["base_model_name_or_path"] == handle.source
    assert (loaded.meta.task, loaded.meta.lang) == ("sa", "en")


def test_segments_import_as_one_task_segment(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-llama"]
    config = PromptConfig(
        method="v1", segments=(SegmentConfig("lang", 2, trainable=False), SegmentConfig("task", 3))
    )
    prompt = make_prompt(handle, config)
    adapter_dir = export_peft(save_prompt(tmp_path / "p", prompt, handle), tmp_path / "peft")
    back = prompt_from_peft(adapter_dir, handle.geometry)
    assert back.segment_names() == ["task"]
    assert torch.equal(back.tensor(), prompt.tensor())


def test_kv_choices(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    shared = make_prompt(handle, CASES["v2-shared"])
    shared_dir = export_peft(save_prompt(tmp_path / "s", shared, handle), tmp_path / "ps")
    forced = prompt_from_peft(shared_dir, handle.geometry, kv="separate")
    assert forced.config.kv == "separate"
    assert torch.equal(logits(handle, forced), logits(handle, shared))

    separate = make_prompt(handle, CASES["v2-separate"])
    sep_dir = export_peft(save_prompt(tmp_path / "d", separate, handle), tmp_path / "pd")
    with pytest.raises(PeftImportError, match="kv='separate'"):
        prompt_from_peft(sep_dir, handle.geometry, kv="shared")


# -- adapters written by PEFT ----------------------------------------------------------------


def _peft_adapter(handle: ModelHandle, kind: str, out: Path, **save: Any) -> Any:
    """A randomly initialised PEFT adapter on a copy of the model, saved to ``out``; returns the
    PEFT model in eval mode (the reference)."""
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptTuningConfig,
        get_peft_model,
    )

    torch.manual_seed(3)
    configs: dict[str, Any] = {
        "prompt": PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
        "p-tuning": PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=4, encoder_hidden_size=16
        ),
        "prefix": PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
        "prefix-projection": PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True,
            encoder_hidden_size=16,
        ),
    }  # fmt: skip
    model = get_peft_model(copy.deepcopy(handle.model), configs[kind])
    if kind == "prefix-projection":
        # Random output layer, so the projected prefix is not zero.
        encoder = model.prompt_encoder["default"]
        torch.nn.init.normal_(encoder.transform[-1].weight, std=0.5)
    model.save_pretrained(str(out), **save)
    model.eval()
    return model


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
@pytest.mark.parametrize("model_name", MODELS)
def test_real_peft_adapter_gives_peft_logits(
    model_name: str, kind: str, handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles[model_name]
    reference = _peft_adapter(handle, kind, tmp_path / "adapter")
    prompt = prompt_from_peft(tmp_path / "adapter", handle.geometry)
    assert prompt.method == ("v1" if kind == "prompt" else "v2")
    ids, mask = batch()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask).logits
    if kind == "prompt":
        theirs = theirs[:, prompt.length :]
    ours, base = logits(handle, prompt), logits(handle, None)
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=0)
    assert (ours[valid] - base[valid]).abs().max() > 1e-3  # the prompt matters

    # PEFT reloading its own files agrees too (the files, not only the live model, are read).
    from peft import PeftModel

    reloaded = PeftModel.from_pretrained(copy.deepcopy(handle.model), tmp_path / "adapter")
    reloaded.eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    if kind == "prompt":
        again = again[:, prompt.length :]
    torch.testing.assert_close(ours[valid], again[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["p-tuning", "prefix-projection"])
def test_real_peft_reparametrised_adapters(
    kind: str, handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    """P-tuning and prefix tuning with projection save the encoder's output: the prompt itself."""
    handle = handles["tiny-llama"]
    reference = _peft_adapter(handle, kind, tmp_path / "adapter")
    adapter = read_peft_adapter(tmp_path / "adapter")
    prompt = prompt_from_peft(adapter, handle.geometry)
    ids, mask = batch()
    with torch.no_grad():
        theirs = reference(input_ids=ids, attention_mask=mask).logits
    if prompt.method == "v1":
        theirs = theirs[:, prompt.length :]
    valid = mask.bool()
    ours, base = logits(handle, prompt), logits(handle, None)
    torch.testing.assert_close(ours[valid], theirs[valid], atol=1e-5, rtol=0)
    assert (ours[valid] - base[valid]).abs().max() > 1e-3


def test_bin_weights_are_read_without_pickle_code(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-gpt2"]
    reference = _peft_adapter(handle, "prompt", tmp_path / "adapter", safe_serialization=False)
    assert (tmp_path / "adapter" / "adapter_model.bin").is_file()
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    prompt = prompt_from_peft(tmp_path / "adapter", handle.geometry)
    expected = reference.prompt_encoder["default"].embedding.weight.detach()
    assert torch.equal(prompt.tensor(), expected)


class _Payload:
    """Anything a pickle could construct; weights_only=True refuses it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "adapter"
    folder.mkdir()
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 2}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    torch.save(
        {"prompt_embeddings": torch.zeros(2, 8), "x": _Payload()}, folder / "adapter_model.bin"
    )
    with pytest.raises(PeftImportError, match="weights_only=True"):
        read_peft_adapter(folder)
    assert "must never run" not in capsys.readouterr().out


# -- errors ----------------------------------------------------------------------------------


def _adapter(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


PROMPT = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 2}


@pytest.mark.parametrize(
    ("config", "tensors", "message"),
    [
        ({"peft_type": "LORA", "task_type": "CAUSAL_LM"}, {}, "LORA adapter"),
        ({**PROMPT, "task_type": "SEQ_2_SEQ_LM"}, {}, "CAUSAL_LM"),
        ({**PROMPT, "num_transformer_submodules": 2}, {}, "decoder-only"),
        (PROMPT, {"other": torch.zeros(2, 8)}, "no 'prompt_embeddings'"),
        (
            PROMPT,
            {"prompt_embeddings": torch.zeros(2, 8), "lm_head.weight": torch.zeros(3, 8)},
            "modules_to_save",
        ),
        ({**PROMPT, "num_virtual_tokens": 5}, {"prompt_embeddings": torch.zeros(2, 8)}, "rows"),
    ],
)
def test_unsupported_adapters(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], message: str, tmp_path: Path
) -> None:
    folder = _adapter(tmp_path / "a", config, tensors or {"prompt_embeddings": torch.zeros(2, 8)})
    with pytest.raises(PeftImportError, match=message):
        read_peft_adapter(folder)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(PeftImportError, match="does not exist"):
        read_peft_adapter(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftImportError, match=r"adapter_config\.json"):
        read_peft_adapter(tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text(json.dumps(PROMPT))
    with pytest.raises(PeftImportError, match="neither"):
        read_peft_adapter(tmp_path / "empty")


def test_wrong_model_geometry(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    gpt2, llama = handles["tiny-gpt2"], handles["tiny-llama"]
    assert gpt2.geometry.d_kv != llama.geometry.d_kv
    prompt = make_prompt(gpt2, CASES["v2-separate"])
    adapter_dir = export_peft(save_prompt(tmp_path / "p", prompt, gpt2), tmp_path / "x")
    with pytest.raises(PeftImportError, match=r"layers × 2 × d_kv"):
        prompt_from_peft(adapter_dir, llama.geometry)
    v1 = make_prompt(gpt2, CASES["v1"])
    v1_dir = export_peft(save_prompt(tmp_path / "q", v1, gpt2), tmp_path / "y")
    wider = dataclasses.replace(gpt2.geometry, d_model=gpt2.geometry.d_model * 2)
    with pytest.raises(PeftImportError, match="width"):
        prompt_from_peft(v1_dir, wider)


def test_prefix_projection_input_only_is_refused(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    g = handles["tiny-llama"].geometry
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 2,
        "prefix_projection": True,
        "token_dim": g.d_kv,
    }
    folder = _adapter(tmp_path / "a", config, {"prompt_embeddings": torch.zeros(2, g.d_kv)})
    with pytest.raises(PeftImportError, match="prefix_projection=True"):
        prompt_from_peft(folder, g)
