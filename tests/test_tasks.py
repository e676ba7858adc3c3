"""Task definitions, bundled samples, real-file loaders and user-file loading."""

from __future__ import annotations

import json
import pickle
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from promptatlas.tasks import (
    TASKS,
    DataError,
    Example,
    UnknownTaskError,
    get_task,
    list_tasks,
    load_file,
    load_hf_dataset,
    load_split,
)
from promptatlas.tasks.carve import balanced_quota, carve, sample
from promptatlas.tasks.files import read_examples, write_examples
from promptatlas.tasks.loaders import sample_limit
from promptatlas.tasks.sources import load_source
from promptatlas.tasks.specs import Split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"original data not found at {DATA} (shared folder beside the repo)"
)
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
ALL = [(v.spec.name, v.lang) for v in list_tasks()]


# --- definitions ------------------------------------------------------------------------------


def test_all_twelve_pairs_exist() -> None:
    assert sorted(ALL) == sorted((t, lang) for t in TASKS for lang in ("en", "ko"))
    sts = get_task("sts", "ko")
    assert sts.name == "sts-ko"
    assert sts.verbalizers == {"different": "상이", "similar": "유사"}
    assert sts.positive_label == "similar"
    tc = get_task("tc", "ko")
    assert set(tc.verbalizers.values()) == {
        "정치",
        "경제",
        "사회",
        "생활문화",
        "세계",
        "IT과학",
        "스포츠",
    }
    assert {get_task(t, "en").max_length for t in TASKS} == {180, 150, 256, 80, 400, 60}
    # variants travel to DataLoader workers: they must pickle and stay hashable
    assert pickle.loads(pickle.dumps(sts)) == sts
    assert hash(sts) == hash(pickle.loads(pickle.dumps(sts)))


def test_label_of_word() -> None:
    task = get_task("sa", "ko")
    assert task.label_of_word(" 긍정 ") == "positive"
    assert get_task("nli", "en").label_of_word("Neutral") == "neutral"
    with pytest.raises(DataError, match="긍정"):
        task.label_of_word("positive")


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownTaskError) as err:
        get_task("paraphrase", "en")
    for name in TASKS:
        assert name in str(err.value)
    with pytest.raises(UnknownTaskError, match="sts-ko"):
        load_split("sts", "fr", "train")
    with pytest.raises(DataError, match="train, dev, test"):
        load_split("sts", "en", "validation")  # type: ignore[arg-type]


# --- carving and sampling ---------------------------------------------------------------------


def test_carve_is_stratified_and_deterministic() -> None:
    items = [(i, "a" if i % 4 else "b") for i in range(100)]  # 75 a, 25 b
    rest, held = carve(items, 0.2, key=lambda x: x[1])
    assert Counter(x[1] for x in held) == {"a": 15, "b": 5}
    assert sorted(rest + held) == items
    assert (rest, held) == carve(items, 0.2, key=lambda x: x[1])
    assert held == sorted(held)  # source order kept


def test_balanced_sampling() -> None:
    assert balanced_quota([100, 3, 100], 60) == [29, 3, 28]
    items = ["a"] * 50 + ["b"] * 5
    got = sample(items, 20, key=lambda x: x, classes=["a", "b"])
    assert Counter(got) == {"a": 15, "b": 5}


# --- bundled sample ---------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "lang"), ALL)
def test_bundled_sample_loads(task: str, lang: str) -> None:
    variant = get_task(task, lang)
    for split in SPLITS:
        exs = load_split(task, lang, split)
        assert 0 < len(exs) <= sample_limit(variant, split)
        assert len({e.uid for e in exs}) == len(exs)
        for e in exs:
            assert len(e.inputs) == variant.spec.n_inputs
            if variant.spec.kind == "classification":
                assert e.label in variant.labels
                assert e.target == variant.verbalizers[e.label]
            else:
                assert e.target in e.references
        if variant.spec.kind == "classification":
            seen = Counter(e.label for e in exs)
            assert set(seen) == set(variant.labels)
    assert load_split(task, lang, "dev", limit=3) == load_split(task, lang, "dev")[:3]


def test_bundled_examples_shape() -> None:
    cg = load_split("cg", "en", "dev", limit=1)[0]
    assert cg.inputs == (" ".join(cg.concepts),)
    assert all("_" not in c for c in cg.concepts)
    qa = load_split("qa", "ko", "test", limit=1)[0]
    assert qa.target in qa.inputs[0]  # KorQuAD answers are spans of the whole context


def test_bundled_sample_validation_names_line(tmp_path: Path) -> None:
    task = get_task("sa", "en")
    good = Example(("fine film",), "positive", "positive", uid="x1")
    path = tmp_path / "s.jsonl"
    write_examples(path, [good])
    with open(path, "a", encoding="utf-8") as f:
        f.write(
            json.dumps({"uid": "x2", "inputs": ["bad"], "target": "meh", "label": "meh"}) + "\n"
        )
    with pytest.raises(DataError, match=r"s\.jsonl:2: unknown label 'meh'"):
        read_examples(path, task)


# --- original files ---------------------------------------------------------------------------


def _sizes(task: str, lang: str) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NSMC warning is tested separately
        return {s: len(x) for s, x in load_source(get_task(task, lang), DATA).items()}


@needs_data
@pytest.mark.parametrize(
    ("task", "lang", "expected"),
    [
        ("sa", "en", {"train": 67349, "dev": 872, "test": 1821}),
        # 5,749 / 1,500 / 1,379 pairs minus score == 3 (315 / 86 / 87)
        ("sts", "en", {"train": 5434, "dev": 1414, "test": 1292}),
        ("sts", "ko", {"train": 5434, "dev": 1414, "test": 1292}),
        # official test 9,824 halved per label into train/test
        ("nli", "en", {"train": 4913, "dev": 9842, "test": 4911}),
        ("nli", "ko", {"train": 2505, "dev": 2490, "test": 2505}),
        # test file 25,000 rows minus 2 empty documents = 24,998 = 2,500 dev + 22,498 test
        ("sa", "ko", {"train": 5000, "dev": 2500, "test": 22498}),
        # subset 10,001 = 9,000 train + 1,001 dev
        ("tc", "en", {"train": 9000, "dev": 1001, "test": 7600}),
        # official train 45,678 = 41,110 train + 4,568 test
        ("tc", "ko", {"train": 41110, "dev": 9107, "test": 4568}),
        ("cg", "en", {"train": 39069, "dev": 993, "test": 1497}),
        # dev 1,000 lines = 991 concept sets; test 1,432 sets halved
        ("cg", "ko", {"train": 716, "dev": 991, "test": 716}),
    ],
)
def test_real_counts(task: str, lang: str, expected: dict[str, int]) -> None:
    assert _sizes(task, lang) == expected


@needs_data
@pytest.mark.parametrize(("lang", "questions", "articles"), [("en", 10570, 48), ("ko", 5774, 140)])
def test_real_qa_split_by_article(lang: str, questions: int, articles: int) -> None:
    splits = load_source(get_task("qa", lang), DATA)
    assert sum(len(x) for x in splits.values()) == questions
    # every question of an article sits in one split: no context is shared across splits
    contexts = {s: {e.inputs[0] for e in x} for s, x in splits.items()}
    assert not contexts["train"] & contexts["test"]
    assert not contexts["train"] & contexts["dev"]
    assert not contexts["dev"] & contexts["test"]


@needs_data
def test_real_label_counts_and_quirks() -> None:
    nli = load_source(get_task("nli", "en"), DATA)
    assert Counter(e.label for e in nli["dev"]) == {
        "entailment": 3329,
        "contradiction": 3278,
        "neutral": 3235,
    }
    sst = load_split("sa", "en", "train", data_dir=DATA)
    assert Counter(e.label for e in sst) == {"positive": 37569, "negative": 29780}
    ynat = load_split("tc", "ko", "dev", data_dir=DATA)
    assert Counter(e.target for e in ynat)["사회"] == 3701
    ag = load_split("tc", "en", "test", data_dir=DATA)
    assert set(Counter(e.label for e in ag).values()) == {1900}
    # the quoted YNAT train title containing a tab is read as one clean title
    ynat_all = load_source(get_task("tc", "ko"), DATA)
    titles = [e.inputs[0] for s in SPLITS for e in ynat_all[s] if "여성금융인" in e.inputs[0]]
    assert "朴대통령 경기침체·저성장 극복에 여성금융인 역할중요" in titles
    cg = load_split("cg", "en", "dev", data_dir=DATA, limit=1)[0]
    assert cg.concepts == ("field", "look", "stand")
    assert len(cg.references) == 4


@needs_data
def test_nsmc_empty_documents_are_reported() -> None:
    from promptatlas.tasks import sources

    sources._CACHE.clear()  # the warning is raised while parsing, so force a parse
    with pytest.warns(UserWarning, match=r"ratings_test\.first25000\.txt: skipped 2 row"):
        load_source(get_task("sa", "ko"), DATA)


@needs_data
@pytest.mark.parametrize(("task", "lang"), ALL)
def test_sample_is_subset_of_real_split(task: str, lang: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = load_source(get_task(task, lang), DATA)
    uids = {s: {e.uid for e in x} for s, x in full.items()}
    assert not uids["train"] & uids["test"]
    assert not uids["dev"] & uids["test"]
    for split in SPLITS:
        by_uid = {e.uid: e for e in full[split]}
        for e in load_split(task, lang, split):
            assert by_uid[e.uid] == e


def test_bad_original_row_names_file_and_line(tmp_path: Path) -> None:
    nsmc = tmp_path / "ko" / "nsmc"
    nsmc.mkdir(parents=True)
    (nsmc / "ratings_train.first5000.txt").write_text(
        "id\tdocument\tlabel\n1\t좋다\t1\n2\t별로\t7\n", encoding="utf-8"
    )
    (nsmc / "ratings_test.first25000.txt").write_text(
        "id\tdocument\tlabel\n3\t굿\t1\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"ratings_train\.first5000\.txt:3: unknown label '7'"):
        load_split("sa", "ko", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match="missing data file"):
        load_split("sts", "en", "train", data_dir=tmp_path)


# --- user files -------------------------------------------------------------------------------


def test_load_file_csv_with_column_mapping(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "reviews.csv", 'text,sentiment\n"great, truly",positive\nawful,0\nok,1\n'
    )
    exs = load_file(path, "sa", "en", columns={"input1": "text", "label": "sentiment"})
    # label given as key, as index 0 (= negative) and as index 1 (= positive)
    assert [e.label for e in exs] == ["positive", "negative", "positive"]
    assert exs[0].inputs == ("great, truly",)
    assert exs[1].target == "negative"
    assert exs[2].uid == "reviews-00002"
    # Korean: label words of the language are accepted too
    ko = _write(tmp_path / "ko.csv", "text,sentiment\n좋아요,긍정\n별로,0\n")
    got = load_file(ko, "sa", "ko", columns={"input1": "text", "label": "sentiment"})
    assert [(e.label, e.target) for e in got] == [("positive", "긍정"), ("negative", "부정")]
    # canonical keys work in every language; other words do not
    assert (
        load_file(path, "sa", "ko", columns={"input1": "text", "label": "sentiment"})[0].target
        == "긍정"
    )
    bad = _write(tmp_path / "bad.csv", "text,sentiment\nfine,good\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: unknown label 'good'"):
        load_file(bad, "sa", "ko", columns={"input1": "text", "label": "sentiment"})


def test_load_file_bad_row_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "premise\thypothesis\tgold\nA man sleeps.\tA person rests.\tentailment\n"
        "A dog runs.\tA cat runs.\tmaybe\n",
        encoding="utf-8",
    )
    cols = {"input1": "premise", "input2": "hypothesis", "label": "gold"}
    with pytest.raises(DataError, match=r"pairs\.tsv:3: unknown label 'maybe'"):
        load_file(path, "nli", "en", columns=cols)
    path.write_text("premise\tgold\nA man sleeps.\t0\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"pairs\.tsv:2: missing .*'hypothesis'"):
        load_file(path, "nli", "en", columns=cols)


def test_load_file_tsv_pair(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("input1\tinput2\tlabel\n남자가 잔다.\t사람이 쉰다.\t함의\n", encoding="utf-8")
    (ex,) = load_file(path, "nli", "ko", fmt="tsv")
    assert ex.inputs == ("남자가 잔다.", "사람이 쉰다.")
    assert (ex.label, ex.target) == ("entailment", "함의")
    with pytest.raises(DataError, match="fmt="):
        load_file(path, "nli", "ko")


def test_load_file_jsonl_generation(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    rows = [
        {"ctx": "Paris is in France.", "q": "Where is Paris?", "answers": ["France", "in France"]},
        {"ctx": "Seoul is in Korea.", "q": "Where is Seoul?", "answers": ["Korea"], "id": "s1"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    cols = {"input1": "ctx", "input2": "q", "references": "answers", "uid": "id"}
    exs = load_file(path, "qa", "en", columns=cols)
    assert exs[0].target == "France"
    assert exs[0].references == ("France", "in France")
    assert exs[1].uid == "s1"
    cg = tmp_path / "cg.json"
    cg.write_text(json.dumps([{"concepts": "dog run field", "target": "A dog runs."}]))
    (ex,) = load_file(cg, "cg", "en")
    assert ex.concepts == ("dog", "run", "field")
    assert ex.inputs == ("dog run field",)
    assert ex.references == ("A dog runs.",)
    path.write_text('{"ctx": "x", "q": "y", "answers": ["z"]}\n{broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"gen\.jsonl:2: invalid JSON"):
        load_file(path, "qa", "en", columns=cols)


def test_load_file_rejects_bad_columns_and_indices(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.csv", "input1,label\nx,9\n")
    with pytest.raises(DataError, match="unknown field"):
        load_file(path, "sa", "en", columns={"text": "input1"})
    with pytest.raises(DataError, match=r"a\.csv:2: label index 9 out of range"):
        load_file(path, "tc", "en")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_load_hf_dataset_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="pip install datasets"):
        load_hf_dataset("glue", "sa", "en", split="train", columns={"input1": "sentence"})
