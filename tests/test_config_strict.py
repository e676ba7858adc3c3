"""Configs from YAML/dicts: wrong types and misspelt keys name the field path, the expected type
and the valid keys (one ConfigError, a ValueError), at every nesting level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from promptatlas.cli import main
from promptatlas.configtools import ConfigError, from_dict
from promptatlas.prompts import PromptConfig, PromptConfigError
from promptatlas.runs.train import RunConfig
from promptatlas.studies.experiment import ExperimentError, load_experiment
from promptatlas.studies.grid import load_grid
from promptatlas.training import TrainConfig
from promptatlas.transfer import LanguagePromptConfig

HEAD = "name: t\nmodel: tiny-gpt2\ntasks: [sa]\nlangs: [en]\nmethods: {v1: {method: v1}}\n"


def _experiment(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(HEAD + body, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('train: {steps: "ten"}', ["train.steps", "an integer", "'ten'"]),
        ("train: {stpes: 2}", ["train.stpes", "did you mean 'steps'", "valid keys", "batch_size"]),
        ("train: {schedule: step}", ["train.schedule", "'linear', 'cosine', 'constant'"]),
        ("train_by_task: {sa: {lr: fast}}", ["train_by_task.sa.lr", "a number"]),
        ("train_by_method: {v1: {batch: 4}}", ["train_by_method.v1.batch", "batch_size"]),
        ("eval: {mode: quick}", ["eval.mode", "'rank'"]),
        ("format: {max_length: 4.5}", ["format.max_length", "an integer or null"]),
        ("format_by_task: {sa: {add_bos: maybe}}", ["format_by_task.sa.add_bos", "true or false"]),
        ("methods: {v1: {method: v3}}", ["methods.v1.method", "'v1', 'v2'"]),
        ("methods: {v1: {lenght: 4}}", ["methods.v1.lenght", "did you mean 'length'"]),
        ('seeds: [1, "two"]', ["seeds[1]", "an integer"]),
        ("tasks: sa", ["tasks", "a list of strings", "'sa'"]),
        ('test_limit: "10"', ["test_limit", "an integer or null"]),
        ("steps: 3", ["steps", "put it under train"]),
        ("train_by_task: {nil: {lr: 0.1}}", ["train_by_task", "['nil']", "not in tasks"]),
    ],
)
def test_experiment_type_errors_name_the_field_path(
    tmp_path: Path, body: str, needles: list[str]
) -> None:
    path = _experiment(tmp_path, body)
    with pytest.raises(ExperimentError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message, (needle, message)
    assert "__init__" not in message and "not supported between" not in message


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ('transfer: {lang_length: "x"}', ["transfer.lang_length", "an integer"]),
        ("transfer: {language: {stpes: 3}}", ["transfer.language.stpes", "'steps'"]),
        ("transfer: {language_by_method: {v1: {lr: a}}}", ["transfer.language_by_method.v1.lr"]),
        ("transfer: {text: {en: one.txt}}", ["transfer.text.en", "a list of strings"]),
        ("transfer: {cross_task: yess}", ["transfer.cross_task", "true or false"]),
        ("transfer: {}\nanalysis: {n_exampels: 3}", ["analysis.n_exampels", "'n_examples'"]),
    ],
)
def test_grid_type_errors_name_the_field_path(
    tmp_path: Path, body: str, needles: list[str]
) -> None:
    path = _experiment(tmp_path, body)
    with pytest.raises(ExperimentError) as info:
        load_grid(path)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_cli_reports_a_yaml_type_error_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _experiment(tmp_path, 'train: {steps: "ten"}')
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("promptatlas: error: ")
    assert "train.steps: expected an integer" in err


def test_run_config_from_dict_is_strict_at_every_level() -> None:
    with pytest.raises(ConfigError, match=r"^train\.steps: expected an integer"):
        RunConfig.from_dict({"task": "sa", "lang": "en", "train": {"steps": "ten"}})
    with pytest.raises(ConfigError, match=r"^train\.stpes: unknown key.*'steps'"):
        RunConfig.from_dict({"task": "sa", "lang": "en", "train": {"stpes": 2}})
    with pytest.raises(ConfigError, match=r"^prompt\.method: expected one of 'v1', 'v2'"):
        RunConfig(task="sa", lang="en", prompt={"method": "v3"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="tsak"):
        RunConfig.from_dict({"tsak": "sa", "lang": "en"})
    cfg = RunConfig.from_dict(
        {"task": "sa", "lang": "en", "train": {"steps": 3, "lr": 1}, "prompt": {"layers": None}}
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match=r"^train\.steps"):
        LanguagePromptConfig(lang="en", train={"steps": "ten"})  # type: ignore[arg-type]


def test_config_errors_stay_value_errors_and_prompt_errors_keep_their_class() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(PromptConfigError, match=r"segments\[0\]\.length: expected an integer"):
        PromptConfig.from_dict({"segments": [{"name": "a", "length": "x"}]})
    assert PromptConfig.from_dict({"method": "v2", "layers": [2, 0]}).layers == (0, 2)


@dataclass(frozen=True)
class Inner:
    k: int = 1


@dataclass(frozen=True)
class Outer:
    mode: Literal["a", "b"] = "a"
    inner: Inner = Inner()
    opt: float | None = None
    flag: bool = False
    names: tuple[str, ...] = ()


def test_from_dict_types() -> None:
    assert from_dict(Outer, {"inner": {"k": 3}, "opt": 2, "names": ["x"]}) == Outer(
        inner=Inner(3), opt=2.0, names=("x",)
    )
    assert from_dict(Outer, {"opt": "1e-3"}).opt == 0.001  # YAML 1.1 reads 1e-3 as a string
    for data, needle in (
        ({"inner": {"k": True}}, "inner.k: expected an integer, got true"),
        ({"inner": 3}, "inner: expected a mapping of Inner options"),
        ({"flag": 1}, "flag: expected true or false"),
        ({"mode": "c"}, "mode: expected one of 'a', 'b'"),
        ({"names": ["x", 2]}, "names[1]: expected a string"),
        ({"opt": "x"}, "opt: expected a number or null"),
    ):
        with pytest.raises(ConfigError) as info:
            from_dict(Outer, data)
        assert needle in str(info.value)
    with pytest.raises(ConfigError, match="expected a mapping of TrainConfig options"):
        from_dict(TrainConfig, [1, 2])


def test_train_by_task_takes_task_lang_keys_over_task_keys(tmp_path: Path) -> None:
    path = _experiment(
        tmp_path,
        "train: {steps: 5}\ntrain_by_task: {sa: {steps: 7, lr: 0.2}, sa-en: {steps: 9}}\n",
    )
    exp = load_experiment(path)
    train = exp.run_config("sa", "en", "v1", 1).train
    assert (train.steps, train.lr) == (9, 0.2)  # task-lang wins over task; task's lr stays


def test_train_by_task_names_an_unknown_task_lang_pair(tmp_path: Path) -> None:
    path = _experiment(tmp_path, "train_by_task: {sa-ko: {steps: 9}}\n")
    with pytest.raises(ExperimentError, match=r"\['sa-ko'\].*or task-lang pairs"):
        load_experiment(path)
