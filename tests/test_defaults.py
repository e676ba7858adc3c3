"""The training defaults live in one table that the library, the CLI and configs all read."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from promptatlas.formatting import TaskFormatter, TextLMFormatter
from promptatlas.prompts import PromptConfig
from promptatlas.tasks import get_task
from promptatlas.training import DEFAULTS, TrainConfig, resolve_training


def _help(*command: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "promptatlas.cli", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    )
    return " ".join(out.stdout.split())


def test_cli_help_shows_the_library_learning_rates() -> None:
    train = _help("train")
    for method, d in DEFAULTS.items():
        assert f"{d.lr} for {method}" in train
        assert f"{method}: {d.objective}" in train
        assert f"{method}: {d.init}" in train
    lang = _help("lang-prompt")
    for method, d in DEFAULTS.items():
        assert f"{d.language_lr} for {method}" in lang
    # No learning-rate literal is left in the CLI source: every default comes from the table.
    source = Path(sys.modules["promptatlas.training"].__file__ or "").parent.parent / "cli.py"
    assert not re.search(r"lr\s*=\s*0\.\d", source.read_text())


def test_library_defaults_come_from_the_table(tiny_handles: dict[str, Any]) -> None:
    cfg = TrainConfig()
    assert cfg.lr is None and cfg.objective == "auto"
    assert {d.warmup for d in DEFAULTS.values()} == {cfg.warmup}
    assert {d.schedule for d in DEFAULTS.values()} == {cfg.schedule}
    assert PromptConfig().init == "auto"
    for method, d in DEFAULTS.items():
        assert PromptConfig(method=method).resolved_init == d.init  # type: ignore[arg-type]
        assert PromptConfig(method=method, init="labels").resolved_init == "labels"  # type: ignore[arg-type]
    tok = tiny_handles["tiny-gpt2"].tokenizer
    sa = TaskFormatter(tok, get_task("sa", "en"))
    qa = TaskFormatter(tok, get_task("qa", "en"))
    text = TextLMFormatter(tok, 16)
    for method, d in DEFAULTS.items():
        assert resolve_training(cfg, method, sa) == (d.lr, d.objective)
        assert resolve_training(cfg, method, qa) == (d.lr, "lm")  # generation: always lm
        assert resolve_training(cfg, method, text) == (d.language_lr, "lm")
    explicit = TrainConfig(lr=0.05, objective="lm")
    assert resolve_training(explicit, "v1", sa) == (0.05, "lm")


def test_rank_objective_refuses_generation(tiny_handles: dict[str, Any]) -> None:
    from promptatlas.prompts import PromptedLM, SoftPrompt
    from promptatlas.tasks import load_split
    from promptatlas.training import TrainConfigError, train_prompt

    handle = tiny_handles["tiny-gpt2"]
    prompt = SoftPrompt(PromptConfig(method="v1", length=2), handle.geometry)
    fmt = TaskFormatter(handle.tokenizer, get_task("qa", "en"))
    with pytest.raises(TrainConfigError, match="objective 'rank' needs a classification task"):
        train_prompt(
            PromptedLM(handle, prompt),
            fmt,
            load_split("qa", "en", "train", limit=4),
            TrainConfig(steps=1, objective="rank"),
            progress=False,
        )


def test_no_config_in_the_repo_hard_codes_bf16() -> None:
    root = Path(__file__).resolve().parent.parent / "configs"
    for path in root.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data.get("precision", "auto") != "bf16", path
