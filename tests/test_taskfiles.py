"""Task files: a user's own task from YAML, the built-in tasks as shipped task files, and the
task file everywhere a task is named (CLI, experiments, prompt metadata, predict)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from promptatlas.cli import main
from promptatlas.evaluation.confidence import example_scores
from promptatlas.evaluation.evaluate import EvalConfig, evaluate
from promptatlas.evaluation.metrics import compute_metrics, majority_baseline, mcc
from promptatlas.formatting import TaskFormatter
from promptatlas.prompts import PromptConfig, PromptedLM, SoftPrompt
from promptatlas.tasks import (
    DataError,
    Example,
    TaskFileError,
    UnknownTaskError,
    get_task,
    list_tasks,
    load_file,
    load_split,
    registry,
)
from promptatlas.tasks.taskfile import definition_from_dict, read_task_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rte" / "rte.yaml"

RTE_ROWS = [
    ("A man is playing a guitar.", "A man plays music.", "entailment"),
    ("A cat sleeps on the sofa.", "A dog is barking.", "not_entailment"),
    ('He said "no" to the offer.', "He accepted the offer.", "not_entailment"),
    ("The sun rises in the east.", "The sun rises.", "entailment"),
    ("Kids are running in a park.", "Children are outside.", "entailment"),
    ("The shop is closed on Sunday.", "The shop opens every day.", "not_entailment"),
]


def _write_task(tmp: Path, *, extra: str = "", test_rows: Any = RTE_ROWS) -> Path:
    """A two-class task file with TSV data in ``tmp`` (GLUE-style: quotes are plain text)."""
    header = "index\tsentence1\tsentence2\tlabel\n"
    for split, rows in (("train", RTE_ROWS * 3), ("test", test_rows)):
        lines = [f"{i}\t{a}\t{b}\t{lab}\n" for i, (a, b, lab) in enumerate(rows)]
        (tmp / f"{split}.tsv").write_text(header + "".join(lines), encoding="utf-8")
    path = tmp / "my-task.yaml"
    path.write_text(
        f"""name: myrte
description: a tiny entailment task
inputs: [premise, hypothesis]
labels: [entailment, not_entailment]
metric: macro_f1
columns: {{input1: sentence1, input2: sentence2}}
languages:
  en:
    label_words: {{entailment: "yes", not_entailment: "no"}}
    data:
      train: {{file: train.tsv, quoting: false}}
      test: {{file: test.tsv, quoting: false}}
    carve:
      dev: {{from_split: train, fraction: 0.2}}
{extra}""",
        encoding="utf-8",
    )
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- definitions ----------------------------------------------------------------------------


def test_task_file_round_trip_is_exact(tmp_path: Path) -> None:
    german = (
        "  de:\n    label_words: {entailment: ja, not_entailment: nein}\n"
        "    instruction: Folgt der zweite Satz?\n"
        "    data: {test: {file: test.tsv, quoting: false}}\n"
    )
    path = _write_task(tmp_path, extra=german)
    definition = read_task_file(path)
    variant = get_task(str(path), "en")
    assert variant.name == "myrte-en" and variant.spec.metric == "macro_f1"
    assert variant.verbalizers == {"entailment": "yes", "not_entailment": "no"}
    assert variant.inputs == ("premise", "hypothesis")
    assert get_task("myrte", "de").instruction == "Folgt der zweite Satz?"
    # YAML → definition → metadata dict (JSON) → definition: the same task in every language
    stored = json.loads(json.dumps(definition.to_dict()))
    again = definition_from_dict(stored)
    assert again.to_dict() == definition.to_dict()
    for lang in ("en", "de"):
        assert again.variant(lang) == definition.variant(lang)
    assert Path(stored["languages"]["en"]["data"]["test"]["file"]).is_absolute()


# The built-in tasks as they were defined in code before they became shipped task files.
BUILTIN = {
    "sts": ("binary_f1", 2, 180, {"en": ("STS-B", {"different": "different", "similar": "similar"}),
                                  "ko": ("KorSTS", {"different": "상이", "similar": "유사"})}),
    "nli": ("macro_f1", 2, 150, {"en": ("SNLI", {"entailment": "entailment", "neutral": "neutral",
                                                 "contradiction": "contradiction"}),
                                 "ko": ("KorNLI", {"entailment": "함의", "neutral": "중립",
                                                   "contradiction": "모순"})}),
    "sa": ("accuracy", 1, 256, {"en": ("SST-2", {"negative": "negative", "positive": "positive"}),
                                "ko": ("NSMC", {"negative": "부정", "positive": "긍정"})}),
    "tc": ("macro_f1", 1, 80, {"en": ("AG News", {"world": "world", "sports": "sports",
                                                  "business": "business", "scitech": "scitech"}),
                               "ko": ("KLUE-YNAT", {"itscience": "IT과학", "economy": "경제",
                                                    "society": "사회", "culture": "생활문화",
                                                    "world": "세계", "sports": "스포츠",
                                                    "politics": "정치"})}),
    "qa": ("squad", 2, 400, {"en": ("SQuAD v1.1", {}), "ko": ("KorQuAD 1.0", {})}),
    "cg": ("coverage", 1, 60, {"en": ("CommonGen", {}), "ko": ("KommonGen", {})}),
}  # fmt: skip
POSITIVE = {"sts": "similar", "sa": "positive"}
OFFICIAL = {"sts-en", "sts-ko", "sa-en", "cg-en"}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_task_files_equal_the_old_definitions(name: str) -> None:
    metric, n_inputs, max_length, langs = BUILTIN[name]
    for lang, (dataset, words) in langs.items():
        v = get_task(name, lang)
        assert (v.spec.metric, v.spec.n_inputs, v.max_length) == (metric, n_inputs, max_length)
        assert v.labels == tuple(words) and dict(v.verbalizers) == words  # label order too
        assert v.dataset == dataset and v.positive_label == POSITIVE.get(name)
        assert v.official_split == (v.name in OFFICIAL)
        assert v.spec.kind == ("generation" if name in ("qa", "cg") else "classification")
        assert v.source and v.licence
    assert [v.name for v in list_tasks()][:2] == ["sts-en", "sts-ko"]
    # the shipped file itself is accepted as a task file (same definition, same name)
    shipped = registry.BUILTIN_DIR / f"{name}.yaml"
    assert get_task(str(shipped), "en") == get_task(name, "en")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: x\nlanguages: {en: {data: {test: {file: t.tsv}}}}\nlables: [a, b]\n",
         "lables: unknown key (did you mean 'labels'?)"),
        ("name: x\nlabels: [a, b]\nmax_length: long\nlanguages: {en: {data: {test: {file: t}}}}\n",
         "max_length: expected an integer"),
        ("name: x\nlabels: [a, b]\nlanguages: {en: {label_words: {a: yes, b: no},"
         " data: {test: {file: t}}}}\n", "quote it"),
        ("name: x\nlabels: [a, b]\nmetric: binary_f1\nlanguages: {en: {data: {test: {file: t}}}}\n",
         "positive_label"),
        ("name: nli\nlabels: [a, b]\nlanguages: {en: {data: {test: {file: t}}}}\n",
         "built-in task name"),
        ("name: x\nlabels: [a, b]\nlanguages: {en: {data: {test: {file: t, format: txt}}}}\n",
         "languages.en.data.test.format"),
        ("name: x\nlabels: [a, b]\nlanguages: {en: {data: {test: {file: t}},"
         " carve: {dev: {from_split: train, fraction: 0.1}}}}\n", "carve.dev.from_split"),
        ("name: x\nlabels: [a, b]\ntemplate: '{premise} {x}'\ninputs: [premise]\n"
         "languages: {en: {data: {test: {file: t}}}}\n", "{x} is not an input"),
    ],
)  # fmt: skip
def test_task_file_errors_name_the_field(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TaskFileError, match=r"bad\.yaml") as err:
        get_task(str(path), "en")
    assert needle in str(err.value)
    # the CLI says it in one line, exit 2
    code, _, err_text = _run(capsys, "tasks", "--check", str(path))
    assert code == 2 and err_text.count("\n") == 1 and needle in err_text


def test_unknown_language_of_a_user_task(tmp_path: Path) -> None:
    _write_task(tmp_path)
    with pytest.raises(UnknownTaskError, match="its languages: en"):
        get_task(str(tmp_path / "my-task.yaml"), "ko")


# --- data -----------------------------------------------------------------------------------


def test_splits_columns_and_carving(tmp_path: Path) -> None:
    path = _write_task(tmp_path)
    train = load_split(str(path), "en", "train")
    dev = load_split("myrte", "en", "dev")
    test = load_split("myrte", "en", "test")
    assert len(train) + len(dev) == 18 and len(dev) == 4  # 20% of each label, stratified
    assert {e.label for e in dev} == {"entailment", "not_entailment"}
    assert test[2].inputs == ('He said "no" to the offer.', "He accepted the offer.")
    assert test[2].target == "no" and test[0].uid == "test-00000"


def test_tsv_with_unescaped_quotes_needs_quoting_off(tmp_path: Path) -> None:
    # A GLUE-style TSV: the first field opens with a quote that is plain text.
    path = tmp_path / "glue.tsv"
    path.write_text(
        "sentence1\tsentence2\tlabel\n"
        '"Hello," she said\tShe greeted him.\tentailment\n'
        "A second\tline\tnot_entailment\n"
        'A third "row\tand more\tentailment\n'
        "last\tone\tentailment\n",
        encoding="utf-8",
    )
    _write_task(tmp_path)
    columns = {"input1": "sentence1", "input2": "sentence2"}
    rows = load_file(path, "myrte", "en", columns=columns, quoting=False)
    assert [e.inputs[0] for e in rows] == ['"Hello," she said', "A second", 'A third "row', "last"]
    with pytest.raises(DataError, match=r"glue\.tsv:\d+: .*quoting: false") as err:
        load_file(path, "myrte", "en", columns=columns)
    assert "quoting=False" in str(err.value)


def test_nested_json_columns_and_header_less_csv(tmp_path: Path) -> None:
    _write_task(tmp_path)
    js = tmp_path / "klue.json"
    js.write_text(json.dumps([{"s1": "a b", "s2": "c d", "labels": {"binary": 1}}]))
    cols = {"input1": "s1", "input2": "s2", "label": "labels.binary"}
    assert load_file(js, "myrte", "en", columns=cols)[0].label == "not_entailment"
    csv_path = tmp_path / "plain.txt"
    csv_path.write_text("x y,z w,0\n", encoding="utf-8")
    ex = load_file(csv_path, "myrte", "en", fmt="csv", header=False,
                   columns={"input1": "0", "input2": "1", "label": "2"})  # fmt: skip
    assert ex[0].inputs == ("x y", "z w") and ex[0].label == "entailment"


# --- metrics ----------------------------------------------------------------------------------


def test_mcc_and_majority_baseline(tmp_path: Path) -> None:
    path = _write_task(tmp_path, extra="").read_text().replace("macro_f1", "mcc")
    (tmp_path / "mcc.yaml").write_text(path.replace("name: myrte", "name: myrte_mcc"))
    task = get_task(str(tmp_path / "mcc.yaml"), "en")
    golds = ["entailment", "entailment", "entailment", "not_entailment"]
    exs = [Example(("a", "b"), task.verbalizers[g], g) for g in golds]
    preds = ["entailment", "not_entailment", "entailment", "not_entailment"]
    m = compute_metrics(task, preds, exs)
    assert m["score"] == m["mcc"] == pytest.approx(mcc(preds, golds)) == pytest.approx(0.5773503)
    assert m["majority"] == 0.0  # always "entailment": MCC 0
    scores = example_scores("mcc", preds=preds, golds=golds, labels=task.labels)
    assert scores.score() == pytest.approx(m["mcc"])
    nli = get_task("nli", "en")
    label, score = majority_baseline(nli, ["neutral", "neutral", "entailment"])
    # always "neutral": neutral F1 = 2·2/(2·2 + 1) = 0.8, the two others 0 → macro-F1 0.8/3
    assert label == "neutral" and score == pytest.approx(0.8 / 3)


# --- scoring ----------------------------------------------------------------------------------


def test_summed_scoring_penalises_the_multi_token_label(
    tmp_path: Path, tiny_handles: dict[str, Any]
) -> None:
    """A hand-made case: every position predicts 'a' with p=0.4 and 'b' with p=0.1. The gold
    label's word "aaa" (3 tokens) sums to 3·ln 0.4 = −2.75 < ln 0.1 = −2.30, so summed scoring
    picks "b" although each of its tokens is four times less likely; mean and first-token
    scoring pick "aaa"."""
    _write_task(tmp_path)
    text = (tmp_path / "my-task.yaml").read_text()
    words = "{entailment: aaa, not_entailment: b}"
    text = text.replace('{entailment: "yes", not_entailment: "no"}', words)
    (tmp_path / "ab.yaml").write_text(text.replace("name: myrte", "name: myrte_ab"))
    task = get_task(str(tmp_path / "ab.yaml"), "en")
    handle = tiny_handles["tiny-gpt2"]
    fmt = TaskFormatter(handle.tokenizer, task)
    ids = fmt.label_token_ids()
    assert len(ids["entailment"]) == 3 and len(ids["not_entailment"]) == 1
    a, b = ids["entailment"][0], ids["not_entailment"][0]
    vocab = handle.geometry.vocab_size
    probs = torch.full((vocab,), 0.5 / (vocab - 2))
    probs[a], probs[b] = 0.4, 0.1
    fixed = probs.log()
    prompt = SoftPrompt(PromptConfig(method="v1", length=2), handle.geometry)
    plm = PromptedLM(handle, prompt)
    plm.logits = lambda hidden: fixed.to(hidden.device).expand(hidden.shape[0], -1)  # type: ignore[method-assign]
    # the ranking-only path reads the label words' logits alone: the same fixed head
    plm.token_logits = lambda hidden, ids: plm.logits(hidden)[:, ids]  # type: ignore[method-assign]
    examples = [Example(("x", "y"), "aaa", "entailment")] * 3
    with pytest.warns(UserWarning, match="differ in token count"):
        summed = evaluate(plm, fmt, examples, EvalConfig())  # the default: summed
    assert set(summed.predictions) == {"not_entailment"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        normalised = evaluate(plm, fmt, examples, EvalConfig(length_normalise=True))
    assert set(normalised.predictions) == {"entailment"}
    assert not [w for w in caught if "token count" in str(w.message)]  # mean: no warning
    first = evaluate(plm, fmt, examples, EvalConfig(first_token=True))
    assert set(first.predictions) == {"entailment"}


# --- the CLI end to end ---------------------------------------------------------------------


def test_cli_train_eval_runs_predict_on_a_task_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_file = _write_task(tmp_path)
    out = tmp_path / "bank" / "myrte"
    code, text, _ = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", str(task_file), "--lang", "en",
        "--method", "v1", "--length", "2", "--steps", "2", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0 and "myrte-en v1: macro_f1 untrained" in text and "majority 33.3" in text
    meta = json.loads((out / "prompt.json").read_text())
    assert meta["task"] == "myrte" and meta["task_definition"]["name"] == "myrte"
    assert set(meta["data_files"]) == {"train", "test"}
    code, text, _ = _run(capsys, "runs", "--task", "myrte")
    assert code == 0 and {"train", "eval-untrained"} <= set(text.split())

    # eval from the prompt alone: the task file is gone and this process forgets the task
    task_file.unlink()
    registry._USER.clear()
    code, text, err = _run(capsys, "eval", str(out), "--quiet")
    assert code == 0 and "myrte-en test (n=6, rank): macro_f1" in text and "majority" in text
    assert "changed" not in err
    code, text, _ = _run(capsys, "runs", "--task", "myrte", "--kind", "eval")
    assert code == 0 and "eval" in text.split()

    # a changed data file is detected
    test_file = tmp_path / "test.tsv"
    test_file.write_text(test_file.read_text().replace("A cat sleeps", "A cat naps"))
    registry._USER.clear()
    code, text, err = _run(capsys, "eval", str(out), "--quiet")
    assert code == 0 and "changed since" in err and "test.tsv changed" in err

    # predict-only on a file without labels
    unlabelled = tmp_path / "new.tsv"
    unlabelled.write_text("sentence1\tsentence2\nA bird sings.\tA bird makes a sound.\n"
                          "It rains.\tThe street is dry.\n")  # fmt: skip
    preds = tmp_path / "preds.jsonl"
    code, text, _ = _run(capsys, "predict", str(out), "--file", str(unlabelled), "--out",
                         str(preds), "--quiet")  # fmt: skip
    assert code == 0 and "2 rows" in text
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["uid"] for r in rows] == ["new-00000", "new-00001"]
    assert {r["prediction"] for r in rows} <= {"entailment", "not_entailment"}
    assert {r["label_word"] for r in rows} <= {"yes", "no"} and "gold" not in rows[0]
    assert set(rows[0]["scores"]) == {"entailment", "not_entailment"}


def test_tasks_check_reports_counts_baseline_and_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_file = _write_task(tmp_path)
    code, text, _ = _run(capsys, "tasks", "--check", str(task_file), "--model", "tiny-gpt2",
                         "--quiet")  # fmt: skip
    assert code == 0
    assert "train     14 examples: entailment 7, not_entailment 7" in text
    assert "test       6 examples: entailment 3, not_entailment 3; majority baseline 33.3" in text
    assert "'yes' 3 tokens, 'no' 2 tokens" in text and "differ in token count" in text


def test_experiment_file_takes_a_task_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from promptatlas.studies.experiment import experiment_from_mapping, run_experiment

    _write_task(tmp_path)
    monkeypatch.chdir(tmp_path)
    data = {
        "name": "mine", "model": "tiny-gpt2", "out": str(tmp_path / "exp"),
        "tasks": ["my-task.yaml"], "langs": ["en"],
        "methods": {"v1": {"method": "v1", "length": 2}}, "train": {"steps": 1},
    }  # fmt: skip
    exp = experiment_from_mapping(data, tmp_path / "exp.yaml")
    assert exp.tasks == ("myrte",)
    key = exp.cell_key("myrte", "en", "v1", 42)
    rows = run_experiment(exp, log=lambda *_: None, progress=False)
    assert rows[0]["task"] == "myrte" and rows[0]["trained"] is not None
    # an edited data file changes the cell's key, so the cell runs again
    train = tmp_path / "train.tsv"
    train.write_text(train.read_text() + "9\ta\tb\tentailment\n")
    registry._SPLITS.clear()
    again = experiment_from_mapping(data, tmp_path / "exp.yaml")
    assert again.cell_key("myrte", "en", "v1", 42) != key


def test_readme_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README "Your own task": its two commands on examples/rte (a tiny model, two steps)."""
    out = tmp_path / "bank" / "rte-en"
    code, text, _ = _run(
        capsys, "train", "--model", "tiny-gpt2", "--task", str(EXAMPLE), "--lang", "en",
        "--steps", "2", "--length", "2", "--train-limit", "16", "--test-limit", "8",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0 and "rte-en v2: macro_f1 untrained" in text
    code, text, _ = _run(capsys, "eval", str(out), "--limit", "8", "--quiet")
    assert code == 0 and "rte-en test (n=8, rank): macro_f1" in text and "majority" in text


def test_readme_example_task_file_loads() -> None:
    """The README's "Your own task" file (examples/rte) with its GLUE-style TSV files."""
    definition = read_task_file(EXAMPLE)
    assert definition.name == "rte"
    for split, n in (("train", 360), ("dev", 40), ("test", 277)):
        assert len(load_split(str(EXAMPLE), "en", split)) == n
    rows = load_file(EXAMPLE.parent / "unlabelled.tsv", get_task("rte", "en"), require_label=False,
                     columns={"input1": "sentence1", "input2": "sentence2"})  # fmt: skip
    assert len(rows) == 20 and rows[0].label is None
    shutil.rmtree(EXAMPLE.parent / "__pycache__", ignore_errors=True)
