"""A cue in the format: ``FormatConfig(template=..., target_prefix=...)`` and its per-pair
setting in an experiment file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from promptatlas.configtools import ConfigError
from promptatlas.formatting import FormatConfig, TaskFormatter
from promptatlas.studies.experiment import experiment_from_mapping
from promptatlas.tasks import Example, get_task

CUE = FormatConfig(template="{text}\nSentiment:", separator="", target_prefix=" ")


def _tok(handle: Any, text: str) -> list[int]:
    return list(handle.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_cue_layout_and_prefixed_label_words(tiny_handles: dict[str, Any]) -> None:
    h = tiny_handles["tiny-gpt2"]
    fmt = TaskFormatter(h.tokenizer, get_task("sa", "en"), CUE)
    ex = Example(inputs=("a fine film",), target="positive", label="positive", uid="x")
    enc = fmt.encode(ex)
    context = _tok(h, "a fine film") + _tok(h, "\nSentiment:")
    bos = [h.tokenizer.bos_token_id] if h.tokenizer.bos_token_id is not None else []
    assert list(enc.ids[: enc.n_context]) == bos + context
    assert list(enc.ids[enc.n_context :]) == [*_tok(h, " positive"), h.tokenizer.eos_token_id]
    # rank classification scores the same prefixed words the LM loss trains on
    assert fmt.label_token_ids() == {w: _tok(h, " " + w) for w in ("negative", "positive")}
    # the built-in task itself is untouched
    assert get_task("sa", "en").template is None


def test_pair_task_template_by_position(tiny_handles: dict[str, Any]) -> None:
    h = tiny_handles["tiny-gpt2"]
    fmt = TaskFormatter(
        h.tokenizer,
        get_task("nli", "en"),
        FormatConfig(template="{input1}\nQuestion: {hypothesis}?", separator=""),
    )
    ex = Example(inputs=("P", "H"), target="entailment", label="entailment", uid="x")
    ids = list(fmt.encode(ex).ids[: fmt.encode(ex).n_context])
    text = h.tokenizer.decode(ids, skip_special_tokens=True)
    assert text == "P\nQuestion: H?"


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{txt}\nSentiment:", ["txt", "{text}"]),
        ("Sentiment:", ["no input slot"]),
        ("{text", ["not a valid template"]),
        ("{text}\n{text}\nSentiment:", ["appear once"]),
    ],
)
def test_bad_template_names_the_problem(
    tiny_handles: dict[str, Any], template: str, words: list[str]
) -> None:
    h = tiny_handles["tiny-gpt2"]
    with pytest.raises(ConfigError) as err:
        TaskFormatter(h.tokenizer, get_task("sa", "en"), FormatConfig(template=template))
    assert all(w in str(err.value) for w in words)


def test_pair_leaving_out_an_input_is_refused(tiny_handles: dict[str, Any]) -> None:
    h = tiny_handles["tiny-gpt2"]
    with pytest.raises(ConfigError, match="leaves out"):
        TaskFormatter(h.tokenizer, get_task("nli", "en"), FormatConfig(template="{premise}:"))


def test_format_by_task_takes_task_lang_keys(tmp_path: Path) -> None:
    def experiment(by_task: dict[str, Any]) -> Any:
        return experiment_from_mapping(
            {
                "name": "x",
                "model": "tiny-gpt2",
                "tasks": ["sa"],
                "langs": ["en", "ko"],
                "methods": {"v1": {"method": "v1"}},
                "format": {"separator": "\n"},
                "format_by_task": by_task,
            },
            tmp_path / "x.yaml",
        )

    plain = experiment({"sa": {"max_length": 40}})
    exp = experiment(
        {"sa": {"max_length": 40}, "sa-en": {"template": "{text}\nSentiment:", "separator": ""}}
    )
    en = exp.run_config("sa", "en", "v1", 42).format
    ko = exp.run_config("sa", "ko", "v1", 42).format
    assert (en.template, en.separator, en.max_length) == ("{text}\nSentiment:", "", 40)
    assert (ko.template, ko.separator, ko.max_length) == (None, "\n", 40)
    # the pair's format is part of its cell key: a new cue reruns that cell, not the others
    assert exp.cell_key("sa", "en", "v1", 42) != plain.cell_key("sa", "en", "v1", 42)
    assert exp.cell_key("sa", "ko", "v1", 42) == plain.cell_key("sa", "ko", "v1", 42)


def test_format_by_task_unknown_pair_is_named(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="sa-de"):
        experiment_from_mapping(
            {
                "name": "x",
                "model": "tiny-gpt2",
                "tasks": ["sa"],
                "langs": ["en"],
                "methods": {"v1": {"method": "v1"}},
                "format_by_task": {"sa-de": {"separator": ""}},
            },
            tmp_path / "x.yaml",
        )


def test_metric_name_is_the_tasks_own_when_values_coincide() -> None:
    from promptatlas.studies.experiment import _metric_name

    tied = {"score": 0.8733, "accuracy": 0.8733, "binary_f1": 0.8733}
    assert _metric_name(tied, "accuracy") == "accuracy"
    assert _metric_name({"score": 0.5, "macro_f1": 0.5, "accuracy": 0.6}) == "macro_f1"


def test_experiment_checks_a_template_against_the_task_before_any_model_loads(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"\{review\} is not an input; use \{text\}"):
        experiment_from_mapping(
            {
                "name": "x",
                "model": "no-such-model",  # never loaded: the check comes first
                "tasks": ["sa"],
                "langs": ["en"],
                "methods": {"v1": {"method": "v1"}},
                "format_by_task": {"sa-en": {"template": "{review}\nSentiment:"}},
            },
            tmp_path / "x.yaml",
        )
