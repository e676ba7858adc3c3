"""The config base: every config dataclass converts from a mapping strictly, and an unknown key,
a wrong type, a missing field or an invalid value each end in one ConfigError naming the field."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from promptatlas.configtools import PRECISIONS, ConfigBase, ConfigError
from promptatlas.evaluation.evaluate import EvalConfig
from promptatlas.formatting import FormatConfig
from promptatlas.prompts.config import PromptConfig, SegmentConfig
from promptatlas.runs.crossmodel import ProjectConfig
from promptatlas.runs.train import RunConfig
from promptatlas.studies.atlas import AnalysisConfig
from promptatlas.studies.experiment import ExperimentConfig
from promptatlas.studies.grid import AnalysisSpec, GridConfig, TransferSpec
from promptatlas.training import TrainConfig
from promptatlas.transfer.projector import ProjectorConfig
from promptatlas.transfer.subprompts import LanguagePromptConfig

CONFIGS: tuple[type[ConfigBase], ...] = (
    AnalysisConfig,
    AnalysisSpec,
    EvalConfig,
    ExperimentConfig,
    FormatConfig,
    GridConfig,
    LanguagePromptConfig,
    ProjectConfig,
    ProjectorConfig,
    PromptConfig,
    RunConfig,
    SegmentConfig,
    TrainConfig,
    TransferSpec,
)


def _one_error(call: Any, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    text = str(info.value)
    for needle in needles:
        assert needle in text, text
    assert "\n" not in text
    return text


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_has_the_base(cls: type[ConfigBase]) -> None:
    assert issubclass(cls, ConfigBase)
    assert dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_key_is_one_config_error_naming_it(cls: type[ConfigBase]) -> None:
    _one_error(lambda: cls.from_dict({"no_such_option": 1}), "no_such_option")


def test_wrong_type_names_the_field_path() -> None:
    text = _one_error(
        lambda: RunConfig.from_dict({"task": "sa", "lang": "en", "train": {"steps": "ten"}}),
        "train.steps",
    )
    assert "integer" in text
    _one_error(lambda: TrainConfig.from_dict({"batch_size": 2.5}), "batch_size")
    _one_error(lambda: PromptConfig.from_dict({"length": "long"}), "length")


def test_a_number_in_a_string_is_read_as_a_number_not_a_type_error() -> None:
    # YAML 1.1 reads 3e-2 as a string; a quoted "0.03" is a number too.
    assert TrainConfig.from_dict({"lr": "0.03"}).lr == pytest.approx(0.03)
    _one_error(lambda: TrainConfig.from_dict({"lr": "fast"}), "lr")


def test_missing_field_is_one_config_error_naming_it() -> None:
    _one_error(lambda: RunConfig.from_dict({"lang": "en"}), "task", "missing")
    _one_error(lambda: SegmentConfig.from_dict({"name": "task"}), "length", "missing")
    _one_error(
        lambda: RunConfig.from_dict({"task": "sa", "lang": "en", "prompt": {"segments": [{}]}}),
        "prompt.segments[0].name",
        "missing",
    )


def test_invalid_values_are_config_errors_naming_the_field() -> None:
    _one_error(lambda: TrainConfig(steps=0), "steps")
    _one_error(lambda: EvalConfig(batch_size=0), "batch_size")
    _one_error(lambda: FormatConfig(max_length=2), "max_length")
    _one_error(lambda: ProjectorConfig(hidden=0), "hidden")
    _one_error(lambda: RunConfig(task="sa", lang="en", dev_limit=0), "dev_limit")
    _one_error(lambda: LanguagePromptConfig(lang="ko", heldout=0.9), "heldout")


@pytest.mark.parametrize(
    "make",
    [
        lambda p: RunConfig(task="sa", lang="en", precision=p),
        lambda p: LanguagePromptConfig(lang="ko", precision=p),
        lambda p: AnalysisConfig(precision=p),
        lambda p: ProjectConfig(source_model="a", target_model="b", source_prompt="x", precision=p),
    ],
)
def test_precision_is_checked_by_the_base(make: Any) -> None:
    for good in PRECISIONS:
        assert make(good).precision == good
    _one_error(lambda: make("fp16"), "precision", "'auto'")


def test_to_dict_round_trips() -> None:
    for cfg in (TrainConfig(steps=3), EvalConfig(mode="rank"), FormatConfig(max_length=64)):
        assert type(cfg).from_dict(cfg.to_dict()) == cfg
