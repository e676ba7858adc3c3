"""Cross-model prompt projector: shapes across geometries, bank round trip, training,
frozen model and source, storage, determinism, resume and error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.bank import load_prompt, save_prompt
from promptatlas.evaluation.predict import target_loss
from promptatlas.formatting import TaskFormatter, collate
from promptatlas.prompts import (
    PromptConfig,
    PromptConfigError,
    PromptedLM,
    SegmentConfig,
    SoftPrompt,
)
from promptatlas.tasks import get_task, load_split
from promptatlas.training import TrainConfig, train_prompt
from promptatlas.transfer.projector import (
    PROJECTOR_METADATA_FILE,
    PROJECTOR_TENSORS_FILE,
    ProjectedPrompt,
    ProjectorConfig,
    ProjectorError,
    ProjectorLoadError,
    PromptProjector,
    fit_projector_distance,
    from_positions,
    load_projector,
    position_size,
    project_prompt,
    prompt_kind,
    save_projector,
    target_prompt_config,
    to_positions,
    train_projector,
)

KINDS: dict[str, dict[str, Any]] = {
    "v1": {"method": "v1"},
    "v2-shared": {"method": "v2", "kv": "shared"},
    "v2-separate": {"method": "v2", "kv": "separate"},
}
# (source, target): different width and depth; different depth and key/value heads; narrower.
PAIRS = [("tiny-gpt2", "wide"), ("tiny-llama", "tiny-gemma3"), ("wide", "tiny-llama")]


@pytest.fixture(scope="module")
def handles(tiny_handles: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny models plus 'wide': a random Llama with d=48, 2 layers, 4 kv heads (d_kv=48)
    (the registry's tiny models all have d=32)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from promptatlas.models import load_model

    out = tmp_path_factory.mktemp("wide-llama")
    tokenizer = tiny_handles["tiny-llama"].tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    wide = load_model(str(out))
    assert wide.geometry.d_model == 48 and wide.geometry.n_layers == 2
    return {**tiny_handles, "wide": wide}


@pytest.fixture(scope="module")
def train_set() -> list[Any]:
    return load_split("sa", "en", "train", limit=8)


def _source(handle: Any, kind: str = "v1", length: int = 4, **kw: Any) -> SoftPrompt:
    kw.setdefault("init", "uniform")  # these tests vary init_range
    prompt = SoftPrompt(PromptConfig(length=length, **KINDS[kind], **kw), handle.geometry)
    prompt.initialise(handle, generator=torch.Generator().manual_seed(0))
    return prompt


def _projector(source: SoftPrompt, target: Any, seed: int = 0, **kw: Any) -> PromptProjector:
    target_config = target_prompt_config(source.config, kw.pop("target_layers", None))
    return PromptProjector(
        position_size(source.config, source.geometry),
        position_size(target_config, target.geometry),
        ProjectorConfig(hidden=kw.pop("hidden", 16), **kw),
        kind=prompt_kind(source.config),
        generator=torch.Generator().manual_seed(seed),
    )


def _formatter(handle: Any) -> TaskFormatter:
    return TaskFormatter(handle.tokenizer, get_task("sa", "en"))


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 200, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return ids, mask


# -- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("src", "tgt"), PAIRS)
def test_shapes_across_geometries(handles: Any, src: str, tgt: str, kind: str) -> None:
    source_h, target_h = handles[src], handles[tgt]
    assert source_h.geometry != target_h.geometry
    source = _source(source_h, kind, length=5)
    projected = ProjectedPrompt(source, _projector(source, target_h), target_h.geometry)
    g = target_h.geometry
    expected = {
        "v1": (5, g.d_model),
        "v2-shared": (g.n_layers, 5, g.d_kv),
        "v2-separate": (g.n_layers, 2, 5, g.d_kv),
    }[kind]
    assert tuple(projected.tensor().shape) == expected
    plain = projected.to_soft_prompt()
    assert plain.geometry == g and tuple(plain.tensor().shape) == expected
    assert plain.segments["task"].grad_fn is None  # detached from the projector
    torch.testing.assert_close(plain.tensor(), projected.tensor().detach())
    # the target model runs with it, and the prompt changes its output
    ids, mask = _ids()
    real = mask.bool()
    logits = PromptedLM(target_h, projected).full_logits(ids, mask)
    assert logits.shape == (*ids.shape, g.vocab_size) and torch.isfinite(logits[real]).all()
    base = PromptedLM(target_h, None).full_logits(ids, mask)
    assert (logits[real] - base[real]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", list(KINDS))
def test_projection_is_per_position(handles: Any, kind: str) -> None:
    """Changing source position 2 changes target position 2 only (no mixing of the token axis
    with layers or key/value halves in the reshapes)."""
    source_h, target_h = handles["tiny-gpt2"], handles["wide"]
    source = _source(source_h, kind, length=4)
    projector = _projector(source, target_h)
    before = ProjectedPrompt(source, projector, target_h.geometry).tensor().detach()
    dim = source.token_dim
    with torch.no_grad():
        source.segments["task"].select(dim, 2).add_(1.0)
    after = ProjectedPrompt(source, projector, target_h.geometry).tensor().detach()
    changed = (after - before).abs().movedim(dim, 0).reshape(4, -1).amax(dim=1)
    assert changed[2] > 1e-4
    assert torch.equal(changed[[0, 1, 3]], torch.zeros(3))


@pytest.mark.parametrize("kind", list(KINDS))
def test_positions_round_trip(handles: Any, kind: str) -> None:
    prompt = _source(handles["tiny-llama"], kind, length=3)
    flat = to_positions(prompt.tensor(), prompt.config)
    assert flat.shape == (3, position_size(prompt.config, prompt.geometry))
    assert torch.equal(from_positions(flat, prompt.config, prompt.geometry), prompt.tensor())


def test_layer_subset_and_segments(handles: Any) -> None:
    source_h, target_h = handles["tiny-llama"], handles["tiny-gemma3"]
    cfg = PromptConfig(
        method="v2",
        kv="separate",
        layers=(0, 2),
        segments=(SegmentConfig("lang", 2, trainable=False), SegmentConfig("task", 3)),
    )
    source = SoftPrompt(cfg, source_h.geometry)
    source.initialise(source_h, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ProjectorError, match="target_layers"):
        target_prompt_config(source.config)
    with pytest.raises(ProjectorError, match="target_layers"):
        _projector(source, target_h)
    projector = _projector(source, target_h, target_layers=(1, 2, 3))
    assert projector.in_features == 2 * 2 * 16 and projector.out_features == 3 * 2 * 16
    plain = project_prompt(projector, source, target_h.geometry, target_layers=(1, 2, 3))
    assert plain.layer_indices == (1, 2, 3)
    assert plain.segment_names() == ["lang", "task"]
    assert tuple(plain.segments["lang"].shape) == (3, 2, 2, 16)
    assert not plain.segments["lang"].requires_grad and plain.segments["task"].requires_grad
    ids, mask = _ids()
    assert torch.isfinite(PromptedLM(target_h, plain).full_logits(ids, mask)).all()
    with pytest.raises(ProjectorError, match="layers"):  # layer 7 does not exist on the target
        project_prompt(projector, source, target_h.geometry, target_layers=(1, 2, 7))
    with pytest.raises(ProjectorError, match="v2 prompts only"):
        target_prompt_config(PromptConfig(method="v1"), (0,))


# -- bank ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["v1", "v2-separate"])
def test_projected_prompt_loads_onto_target(handles: Any, tmp_path: Path, kind: str) -> None:
    source_h, target_h = handles["tiny-gpt2"], handles["wide"]
    source = _source(source_h, kind)
    projector = _projector(source, target_h)
    projected = ProjectedPrompt(source, projector, target_h.geometry)
    with pytest.raises(PromptConfigError, match="to_soft_prompt"):
        save_prompt(tmp_path / "bad", projected, target_h)
    plain = project_prompt(projector, source, target_h.geometry)
    save_prompt(tmp_path / "p", plain, target_h, task="sa", lang="en")
    stored = load_prompt(tmp_path / "p", target_h)
    ids, mask = _ids()
    real = mask.bool()
    expected = PromptedLM(target_h, projected).full_logits(ids, mask).detach()
    got = PromptedLM(target_h, stored.prompt).full_logits(ids, mask)
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cannot run on"):  # and not onto the source model
        load_prompt(tmp_path / "p", source_h)


# -- training --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "pair"), [("v1", PAIRS[0]), ("v2-shared", PAIRS[1])])
def test_training_lowers_target_loss(
    handles: Any, train_set: list[Any], kind: str, pair: tuple[str, str]
) -> None:
    source_h, target_h = handles[pair[0]], handles[pair[1]]
    source = _source(source_h, kind)
    fmt = _formatter(target_h)
    cfg = TrainConfig(
        steps=20, batch_size=8, lr=0.01, warmup=0.0, checkpoint_every=0, objective="lm"
    )
    projector, result = train_projector(
        source,
        target_h,
        fmt,
        train_set,
        cfg,
        projector_config=ProjectorConfig(hidden=32),
        progress=False,
    )
    assert isinstance(result.prompt, ProjectedPrompt) and result.steps == 20
    assert not projector.training
    batch = collate([fmt.encode(ex) for ex in train_set], fmt.tokenizer.pad_token_id)
    with torch.no_grad():
        after = float(target_loss(PromptedLM(target_h, result.prompt), batch))
        plain = project_prompt(projector, source, target_h.geometry)
        after_plain = float(target_loss(PromptedLM(target_h, plain), batch))
    before = result.history[0]["loss"]  # full batch, computed before the first update
    assert after < before - 0.2, (before, after)
    assert after_plain == pytest.approx(after, abs=1e-5)


def test_gradients_reach_only_the_projector(handles: Any, train_set: list[Any]) -> None:
    source_h, target_h = handles["tiny-llama"], handles["tiny-gemma3"]
    source = _source(source_h, "v2-shared")
    source_before = source.tensor().detach().clone()
    model_before = {k: v.clone() for k, v in target_h.model.state_dict().items()}
    fmt = _formatter(target_h)
    projector = _projector(source, target_h)
    projected = ProjectedPrompt(source, projector, target_h.geometry)
    assert {id(p) for p in projected.trainable_parameters()} == {
        id(p) for p in projector.parameters()
    }
    assert projected.num_parameters() == sum(p.numel() for p in projector.parameters())
    plm = PromptedLM(target_h, projected)
    batch = collate([fmt.encode(ex) for ex in train_set[:4]], fmt.tokenizer.pad_token_id)
    target_loss(plm, batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert projected.source_positions.grad is None and not projected.source_positions.requires_grad
    assert all(p.grad is None for p in target_h.model.parameters())
    assert all(p.grad is None for p in source.parameters())
    weights_before = {k: v.clone() for k, v in projector.state_dict().items()}
    train_prompt(plm, fmt, train_set, TrainConfig(steps=3, lr=0.01), progress=False)
    assert any(not torch.equal(v, projector.state_dict()[k]) for k, v in weights_before.items())
    assert torch.equal(source.tensor().detach(), source_before)
    after = target_h.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in model_before.items())
    assert all(not p.requires_grad for p in target_h.model.parameters())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_same_seed_same_bytes(handles: Any, train_set: list[Any], dropout: float) -> None:
    source_h, target_h = handles["tiny-gpt2"], handles["tiny-llama"]
    fmt = _formatter(target_h)

    def run(seed: int) -> bytes:
        projector, _ = train_projector(
            _source(source_h),
            target_h,
            fmt,
            train_set,
            TrainConfig(steps=4, batch_size=4, lr=0.01, checkpoint_every=0, seed=seed),
            projector_config=ProjectorConfig(hidden=16, dropout=dropout),
            progress=False,
        )
        return b"".join(v.numpy().tobytes() for v in projector.state_dict().values())

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def test_dropout_only_in_training_steps(handles: Any) -> None:
    source = _source(handles["tiny-gpt2"])
    projector = _projector(source, handles["wide"], dropout=0.5)
    projected = ProjectedPrompt(source, projector, handles["wide"].geometry, seed=1)
    clean = projected.eval().tensor().detach()  # eval mode: no dropout
    projector.train()
    with torch.no_grad():  # evaluation inside training: still the clean projection
        assert torch.equal(projected.tensor(), clean)
    first, second = projected.tensor().detach(), projected.tensor().detach()
    assert not torch.equal(first, clean) and not torch.equal(first, second)  # a new mask per step
    assert int(projected.dropout_step) == 2
    replay = ProjectedPrompt(source, projector, handles["wide"].geometry, seed=1)
    assert torch.equal(replay.tensor().detach(), first)  # masks are a function of (seed, step)


def test_resume_equals_uninterrupted(handles: Any, train_set: list[Any], tmp_path: Path) -> None:
    """The trainer's checkpoint restores the projector and the dropout stream."""
    source_h, target_h = handles["tiny-gpt2"], handles["tiny-llama"]
    source = _source(source_h)
    fmt = _formatter(target_h)
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.01, checkpoint_every=2, seed=5)

    def fresh() -> tuple[PromptedLM, PromptProjector]:
        projector = _projector(source, target_h, seed=5, dropout=0.3).train()
        projected = ProjectedPrompt(source, projector, target_h.geometry, seed=5)
        return PromptedLM(target_h, projected), projector

    plm, projector = fresh()
    full = train_prompt(plm, fmt, train_set, cfg, progress=False)
    plm, _ = fresh()
    train_prompt(plm, fmt, train_set, cfg, checkpoint_dir=tmp_path, progress=False, stop_after=3)
    plm, resumed_projector = fresh()
    resumed = train_prompt(plm, fmt, train_set, cfg, checkpoint_dir=tmp_path, progress=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for key, value in projector.state_dict().items():
        assert torch.equal(resumed_projector.state_dict()[key], value)
    # the state is a snapshot: later updates do not change it (the trainer keeps the best one)
    snapshot = full.prompt.state_tensors()
    with torch.no_grad():
        projector.fc1.weight.add_(1.0)
    assert not torch.equal(snapshot["projector.fc1.weight"], projector.fc1.weight)
    # a checkpoint from another source prompt is refused
    other = ProjectedPrompt(
        _source(source_h, length=4, init_range=0.1), projector, target_h.geometry
    )
    with pytest.raises(PromptConfigError, match="different source prompt"):
        other.load_state_tensors(full.prompt.state_tensors())


# -- storage ---------------------------------------------------------------------------------


def _saved(handles: Any, directory: Path, kind: str = "v2-separate") -> Any:
    source_h, target_h = handles["tiny-llama"], handles["wide"]
    source = _source(source_h, kind)
    projector = _projector(source, target_h, hidden=8, seed=2)
    save_projector(
        directory,
        projector,
        source_model=source_h.name,
        target_model=target_h.name,
        source_geometry=source_h.geometry,
        target_geometry=target_h.geometry,
        prompt_config=source.config,
        extra={"task": "sa", "loss": torch.tensor(0.5)},
    )
    return source, projector, target_h


def test_save_load_round_trip(handles: Any, tmp_path: Path) -> None:
    source, projector, target_h = _saved(handles, tmp_path / "proj")
    files = sorted(p.name for p in (tmp_path / "proj").iterdir())
    assert files == sorted([PROJECTOR_TENSORS_FILE, PROJECTOR_METADATA_FILE])  # no temp files
    loaded, meta = load_projector(tmp_path / "proj")
    assert not loaded.training and loaded.kind == "v2-separate"
    assert loaded.config == ProjectorConfig(hidden=8)
    assert meta["source_model"] == "tiny-llama" and meta["target_model"].endswith("wide-llama0")
    assert meta["target_geometry"]["d_model"] == 48 and meta["extra"]["loss"] == 0.5
    assert PromptConfig.from_dict(meta["prompt_config"]) == source.config
    for key, value in projector.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    a = project_prompt(projector, source, target_h.geometry).tensor()
    b = project_prompt(loaded, source, target_h.geometry).tensor()
    assert torch.equal(a, b)
    # saving again replaces both files
    _saved(handles, tmp_path / "proj", kind="v1")
    assert load_projector(tmp_path / "proj")[0].kind == "v1"


def test_save_refuses_wrong_geometry(handles: Any, tmp_path: Path) -> None:
    source_h, target_h = handles["tiny-llama"], handles["wide"]
    source = _source(source_h, "v2-shared")
    projector = _projector(source, target_h)
    with pytest.raises(ProjectorError, match="target geometry"):
        save_projector(
            tmp_path / "p",
            projector,
            source_model="a",
            target_model="b",
            source_geometry=source_h.geometry,
            target_geometry=handles["tiny-gemma3"].geometry,
            prompt_config=source.config,
        )
    assert not (tmp_path / "p").exists()


def test_load_errors_are_clear(handles: Any, tmp_path: Path) -> None:
    with pytest.raises(ProjectorLoadError, match="does not exist"):
        load_projector(tmp_path / "nowhere")
    directory = tmp_path / "proj"
    _saved(handles, directory)
    tensors = directory / PROJECTOR_TENSORS_FILE
    meta = directory / PROJECTOR_METADATA_FILE
    good_tensors, good_meta = tensors.read_bytes(), meta.read_text()

    tensors.write_bytes(good_tensors[: len(good_tensors) // 2])
    with pytest.raises(ProjectorLoadError, match="corrupt, truncated"):
        load_projector(directory)
    tensors.unlink()
    with pytest.raises(ProjectorLoadError, match=r"projector\.safetensors is missing"):
        load_projector(directory)
    tensors.write_bytes(good_tensors)

    meta.write_text("{not json")
    with pytest.raises(ProjectorLoadError, match="not valid JSON"):
        load_projector(directory)
    data = json.loads(good_meta)
    del data["in_features"]
    meta.write_text(json.dumps(data))
    with pytest.raises(ProjectorLoadError, match="in_features"):
        load_projector(directory)
    data = json.loads(good_meta)
    data["out_features"] += 1  # sizes that do not match the tensors
    meta.write_text(json.dumps(data))
    with pytest.raises(ProjectorLoadError, match="cannot be rebuilt"):
        load_projector(directory)
    meta.write_text(good_meta)
    load_projector(directory)


# -- refusals ----------------------------------------------------------------------------


def test_mismatched_prompt_is_refused(handles: Any) -> None:
    projector = _projector(_source(handles["tiny-gpt2"]), handles["wide"])  # v1, 32 → 48
    wide_prompt = _source(handles["wide"])  # v1 with d=48
    with pytest.raises(ProjectorError, match=r"takes 32 values per prompt position.*has 48"):
        project_prompt(projector, wide_prompt, handles["tiny-llama"].geometry)
    with pytest.raises(ProjectorError, match="maps v1 prompts; got a v2-shared prompt"):
        project_prompt(
            projector, _source(handles["tiny-gpt2"], "v2-shared"), handles["wide"].geometry
        )
    with pytest.raises(ProjectorError, match=r"produces 48 values.*needs 32"):
        project_prompt(projector, _source(handles["tiny-llama"]), handles["tiny-gemma3"].geometry)
    with pytest.raises(ProjectorError, match="values per prompt position"):
        projector(torch.zeros(3, 48))


def test_config_validation() -> None:
    assert ProjectorConfig() == ProjectorConfig(hidden=512, dropout=0.0)
    with pytest.raises(ProjectorError, match="hidden"):
        ProjectorConfig(hidden=0)
    with pytest.raises(ProjectorError, match="dropout"):
        ProjectorConfig(dropout=1.0)
    with pytest.raises(ProjectorError, match="unknown projector option"):
        ProjectorConfig.from_dict({"hiden": 3})
    assert ProjectorConfig.from_dict(ProjectorConfig(hidden=7).to_dict()) == ProjectorConfig(7)
    with pytest.raises(ProjectorError, match="kind"):
        PromptProjector(4, 4, kind="v3")  # type: ignore[arg-type]


# -- distance minimisation (SPEC B5) -------------------------------------------------------


def _target_prompts(handle: Any, kind: str, n: int, length: int = 4) -> list[SoftPrompt]:
    out = []
    for i in range(n):
        prompt = SoftPrompt(
            PromptConfig(length=length, init="uniform", init_range=0.3, **KINDS[kind]),
            handle.geometry,
        )
        prompt.initialise(handle, generator=torch.Generator().manual_seed(100 + i))
        out.append(prompt)
    return out


@pytest.mark.parametrize("kind", ["v1", "v2-separate"])
def test_distance_fit_brings_projections_to_the_target_prompts(handles: Any, kind: str) -> None:
    src_h, tgt_h = handles["tiny-gpt2"], handles["wide"]
    sources = [_source(src_h, kind, init_range=0.5 + 0.2 * i) for i in range(2)]
    targets = _target_prompts(tgt_h, kind, 2)
    pairs = list(zip(sources, targets, strict=True))
    cfg = ProjectorConfig(hidden=64)
    projector, history = fit_projector_distance(pairs, projector_config=cfg, steps=300, lr=1e-2)
    assert len(history) == 300 and history[-1]["loss"] < 0.1 * history[0]["loss"]
    for source, target in pairs:
        mapped = project_prompt(projector, source, tgt_h.geometry)
        fitted = torch.nn.functional.mse_loss(mapped.tensor(), target.tensor()).item()
        before = torch.nn.functional.mse_loss(
            project_prompt(_projector(source, tgt_h, hidden=64), source, tgt_h.geometry).tensor(),
            target.tensor(),
        ).item()
        assert fitted < 0.1 * before
    again, _ = fit_projector_distance(pairs, projector_config=cfg, steps=300, lr=1e-2)
    for a, b in zip(projector.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # same pairs and seed ⇒ same projector bytes


def test_distance_fit_refuses_pairs_that_do_not_match(handles: Any) -> None:
    src_h, tgt_h = handles["tiny-gpt2"], handles["wide"]
    with pytest.raises(ProjectorError, match="at least one"):
        fit_projector_distance([])
    v1 = _source(src_h, "v1")
    with pytest.raises(ProjectorError, match="same length"):
        fit_projector_distance([(v1, _target_prompts(tgt_h, "v1", 1, length=6)[0])])
    with pytest.raises(ProjectorError, match="same method"):
        fit_projector_distance([(v1, _target_prompts(tgt_h, "v2-shared", 1)[0])])
    with pytest.raises(ProjectorError, match="differs from pair 0"):
        other = _target_prompts(handles["tiny-llama"], "v1", 1)[0]  # another target width
        fit_projector_distance([(v1, _target_prompts(tgt_h, "v1", 1)[0]), (v1, other)])
