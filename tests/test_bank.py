"""The prompt bank: store round trips and errors, PEFT export equivalence, results database."""

from __future__ import annotations

import copy
import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.bank import (
    ExportError,
    PromptExistsError,
    PromptLoadError,
    ResultsDB,
    ResultsDBError,
    default_db_path,
    export_peft,
    format_runs_table,
    list_prompts,
    load_prompt,
    read_metadata,
    save_prompt,
    update_metrics,
    versions,
)
from promptatlas.models import ModelHandle, load_model, weights_fingerprint
from promptatlas.outputs import OutputPathError
from promptatlas.prompts import PromptConfig, PromptedLM, SegmentConfig, SoftPrompt

MODELS = ("tiny-gpt2", "tiny-llama", "tiny-gemma3")


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


# -- store ----------------------------------------------------------------------------------

ROUND_TRIP = {
    "v1": PromptConfig(method="v1", length=5),
    "v2-shared": PromptConfig(method="v2", length=4, kv="shared"),
    "v2-separate": PromptConfig(method="v2", length=4, kv="separate"),
    "segments": PromptConfig(
        method="v1",
        segments=(
            SegmentConfig("lang", 3, trainable=False),
            SegmentConfig("task", 4),
            SegmentConfig("late", 2),
        ),
    ),
    "v2-layers": PromptConfig(method="v2", length=3, kv="separate", layers=(0, 2)),
}


@pytest.mark.parametrize("case", list(ROUND_TRIP))
def test_round_trip_is_byte_exact(
    case: str, handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-llama"]
    prompt = make_prompt(handle, ROUND_TRIP[case], seed=3)
    if case == "segments":
        prompt.set_trainable("late", False)  # frozen after construction: must survive too
    metrics = {"test": {"accuracy": 0.75}, "dev": {"accuracy": 0.5}}
    run_config = {"lr": 0.3, "out": tmp_path / "x", "layers": (1, 2)}
    path = save_prompt(
        tmp_path / "p",
        prompt,
        handle,
        task="sa",
        lang="ko",
        seed=7,
        metrics=metrics,
        config=run_config,
        extra={"history": [1.0, 0.5]},
    )
    assert sorted(p.name for p in path.iterdir()) == ["prompt.json", "prompt.safetensors"]

    stored = load_prompt(path, handle)
    before, after = prompt.state_tensors(), stored.prompt.state_tensors()
    assert list(after) == list(before)
    for name in before:
        assert after[name].dtype == before[name].dtype
        assert after[name].shape == before[name].shape
        assert after[name].numpy().tobytes() == before[name].numpy().tobytes()
    flags = {n: p.requires_grad for n, p in stored.prompt.segments.items()}
    assert flags == {n: p.requires_grad for n, p in prompt.segments.items()}
    if case == "segments":
        assert flags == {"lang": False, "task": True, "late": False}
    assert stored.prompt.layer_indices == prompt.layer_indices
    assert stored.prompt.config.method == prompt.config.method
    assert stored.prompt.config.kv == prompt.config.kv

    meta = stored.meta
    assert meta == read_metadata(path)
    assert (meta.model, meta.model_fingerprint) == ("tiny-llama", handle.fingerprint)
    assert meta.geometry == dataclasses.asdict(handle.geometry)
    assert (meta.task, meta.lang, meta.seed) == ("sa", "ko", 7)
    assert meta.metrics == metrics
    assert meta.config == {"lr": 0.3, "out": str(tmp_path / "x"), "layers": [1, 2]}
    assert meta.extra == {"history": [1.0, 0.5]}
    assert meta.num_parameters == prompt.num_parameters()
    assert meta.versions == versions()
    assert meta.created.endswith("+00:00")


def test_prompt_runs_identically_after_reload(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-gemma3"]
    prompt = make_prompt(handle, PromptConfig(method="v2", length=3, layers=(1, 3)))
    stored = load_prompt(save_prompt(tmp_path / "p", prompt, handle), handle)
    ids, mask = batch()
    expected = PromptedLM(handle, prompt).full_logits(ids, mask)
    assert torch.equal(PromptedLM(handle, stored.prompt).full_logits(ids, mask), expected)


def test_wrong_model_names_both_models(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    gpt2 = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(gpt2, PromptConfig(length=4)), gpt2)
    for check in (True, False):  # a different geometry can never be forced
        with pytest.raises(PromptLoadError) as info:
            load_prompt(path, handles["tiny-llama"], check_model=check)
        message = str(info.value)
        assert "tiny-gpt2" in message and "tiny-llama" in message
        assert "promptatlas project" in message
        assert "n_kv_heads=4" in message and "n_kv_heads=2" in message


def test_fingerprint_mismatch_with_equal_geometry(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(handle, PromptConfig(length=4)), handle)
    model = copy.deepcopy(handle.model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    other = dataclasses.replace(handle, model=model, fingerprint=weights_fingerprint(model))
    assert other.geometry == handle.geometry and other.fingerprint != handle.fingerprint

    with pytest.raises(PromptLoadError) as info:
        load_prompt(path, other)
    message = str(info.value)
    assert handle.fingerprint in message and other.fingerprint in message
    assert "check_model=False" in message
    with pytest.warns(UserWarning, match="fingerprint"):
        stored = load_prompt(path, other, check_model=False)
    assert stored.meta.model_fingerprint == handle.fingerprint


def test_truncated_tensors_are_reported(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(handle, PromptConfig(length=4)), handle)
    tensors = path / "prompt.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(PromptLoadError, match="corrupt or truncated") as info:
        load_prompt(path)
    assert str(path) in str(info.value) and "re-train or re-copy" in str(info.value)


def test_bad_metadata_is_reported(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(handle, PromptConfig(length=4)), handle)
    meta_file = path / "prompt.json"
    good = meta_file.read_text()

    meta_file.write_text("{not json")
    with pytest.raises(PromptLoadError, match="not valid JSON"):
        load_prompt(path)
    with pytest.raises(PromptLoadError, match="not valid JSON"):
        read_metadata(path)

    meta_file.write_text(good.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(PromptLoadError, match="format_version 99"):
        load_prompt(path)

    # Tensors from a different prompt (length 4) than the metadata says (length 6).
    data = json.loads(good)
    data["prompt"]["length"] = 6
    data["prompt"]["segments"][0]["length"] = 6
    meta_file.write_text(json.dumps(data))
    with pytest.raises(PromptLoadError, match="does not match"):
        load_prompt(path)

    meta_file.unlink()
    with pytest.raises(PromptLoadError, match=r"prompt\.json is missing"):
        load_prompt(path)
    with pytest.raises(PromptLoadError, match="does not exist"):
        load_prompt(tmp_path / "nowhere")


def test_failed_save_keeps_previous_prompt(
    handles: dict[str, ModelHandle], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    handle = handles["tiny-gpt2"]
    old = make_prompt(handle, PromptConfig(length=4), seed=1)
    path = save_prompt(tmp_path / "p", old, handle, metrics={"accuracy": 0.5})
    real_save = safetensors.torch.save_file

    def failing_save(tensors: dict[str, torch.Tensor], filename: str, **kwargs: Any) -> None:
        real_save(tensors, filename, **kwargs)
        Path(filename).write_bytes(Path(filename).read_bytes()[:10])  # half-written, then crash
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    new = make_prompt(handle, PromptConfig(length=4), seed=2)
    with pytest.raises(OSError, match="disk full"):
        save_prompt(path, new, handle, metrics={"accuracy": 0.9}, overwrite=True)
    with pytest.raises(OSError, match="disk full"):
        save_prompt(tmp_path / "fresh", new, handle)

    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp or half-written dirs
    stored = load_prompt(path, handle)
    assert torch.equal(stored.prompt.tensor(), old.tensor())
    assert stored.meta.metrics == {"accuracy": 0.5}


def test_save_replaces_prompt_but_not_other_directories(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    handle = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(handle, PromptConfig(length=4), 1), handle)
    new = make_prompt(handle, PromptConfig(length=6), 2)
    with pytest.raises(PromptExistsError, match="overwrite"):
        save_prompt(path, new, handle)
    save_prompt(path, new, handle, overwrite=True)
    assert torch.equal(load_prompt(path).prompt.tensor(), new.tensor())
    assert [p.name for p in tmp_path.iterdir()] == ["p"]

    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(OutputPathError, match="not a prompt directory"):
        save_prompt(precious, new, handle)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_update_metrics_merges(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    path = save_prompt(
        tmp_path / "p",
        make_prompt(handle, PromptConfig(length=4)),
        handle,
        metrics={"dev": {"accuracy": 0.5, "loss": 1.0}},
    )
    update_metrics(path, {"dev": {"accuracy": 0.6}, "test": {"accuracy": 0.7}})
    assert read_metadata(path).metrics == {
        "dev": {"accuracy": 0.6, "loss": 1.0},
        "test": {"accuracy": 0.7},
    }
    assert sorted(p.name for p in path.iterdir()) == ["prompt.json", "prompt.safetensors"]
    load_prompt(path, handle)


def test_list_prompts(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    prompt = make_prompt(handle, PromptConfig(length=4))
    save_prompt(tmp_path / "bank" / "sa" / "en", prompt, handle, task="sa", lang="en")
    save_prompt(tmp_path / "bank" / "nli", prompt, handle, task="nli")
    save_prompt(tmp_path / "bank" / ".hidden", prompt, handle, task="x")
    broken = tmp_path / "bank" / "broken"
    save_prompt(broken, prompt, handle, task="broken")
    (broken / "prompt.json").write_text("[]")
    with pytest.warns(UserWarning, match="broken"):
        found = list_prompts(tmp_path / "bank")
    assert [(p.relative_to(tmp_path / "bank").as_posix(), m.task) for p, m in found] == [
        ("nli", "nli"),
        ("sa/en", "sa"),
    ]
    assert list_prompts(tmp_path / "missing") == []


# -- PEFT export ----------------------------------------------------------------------------

EXPORTS = {
    "v1": PromptConfig(method="v1", length=4),
    "v2-separate": PromptConfig(method="v2", length=4, kv="separate"),
    "v2-shared": PromptConfig(method="v2", length=4, kv="shared"),
}


def _peft_reference_config(handle: ModelHandle, config: PromptConfig) -> dict[str, Any]:
    """adapter_config.json as PEFT itself writes it for the same adapter."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    k = config.length
    peft_config = (
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k)
        if config.method == "v1"
        else PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k)
    )
    model = get_peft_model(copy.deepcopy(handle.model), peft_config)
    data: dict[str, Any] = model.peft_config["default"].to_dict()
    data["inference_mode"] = True  # save_pretrained sets it while writing
    return data


@pytest.mark.parametrize("case", list(EXPORTS))
@pytest.mark.parametrize("model_name", MODELS)
def test_peft_export_matches_promptatlas(
    model_name: str, case: str, handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    from peft import PeftModel

    handle = handles[model_name]
    config = EXPORTS[case]
    prompt = make_prompt(handle, config)
    stored = load_prompt(save_prompt(tmp_path / "p", prompt, handle, task="sa"), handle)
    out = export_peft(stored, tmp_path / "peft", handle)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    written = json.loads((out / "adapter_config.json").read_text())
    reference = _peft_reference_config(handle, config)
    assert written == reference
    readme = (out / "README.md").read_text()
    assert model_name in readme and "PeftModel.from_pretrained" in readme

    peft_model = PeftModel.from_pretrained(copy.deepcopy(handle.model), out)
    peft_model.eval()
    ids, mask = batch()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits
        ours = PromptedLM(handle, prompt).full_logits(ids, mask)
        base = PromptedLM(handle).full_logits(ids, mask)
    if config.method == "v1":
        theirs = theirs[:, config.length :]
    valid = mask.bool()
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs[valid], ours[valid], atol=1e-5, rtol=0)
    # The prompt must matter, or the comparison above would prove nothing.
    assert (theirs[valid] - base[valid]).abs().max() > 1e-3


def test_export_from_directory_and_overwrite(
    handles: dict[str, ModelHandle], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    handle = handles["tiny-llama"]
    prompt = make_prompt(handle, EXPORTS["v2-separate"])
    path = save_prompt(tmp_path / "p", prompt, handle)
    out = export_peft(path, tmp_path / "peft")  # no handle: base model from the metadata
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        handle.source
    )
    first = load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"]
    g = handle.geometry
    assert first.shape == (4, g.n_layers * 2 * g.d_kv)
    # Row i holds layer 1's value for token i at [layer, k/v, head, head_dim] offset (1, 1).
    offset = (1 * 2 + 1) * g.d_kv
    assert torch.equal(first[:, offset : offset + g.d_kv], prompt.tensor()[1, 1])

    export_peft(path, out)  # replacing an existing export is allowed
    assert torch.equal(
        load_file(str(out / "adapter_model.safetensors"))["prompt_embeddings"], first
    )


def test_export_layer_subset_is_refused(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    handle = handles["tiny-gpt2"]
    prompt = make_prompt(handle, PromptConfig(method="v2", length=3, layers=(0, 1)))
    path = save_prompt(tmp_path / "p", prompt, handle)
    with pytest.raises(ExportError, match="every layer"):
        export_peft(path, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_export_checks_the_model(handles: dict[str, ModelHandle], tmp_path: Path) -> None:
    gpt2 = handles["tiny-gpt2"]
    path = save_prompt(tmp_path / "p", make_prompt(gpt2, EXPORTS["v1"]), gpt2)
    with pytest.raises(PromptLoadError, match="tiny-llama"):
        export_peft(load_prompt(path), tmp_path / "peft", handles["tiny-llama"])


# -- results database -----------------------------------------------------------------------


def _record(db: ResultsDB, **overrides: Any) -> int:
    fields: dict[str, Any] = {
        "kind": "eval",
        "model": "tiny-gpt2",
        "task": "sa",
        "lang": "en",
        "method": "v1",
        "split": "test",
        "metrics": {"accuracy": 0.5, "n": 10},
        "config": {"lr": 0.3},
    }
    fields.update(overrides)
    return db.record(**fields)


def test_results_db_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "results.sqlite"
    with ResultsDB(path) as db:
        first = _record(db, key="sa/en/v1/0", seed=0, prompt_dir=tmp_path / "p")
        second = _record(db, task="nli", metrics={"macro_f1": 0.4, "accuracy": 0.9}, seed=1)
        third = _record(db, lang="ko", metrics={"score": 0.7}, status="failed", key="ko")
        _record(db, kind="zero-shot", method=None, metrics={"loss": 2.0}, versions={"x": "1"})
        assert len(db) == 4

    with ResultsDB(path) as db:  # persisted, schema not re-created
        runs = db.find()
        assert [r.id for r in runs][:3] == [4, third, second]  # newest first
        by_id = {r.id: r for r in runs}
        assert by_id[first].score == 0.5
        assert by_id[second].score == 0.4  # the task's main metric wins over accuracy
        assert by_id[third].score == 0.7
        assert by_id[4].score is None and by_id[4].method is None
        assert by_id[4].versions == {"x": "1"}
        assert by_id[first].versions == versions()
        assert by_id[first].metrics == {"accuracy": 0.5, "n": 10}
        assert by_id[first].config == {"lr": 0.3}
        assert by_id[first].prompt_dir == str(tmp_path / "p") and by_id[first].seed == 0

        assert [r.id for r in db.find(task="nli")] == [second]
        assert [r.id for r in db.find(task="sa", lang="en", kind="eval")] == [first]
        assert {r.id for r in db.find(lang=["en", "ko"], kind="eval")} == {first, second, third}
        assert [r.id for r in db.find(task=None, kind="zero-shot")] == [4]
        assert [r.id for r in db.find(prompt_dir=tmp_path / "p")] == [first]
        assert db.find(model="nope") == [] and db.find(lang=[]) == []
        assert len(db.find(limit=2)) == 2
        with pytest.raises(TypeError, match="unknown filter"):
            db.find(score=1)

        assert db.has("sa/en/v1/0")
        assert not db.has("ko")  # failed runs do not count as done
        assert db.has("ko", status="failed")
        assert not db.has("missing")

        table = format_runs_table(db.find(kind="eval"), ["id", "task", "score", "metrics.n"])
        lines = table.splitlines()
        assert lines[0].split() == ["id", "task", "score", "metrics.n"]
        assert lines[2].split() == [str(third), "sa", "0.7000", "-"]
        assert lines[-1].split() == [str(first), "sa", "0.5000", "10"]
        assert len({len(line) for line in lines[:2]}) == 1  # aligned header and rule
        assert "created" in format_runs_table(runs)
        assert format_runs_table([]) == "(no runs)"

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    conn.close()


def test_results_db_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite"
    ResultsDB(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE schema_version SET version = 99")
    conn.close()
    with pytest.raises(ResultsDBError, match="schema version 99"):
        ResultsDB(path)


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROMPTATLAS_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_db_path() == tmp_path / ".promptatlas" / "results.sqlite"
    monkeypatch.setenv("PROMPTATLAS_DB", str(tmp_path / "elsewhere.sqlite"))
    assert default_db_path() == tmp_path / "elsewhere.sqlite"
    with ResultsDB() as db:
        _record(db)
    assert (tmp_path / "elsewhere.sqlite").exists()
