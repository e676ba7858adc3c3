"""Transfer: language/task sub-prompts, cross-task and cross-language transfer, zero-shot,
convergence and resumable, shardable grids (tiny random models)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from promptatlas.bank import ResultsDB, load_prompt, read_metadata
from promptatlas.prompts import PromptConfig
from promptatlas.runs.train import RunConfig, train_run
from promptatlas.runs.transfer import (
    source_label_variant,
    steps_to_reach,
    transfer_kind,
    transfer_run,
    zero_shot,
)
from promptatlas.studies.grid import load_grid, parse_shard, run_grid
from promptatlas.tasks import get_task
from promptatlas.training import TrainConfig
from promptatlas.transfer import (
    LANG_SEGMENT,
    TASK_SEGMENT,
    LanguagePromptConfig,
    train_language_prompt,
)

FAST = {"steps": 3, "batch_size": 4, "lr": 0.1, "warmup": 0.0, "eval_every": 1, "dev_limit": 6}


def _lang_prompt(handle: Any, tmp: Path, lang: str, method: str = "v1", steps: int = 3) -> Path:
    cfg = LanguagePromptConfig(
        lang=lang,
        model=handle.name,
        prompt=PromptConfig(method=method),  # type: ignore[arg-type]
        lang_length=3,
        task_length=2,
        train=TrainConfig(steps=steps, batch_size=4, lr=0.1, warmup=0.0),
        text_limit=60,
        max_length=32,
        heldout=0.2,
    )
    out = tmp / f"lang-{lang}-{method}"
    train_language_prompt(cfg, out, handle=handle, progress=False)
    return out


def _run_cfg(
    handle: Any, task: str, lang: str, lang_prompt: Path | None, method: str = "v1"
) -> RunConfig:
    return RunConfig(
        task=task,
        lang=lang,
        model=handle.name,
        prompt=PromptConfig(method=method),  # type: ignore[arg-type]
        train=TrainConfig(**FAST),  # type: ignore[arg-type]
        lang_prompt=str(lang_prompt) if lang_prompt else None,
        train_limit=16,
        dev_limit=6,
        test_limit=6,
        baseline=False,
        format={"max_length": 24},  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_language_prompt_trains_lang_segment_only(
    tiny_handles: dict[str, Any], tmp_path: Path, method: str
) -> None:
    handle = tiny_handles["tiny-llama"]
    out = _lang_prompt(handle, tmp_path, "ko", method, steps=15)
    stored = load_prompt(out, handle)
    meta = stored.meta
    assert meta.extra["kind"] == "language" and meta.task is None and meta.lang == "ko"
    # The task segment is the seeded uniform init, untouched; the language segment moved.
    fresh = LanguagePromptConfig(
        lang="ko",
        prompt=PromptConfig(method=method),
        lang_length=3,
        task_length=2,  # type: ignore[arg-type]
    ).prompt_config
    from promptatlas.prompts import SoftPrompt

    init = SoftPrompt(fresh, handle.geometry)
    init.initialise(handle, generator=torch.Generator().manual_seed(42))
    tensors = stored.prompt.state_tensors()
    assert torch.equal(tensors[TASK_SEGMENT], init.state_tensors()[TASK_SEGMENT])
    assert not torch.equal(tensors[LANG_SEGMENT], init.state_tensors()[LANG_SEGMENT])
    held = meta.metrics["heldout"]
    assert held["loss"] < held["loss_untrained"]  # the LM objective was really optimised


def test_task_prompt_keeps_language_segment_frozen(
    tiny_handles: dict[str, Any], tmp_path: Path
) -> None:
    handle = tiny_handles["tiny-gpt2"]
    lang = _lang_prompt(handle, tmp_path, "en")
    run = train_run(
        _run_cfg(handle, "sa", "en", lang), tmp_path / "sa", handle=handle, progress=False
    )
    trained = load_prompt(run.path, handle).prompt.state_tensors()
    language = load_prompt(lang, handle).prompt.state_tensors()
    assert torch.equal(trained[LANG_SEGMENT], language[LANG_SEGMENT])  # byte-identical
    assert not torch.equal(trained[TASK_SEGMENT], language[TASK_SEGMENT])
    flags = {s["name"]: s["trainable"] for s in read_metadata(run.path).prompt["segments"]}
    assert flags == {LANG_SEGMENT: False, TASK_SEGMENT: True}


def test_language_prompt_method_mismatch_is_named(
    tiny_handles: dict[str, Any], tmp_path: Path
) -> None:
    handle = tiny_handles["tiny-gpt2"]
    lang = _lang_prompt(handle, tmp_path, "en", "v1", steps=1)
    with pytest.raises(ValueError, match="is a v1 prompt but the run asks for v2"):
        train_run(
            _run_cfg(handle, "sa", "en", lang, "v2"), tmp_path / "x", handle=handle, progress=False
        )


def _capture_start(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Record the prompt tensors at the moment training starts."""
    import promptatlas.runs.train as workflows

    seen: list[dict[str, torch.Tensor]] = []
    real = workflows.train_prompt

    def spy(plm: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(plm.prompt.state_tensors())
        return real(plm, *args, **kwargs)

    monkeypatch.setattr(workflows, "train_prompt", spy)
    return seen


@pytest.mark.parametrize("method", ["v1", "v2"])
def test_cross_task_starts_from_source(
    tiny_handles: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    handle = tiny_handles["tiny-llama"]
    lang = _lang_prompt(handle, tmp_path, "en", method, steps=1)
    source = train_run(
        _run_cfg(handle, "nli", "en", lang, method), tmp_path / "nli", handle=handle, progress=False
    ).path
    baseline = train_run(
        _run_cfg(handle, "sa", "en", lang, method), tmp_path / "sa", handle=handle, progress=False
    ).path
    seen = _capture_start(monkeypatch)
    result = transfer_run(
        source,
        _run_cfg(handle, "sa", "en", None, method),
        tmp_path / "nli-to-sa",
        baseline_dir=baseline,
        handle=handle,
        progress=False,
    )
    src = load_prompt(source, handle).prompt.state_tensors()
    assert torch.equal(seen[0][TASK_SEGMENT], src[TASK_SEGMENT])  # starts from the source
    assert torch.equal(seen[0][LANG_SEGMENT], src[LANG_SEGMENT])
    after = load_prompt(result.run.path, handle).prompt.state_tensors()
    assert torch.equal(after[LANG_SEGMENT], src[LANG_SEGMENT])  # language frozen
    assert not torch.equal(after[TASK_SEGMENT], src[TASK_SEGMENT])  # task segment trained
    assert result.kind == "task" and result.source == "nli-en"
    base_score = read_metadata(baseline).metrics["test"]["score"]
    assert result.delta == pytest.approx(result.score - base_score)


def test_cross_language_trains_language_segment(
    tiny_handles: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = tiny_handles["tiny-gemma3"]
    en, ko = _lang_prompt(handle, tmp_path, "en"), _lang_prompt(handle, tmp_path, "ko")
    source = train_run(
        _run_cfg(handle, "sa", "en", en), tmp_path / "sa-en", handle=handle, progress=False
    ).path
    seen = _capture_start(monkeypatch)
    result = transfer_run(
        source,
        _run_cfg(handle, "sa", "ko", None),
        tmp_path / "sa-en-to-ko",
        lang_prompt=ko,
        handle=handle,
        progress=False,
    )
    src = load_prompt(source, handle).prompt.state_tensors()
    ko_lang = load_prompt(ko, handle).prompt.state_tensors()[LANG_SEGMENT]
    assert torch.equal(seen[0][LANG_SEGMENT], ko_lang)  # starts from the Korean language prompt
    assert torch.equal(seen[0][TASK_SEGMENT], src[TASK_SEGMENT])
    after = load_prompt(result.run.path, handle).prompt.state_tensors()
    assert torch.equal(after[TASK_SEGMENT], src[TASK_SEGMENT])  # source task segment frozen
    assert not torch.equal(after[LANG_SEGMENT], ko_lang)
    assert result.kind == "language"


def test_zero_shot_swaps_language_segment(
    tiny_handles: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = tiny_handles["tiny-gpt2"]
    en, ko = _lang_prompt(handle, tmp_path, "en"), _lang_prompt(handle, tmp_path, "ko")
    source = train_run(
        _run_cfg(handle, "sa", "en", en), tmp_path / "sa-en", handle=handle, progress=False
    ).path
    import promptatlas.runs.transfer as transfer_mod

    seen: list[tuple[torch.Tensor, dict[str, str]]] = []
    real = transfer_mod.evaluate

    def spy(plm: Any, formatter: Any, examples: Any, cfg: Any = None) -> Any:
        seen.append((plm.prompt.state_tensors()[LANG_SEGMENT], dict(formatter.task.verbalizers)))
        return real(plm, formatter, examples, cfg)

    monkeypatch.setattr(transfer_mod, "evaluate", spy)
    kw = {"limit": 6, "handle": handle}
    src_result = zero_shot(source, "sa", "ko", lang_segment="source", **kw)  # type: ignore[arg-type]
    tgt_result = zero_shot(source, "sa", "ko", lang_segment="target", lang_prompt=ko, **kw)  # type: ignore[arg-type]
    en_seg = load_prompt(en, handle).prompt.state_tensors()[LANG_SEGMENT]
    ko_seg = load_prompt(ko, handle).prompt.state_tensors()[LANG_SEGMENT]
    assert torch.equal(seen[0][0], en_seg) and torch.equal(seen[1][0], ko_seg)
    # Label words of the source (English) on Korean data, as in thesis Tables 13-14.
    assert seen[0][1] == dict(get_task("sa", "en").verbalizers)
    assert src_result.extra["label_words"] == "source"
    assert tgt_result.extra["lang_segment"] == "target"
    with pytest.raises(ValueError, match="needs the target language prompt"):
        zero_shot(source, "sa", "ko", lang_segment="target", **kw)  # type: ignore[arg-type]


def test_source_label_variant_only_for_matching_labels() -> None:
    sa_ko = source_label_variant(get_task("sa", "en"), get_task("sa", "ko"))
    assert dict(sa_ko.verbalizers) == dict(get_task("sa", "en").verbalizers)
    tc_ko = source_label_variant(get_task("tc", "en"), get_task("tc", "ko"))
    assert tc_ko is get_task("tc", "ko")  # different label sets: keep the target's words


def test_steps_to_reach_and_kind() -> None:
    history = [
        {"step": 10, "dev": 0.5},
        {"step": 20},
        {"step": 30, "dev": 0.72},
        {"step": 40, "dev": 0.9},
    ]
    assert steps_to_reach(history, 0.9 * 0.8) == 30  # 0.72 ≥ 0.72
    assert steps_to_reach(history, 0.95) is None
    assert transfer_kind("nli", "en", "sa", "en") == "task"
    assert transfer_kind("nli", "en", "nli", "ko") == "language"
    with pytest.raises(ValueError, match="changes both task and language"):
        transfer_kind("nli", "en", "sa", "ko")


# -- grids ---------------------------------------------------------------------------------
def _grid_file(tmp: Path, model: str, name: str = "g") -> Path:
    data = {
        "name": name,
        "model": model,
        "out": str(tmp / "out"),
        "tasks": ["sa", "nli"],
        "langs": ["en", "ko"],
        "seeds": [1],
        "methods": {"v1": {"method": "v1"}},
        "train": {k: v for k, v in FAST.items() if k != "dev_limit"},
        "format": {"max_length": 24},
        "train_limit": 12,
        "dev_limit": 4,
        "test_limit": 4,
        "transfer": {
            "lang_length": 2,
            "task_length": 2,
            "language": {"steps": 2, "batch_size": 4},
            "text_limit": 40,
            "max_length": 24,
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_grid_runs_resumes_and_reports(tiny_handles: dict[str, Any], tmp_path: Path) -> None:
    handle = tiny_handles["tiny-gpt2"]
    grid = load_grid(_grid_file(tmp_path, handle.name))
    cells = grid.cells()
    kinds = [c.kind for c in cells]
    # 2 language prompts, 4 baselines, 2×2 cross-task, 2×2 cross-language, 2×2×2 zero-shot
    assert kinds.count("lang") == 2 and kinds.count("base") == 4
    assert kinds.count("task") == 4 and kinds.count("language") == 4 and kinds.count("zero") == 8
    with ResultsDB(tmp_path / "db.sqlite") as db:
        assert run_grid(grid, db=db, progress=False, log=lambda _: None) == len(cells)
        assert run_grid(grid, db=db, progress=False, log=lambda _: None) == 0  # nothing retrained
    report = grid.out / "report"
    with open(report / "cross_task_en_v1.csv", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["target \\ source", "sa", "nli"]
    base_sa = read_metadata(grid.out / "bank" / "sa-en-v1-s1").metrics["test"]["score"]
    assert float(table[1][1]) == pytest.approx(100 * base_sa, abs=0.01)  # diagonal = baseline
    assert table[1][2] != ""  # nli → sa filled
    with open(report / "zero_shot_v1.csv", encoding="utf-8") as fh:
        rows = [r[0] for r in csv.reader(fh)][1:]
    assert rows == ["en_to_ko", "en_to_ko*", "ko_to_en", "ko_to_en*"]
    assert (report / "transfer_heatmaps.png").stat().st_size > 10_000


def test_killed_grid_continues(
    tiny_handles: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import promptatlas.studies.grid as grid_mod

    handle = tiny_handles["tiny-gpt2"]
    grid = load_grid(_grid_file(tmp_path, handle.name))
    real = grid_mod._Runner.run
    calls = {"n": 0}

    def dies_after_five(self: Any, cell: Any) -> None:
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        real(self, cell)

    monkeypatch.setattr(grid_mod._Runner, "run", dies_after_five)
    with ResultsDB(tmp_path / "db.sqlite") as db:
        with pytest.raises(KeyboardInterrupt):
            run_grid(grid, db=db, progress=False, log=lambda _: None)
        monkeypatch.setattr(grid_mod._Runner, "run", real)
        assert run_grid(grid, db=db, progress=False, log=lambda _: None) == len(grid.cells()) - 5


def test_shards_merge_into_one_report(tiny_handles: dict[str, Any], tmp_path: Path) -> None:
    handle = tiny_handles["tiny-gpt2"]
    grid = load_grid(_grid_file(tmp_path, handle.name))
    n_cells = len(grid.cells())
    counts = []
    for i in range(2):
        with ResultsDB(tmp_path / f"shard{i}.sqlite") as db:
            counts.append(run_grid(grid, db=db, shard=(i, 2), progress=False, log=lambda _: None))
    # Each shard ran its own half plus any dependency it had to build; together all cells.
    assert sum(counts) >= n_cells
    with ResultsDB(tmp_path / "merged.sqlite") as db:
        added = db.merge(tmp_path / "shard0.sqlite") + db.merge(tmp_path / "shard1.sqlite")
        assert added > 0
        assert db.merge(tmp_path / "shard1.sqlite") == 0  # idempotent
        assert run_grid(grid, db=db, progress=False, log=lambda _: None) == 0
        from promptatlas.studies.grid import grid_cells

        assert len(grid_cells(grid, db)) == n_cells


def test_grid_file_errors_are_named(tmp_path: Path) -> None:
    path = _grid_file(tmp_path, "tiny-gpt2")
    data = yaml.safe_load(path.read_text())
    data["transfer"]["sources"] = ["qa"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"transfer sources \['qa'\] are not in tasks"):
        load_grid(path)
    del data["transfer"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="has no 'transfer' block"):
        load_grid(path)
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="0 ≤ i < n"):
        parse_shard("4/4")


def test_task_prompts_of_one_study_start_apart(
    tiny_handles: dict[str, Any], tmp_path: Path
) -> None:
    from promptatlas.formatting import TaskFormatter
    from promptatlas.runs.train import build_prompt, init_seed

    handle = tiny_handles["tiny-gpt2"]
    lang = _lang_prompt(handle, tmp_path, "en", steps=1)

    def start(task: str) -> dict[str, torch.Tensor]:
        cfg = _run_cfg(handle, task, "en", lang)
        fmt = TaskFormatter(handle.tokenizer, get_task(task, "en"), cfg.format)
        return build_prompt(cfg, handle, fmt).state_tensors()

    sa, nli = start("sa"), start("nli")
    assert torch.equal(sa[LANG_SEGMENT], nli[LANG_SEGMENT])  # the shared language segment
    assert not torch.equal(sa[TASK_SEGMENT], nli[TASK_SEGMENT])  # tasks start apart
    assert torch.equal(start("sa")[TASK_SEGMENT], sa[TASK_SEGMENT])  # and deterministically
    assert init_seed(42, "sa", "en") == init_seed(42, "sa", "en") != init_seed(42, "sa", "ko")
