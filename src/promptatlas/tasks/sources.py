"""Parsers for the original dataset files, laid out as in ``/work/shared/data`` (see its README).

``load_source(task, data_dir)`` reads every file of one task/language pair at full size and
returns all three splits. Where a split does not exist it is carved deterministically
(``random.Random(42)``, :mod:`promptatlas.tasks.carve`) and the variant has
``official_split=False``. Choices, pair by pair:

=======  ===========================================================================
sts-en   STS-B train/dev/test CSV (no header). score > 3 similar, < 3 different, = 3 dropped
         (the SPEC's binarisation; the drop is part of the task definition, counted in
         SOURCES.md). Official splits.
sts-ko   KorSTS train/dev/test TSV (header; ``score`` column), binarised like STS-B.
nli-en   SNLI gold pairs from the e-SNLI parallel line files. dev = official dev (9,842);
         no train file, so the official test is split in half, stratified by label:
         one half is our train, the other our test.
nli-ko   KorNLI XNLI-ko: dev = official dev; official test halved (stratified) into train/test.
sa-en    SST-2 train/dev/test TSV, label first (0 negative, 1 positive). Official splits.
sa-ko    NSMC: train = the 5,000-row train file; 10% of the 25,000-row test file (stratified)
         is carved off as dev, the rest is test. Two official test rows have an empty
         document: they are skipped with a ``warnings.warn`` naming the file and count.
tc-en    AG News: test = official test CSV (class 1 World, 2 Sports, 3 Business, 4 Sci/Tech);
         train/dev = 90/10 stratified carve of the 10k held-out train subset. The subset has
         descriptions only, so the test input is the description too (the title is dropped)
         to keep train and test inputs alike. Texts are kept raw (``#39;`` escapes included).
tc-ko    KLUE-YNAT titles: dev = official dev (9,107); test = 10% stratified carve of the
         official train, train = the rest. Read with a CSV reader: one train title is quoted
         and contains a tab (it is stripped).
qa-en    SQuAD v1.1 dev (parts 1+2, 48 articles), split by article: shuffled titles, 10% of
         articles test, 10% dev, rest train. Target = first gold answer; references = the
         distinct gold answers.
qa-ko    KorQuAD 1.0 dev (140 articles), split by article like qa-en.
cg-en    CommonGen: train from the parallel line files, one example per target sentence
         (references = all sentences of its concept set); dev/test jsonl, one example per
         concept set (target = first scene). Concepts are the bare words (POS tags dropped;
         a word listed twice with two tags is kept once). Official splits.
cg-ko    KommonGen: lines grouped by concept set (dev has repeated sets). dev = official dev;
         the test 1.1 sets are halved (by set) into train and test; train has one example
         per sentence.
=======  ===========================================================================

Bad rows (missing field, unknown label, unparsable score, empty text) raise
:class:`~promptatlas.tasks.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptatlas.tasks.carve import carve, carve_groups
from promptatlas.tasks.errors import REENCODE, DataError, decode_error, where
from promptatlas.tasks.specs import Example, TaskVariant, get_task, validate_example

Splits = dict[str, list[Example]]

# Carving fractions (documented in the module docstring).
NLI_TRAIN_FRACTION = 0.5  # of the official test file
NSMC_DEV_FRACTION = 0.1  # of the test file
AGNEWS_DEV_FRACTION = 0.1  # of the train subset
YNAT_TEST_FRACTION = 0.1  # of the official train
QA_DEV_FRACTION = 0.1  # of the articles
QA_TEST_FRACTION = 0.1
KOMMONGEN_TRAIN_FRACTION = 0.5  # of the test concept sets


# ---------------------------------------------------------------------------------------------
# low-level readers


def _require(data_dir: Path, rel: str) -> Path:
    path = data_dir / rel
    if not path.is_file():
        raise DataError(
            f"missing data file {path}; data_dir must be laid out like the shared data folder "
            f"(<data_dir>/{rel}; see its README.md), or pass data_dir=None for the bundled sample"
        )
    return path


def _read_lines(path: Path, encoding: str = "utf-8-sig", fix: str = REENCODE) -> list[str]:
    """Lines without their terminator; only ``\\n`` ends a line (texts may contain ``\\r``).
    Text that is not ``encoding`` is a :class:`DataError` naming the file, line and byte."""
    try:
        with open(path, encoding=encoding, newline="\n") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, encoding, fix) from None


def _read_rows(
    path: Path, *, delimiter: str, quoted: bool, n_fields: int
) -> Iterator[tuple[int, list[str]]]:
    """Delimited rows with their (last) physical line number; wrong field counts raise."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(
            f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
        )
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != n_fields:
                    raise DataError(
                        f"{where(path, reader.line_num)}: expected {n_fields} fields separated "
                        f"by {delimiter!r}, found {len(row)}; fix or remove this row"
                    )
                yield reader.line_num, row
        except UnicodeDecodeError as exc:
            raise decode_error(path, exc, "utf-8-sig") from None


def _text(value: str, path: Path, line: int, what: str) -> str:
    text = value.strip()
    if not text:
        raise DataError(f"{where(path, line)}: empty {what}; every row needs a non-empty {what}")
    return text


def _label(value: str, mapping: Mapping[str, str], path: Path, line: int) -> str:
    try:
        return mapping[value.strip()]
    except KeyError:
        raise DataError(
            f"{where(path, line)}: unknown label {value!r}; expected one of {', '.join(mapping)}"
        ) from None


def _classify(
    task: TaskVariant, inputs: tuple[str, ...], label: str, uid: str, loc: str
) -> Example:
    ex = Example(inputs=inputs, target=task.verbalizers[label], label=label, uid=uid)
    return validate_example(ex, task, loc)


def _sts_label(raw: str, path: Path, line: int) -> str | None:
    try:
        score = float(raw)
    except ValueError:
        raise DataError(
            f"{where(path, line)}: similarity score {raw!r} is not a number (expected 0-5)"
        ) from None
    if not 0.0 <= score <= 5.0:
        raise DataError(f"{where(path, line)}: similarity score {score} is outside 0-5")
    if score == 3.0:
        return None  # the SPEC's rule: score exactly 3 is neither similar nor different
    return "similar" if score > 3.0 else "different"


def _header(path: Path, row: list[str], line: int, required: Sequence[str]) -> dict[str, int]:
    names = [c.strip() for c in row]
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f"{where(path, line)}: header {names} lacks column(s) {missing}; "
            "is this the right file?"
        )
    return {c: names.index(c) for c in required}


def _take_header(
    path: Path, rows: Iterator[tuple[int, list[str]]], required: Sequence[str], expected: str
) -> dict[str, int]:
    """Consume the header row of ``rows``; ``expected`` says what the file should look like."""
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: empty file; expected {expected}")
    return _header(path, first[1], first[0], required)


# ---------------------------------------------------------------------------------------------
# per-pair loaders


def _sts_en(d: Path, task: TaskVariant) -> Splits:
    out: Splits = {}
    for split in ("train", "dev", "test"):
        path = _require(d, f"en/stsb/stsb-en-{split}.csv")
        exs = []
        for i, (line, row) in enumerate(_read_rows(path, delimiter=",", quoted=True, n_fields=3)):
            label = _sts_label(row[2], path, line)
            if label is None:
                continue
            s1, s2 = (_text(row[k], path, line, f"sentence{k + 1}") for k in (0, 1))
            exs.append(_classify(task, (s1, s2), label, f"stsb-{split}-{i:05d}", where(path, line)))
        out[split] = exs
    return out


def _sts_ko(d: Path, task: TaskVariant) -> Splits:
    out: Splits = {}
    for split in ("train", "dev", "test"):
        path = _require(d, f"ko/korsts/sts-{split}.tsv")
        rows = _read_rows(path, delimiter="\t", quoted=False, n_fields=7)
        col = _take_header(
            path, rows, ("score", "sentence1", "sentence2"), "a KorSTS TSV with a header"
        )
        exs = []
        for i, (line, row) in enumerate(rows):
            label = _sts_label(row[col["score"]], path, line)
            if label is None:
                continue
            s1 = _text(row[col["sentence1"]], path, line, "sentence1")
            s2 = _text(row[col["sentence2"]], path, line, "sentence2")
            exs.append(
                _classify(task, (s1, s2), label, f"korsts-{split}-{i:05d}", where(path, line))
            )
        out[split] = exs
    return out


def _nli_by_label(exs: list[Example]) -> tuple[list[Example], list[Example]]:
    """(test, train): half of an official test file, stratified by label, becomes train."""
    return carve(exs, NLI_TRAIN_FRACTION, key=lambda e: e.label)


def _nli_en(d: Path, task: TaskVariant) -> Splits:
    labels = {k: k for k in task.labels}
    parts: Splits = {}
    for split in ("dev", "test"):
        paths = [_require(d, f"en/snli/esnli_{p}.{split}") for p in ("s1", "s2", "labels")]
        s1, s2, lab = (_read_lines(p) for p in paths)
        if not len(s1) == len(s2) == len(lab):
            raise DataError(
                f"{paths[0]}, {paths[1]}, {paths[2]}: parallel files have {len(s1)}, {len(s2)} "
                f"and {len(lab)} lines; they must be line-aligned"
            )
        exs = []
        for i in range(len(s1)):
            line = i + 1
            label = _label(lab[i], labels, paths[2], line)
            prem = _text(s1[i], paths[0], line, "premise")
            hyp = _text(s2[i], paths[1], line, "hypothesis")
            exs.append(
                _classify(task, (prem, hyp), label, f"snli-{split}-{i:05d}", where(paths[2], line))
            )
        parts[split] = exs
    test, train = _nli_by_label(parts["test"])
    return {"train": train, "dev": parts["dev"], "test": test}


def _nli_ko(d: Path, task: TaskVariant) -> Splits:
    labels = {k: k for k in task.labels}
    parts: Splits = {}
    for split in ("dev", "test"):
        path = _require(d, f"ko/kornli/xnli.{split}.ko.tsv")
        rows = _read_rows(path, delimiter="\t", quoted=False, n_fields=3)
        col = _take_header(
            path, rows, ("sentence1", "sentence2", "gold_label"), "a KorNLI TSV with a header"
        )
        exs = []
        for i, (line, row) in enumerate(rows):
            label = _label(row[col["gold_label"]], labels, path, line)
            s1 = _text(row[col["sentence1"]], path, line, "sentence1")
            s2 = _text(row[col["sentence2"]], path, line, "sentence2")
            exs.append(
                _classify(task, (s1, s2), label, f"kornli-{split}-{i:05d}", where(path, line))
            )
        parts[split] = exs
    test, train = _nli_by_label(parts["test"])
    return {"train": train, "dev": parts["dev"], "test": test}


_BINARY = {"0": "negative", "1": "positive"}


def _sa_en(d: Path, task: TaskVariant) -> Splits:
    out: Splits = {}
    for split in ("train", "dev", "test"):
        path = _require(d, f"en/sst2/{split}.tsv")
        rows = _read_rows(path, delimiter="\t", quoted=False, n_fields=2)
        first = next(rows, None)
        if first is None or first[1][0].strip() != "label":
            raise DataError(f"{path}: expected the SST-2 header 'label<TAB>sentence' on line 1")
        exs = []
        for i, (line, row) in enumerate(rows):
            label = _label(row[0], _BINARY, path, line)
            text = _text(row[1], path, line, "sentence")
            exs.append(_classify(task, (text,), label, f"sst2-{split}-{i:05d}", where(path, line)))
        out[split] = exs
    return out


def _read_nsmc(path: Path, task: TaskVariant) -> list[Example]:
    rows = _read_rows(path, delimiter="\t", quoted=False, n_fields=3)
    col = _take_header(
        path, rows, ("id", "document", "label"), "an NSMC file with header id/document/label"
    )
    exs, empty = [], []
    for line, row in rows:
        label = _label(row[col["label"]], _BINARY, path, line)
        text = row[col["document"]].strip()
        if not text:
            # Known-dirty official data: a few reviews are empty. Skip, but say so below.
            empty.append(line)
            continue
        uid = f"nsmc-{row[col['id']].strip()}"
        exs.append(_classify(task, (text,), label, uid, where(path, line)))
    if empty:
        warnings.warn(
            f"{path}: skipped {len(empty)} row(s) with an empty document (lines "
            f"{', '.join(map(str, empty[:10]))}{', ...' if len(empty) > 10 else ''})",
            stacklevel=2,
        )
    return exs


def _sa_ko(d: Path, task: TaskVariant) -> Splits:
    train = _read_nsmc(_require(d, "ko/nsmc/ratings_train.first5000.txt"), task)
    test_all = _read_nsmc(_require(d, "ko/nsmc/ratings_test.first25000.txt"), task)
    test, dev = carve(test_all, NSMC_DEV_FRACTION, key=lambda e: e.label)
    return {"train": train, "dev": dev, "test": test}


def _tc_en(d: Path, task: TaskVariant) -> Splits:
    test_path = _require(d, "en/agnews/test.csv")
    rows = _read_rows(test_path, delimiter=",", quoted=True, n_fields=3)
    col = _take_header(
        test_path, rows, ("Class Index", "Description"), "header Class Index,Title,Description"
    )
    by_index = {"1": "world", "2": "sports", "3": "business", "4": "scitech"}
    test = []
    for i, (line, row) in enumerate(rows):
        label = _label(row[col["Class Index"]], by_index, test_path, line)
        text = _text(row[col["Description"]], test_path, line, "description")
        test.append(_classify(task, (text,), label, f"agnews-test-{i:05d}", where(test_path, line)))
    sub_path = _require(d, "en/agnews/train_subset10k_alps.tsv")
    by_name = {"World": "world", "Sports": "sports", "Business": "business", "Sci/Tech": "scitech"}
    pool = []
    for i, (line, row) in enumerate(_read_rows(sub_path, delimiter="\t", quoted=False, n_fields=2)):
        label = _label(row[1], by_name, sub_path, line)
        text = _text(row[0], sub_path, line, "description")
        pool.append(
            _classify(task, (text,), label, f"agnews-subset-{i:05d}", where(sub_path, line))
        )
    train, dev = carve(pool, AGNEWS_DEV_FRACTION, key=lambda e: e.label)
    return {"train": train, "dev": dev, "test": test}


def _read_ynat(path: Path, task: TaskVariant, split: str) -> list[Example]:
    by_word = {w: k for k, w in task.verbalizers.items()}
    exs = []
    i = 0
    for line, row in _read_rows(path, delimiter="\t", quoted=True, n_fields=2):
        if line == 1 and [c.strip() for c in row] == ["label", "text"]:
            continue  # the train file has a header, the dev file does not
        label = _label(row[0], by_word, path, line)
        text = _text(row[1], path, line, "title")
        exs.append(_classify(task, (text,), label, f"ynat-{split}-{i:05d}", where(path, line)))
        i += 1
    return exs


def _tc_ko(d: Path, task: TaskVariant) -> Splits:
    pool = _read_ynat(_require(d, "ko/ynat/ynat-v1.1_train.label_title.tsv"), task, "train")
    dev = _read_ynat(_require(d, "ko/ynat/ynat-v1.1_dev.label_title.tsv"), task, "dev")
    train, test = carve(pool, YNAT_TEST_FRACTION, key=lambda e: e.label)
    return {"train": train, "dev": dev, "test": test}


def _load_json(path: Path, encoding: str = "utf-8-sig", fix: str = REENCODE) -> Any:
    try:
        with open(path, encoding=encoding) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: invalid JSON ({e.msg}); fix the file") from e
    except UnicodeDecodeError as exc:
        raise decode_error(path, exc, encoding, fix) from None


def _squad_questions(path: Path, task: TaskVariant) -> list[tuple[str, Example]]:
    """(article title, example) for every question of a SQuAD-format file, in file order."""
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON; expected an object with a 'data' list")
    out = []
    for a, article in enumerate(doc["data"]):
        title = str(article.get("title", f"#{a}"))
        for p, para in enumerate(article.get("paragraphs", [])):
            loc = f"{path}: data[{a}].paragraphs[{p}]"
            context = para.get("context")
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{loc}: missing or empty 'context'")
            for q in para.get("qas", []):
                qid = str(q.get("id", ""))
                qloc = f"{loc} question {qid!r}"
                question = q.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise DataError(f"{qloc}: missing or empty 'question'")
                answers = [
                    ans.get("text", "") for ans in q.get("answers", []) if isinstance(ans, dict)
                ]
                refs = tuple(dict.fromkeys(t.strip() for t in answers if t and t.strip()))
                if not refs or not qid:
                    raise DataError(
                        f"{qloc}: a question needs an 'id' and at least one non-empty answer "
                        "(unanswerable SQuAD 2.0 questions are not supported)"
                    )
                ex = Example(
                    inputs=(context, question.strip()), target=refs[0], references=refs, uid=qid
                )
                out.append((title, validate_example(ex, task, qloc)))
    return out


def _split_by_article(items: list[tuple[str, Example]]) -> Splits:
    assign = carve_groups([t for t, _ in items], QA_DEV_FRACTION, QA_TEST_FRACTION)
    out: Splits = {"train": [], "dev": [], "test": []}
    for title, ex in items:
        out[assign[title]].append(ex)
    return out


def _qa_en(d: Path, task: TaskVariant) -> Splits:
    items = []
    for part in (1, 2):
        items += _squad_questions(
            _require(d, f"en/squad/dev-v1.1.reconstructed.part{part}of2.json"), task
        )
    return _split_by_article(items)


def _qa_ko(d: Path, task: TaskVariant) -> Splits:
    return _split_by_article(
        _squad_questions(_require(d, "ko/korquad/KorQuAD_v1.0_dev.json"), task)
    )


def _bare_concepts(concept_set: str, path: Path, line: int) -> tuple[str, ...]:
    """``"field_N#look_V"`` -> ``("field", "look")``; a repeated word (two POS) is kept once."""
    words = [c.rsplit("_", 1)[0].strip() for c in concept_set.strip().split("#")]
    if not words or any(not w for w in words):
        raise DataError(f"{where(path, line)}: malformed concept set {concept_set!r}")
    return tuple(dict.fromkeys(words))


def _cg(concepts: tuple[str, ...], target: str, refs: tuple[str, ...], uid: str) -> Example:
    return Example(
        inputs=(" ".join(concepts),), target=target, references=refs, concepts=concepts, uid=uid
    )


def read_jsonl(
    path: Path, encoding: str = "utf-8-sig", fix: str = REENCODE
) -> Iterator[tuple[int, dict[str, Any]]]:
    for line, text in enumerate(_read_lines(path, encoding, fix), 1):
        if not text.strip():
            continue  # blank lines are not rows
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{where(path, line)}: invalid JSON ({e.msg}); fix this line") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where(path, line)}: expected a JSON object on each line")
        yield line, obj


def _cg_en(d: Path, task: TaskVariant) -> Splits:
    out: Splits = {}
    names = ("src_alpha", "tgt", "cs_str", "index")
    paths = [_require(d, f"en/commongen/commongen.train.{n}.txt") for n in names]
    src, tgt, cs, idx = (_read_lines(p) for p in paths)
    if not len(src) == len(tgt) == len(cs) == len(idx):
        raise DataError(
            f"{paths[0].parent}: CommonGen train files {', '.join(p.name for p in paths)} have "
            f"{len(src)}, {len(tgt)}, {len(cs)}, {len(idx)} lines; they must be line-aligned"
        )
    groups: dict[str, list[int]] = {}
    concepts_of: dict[str, tuple[str, ...]] = {}
    for i in range(len(tgt)):
        line = i + 1
        concepts = _bare_concepts(cs[i], paths[2], line)
        if sorted(src[i].split()) != sorted(c.rsplit("_", 1)[0] for c in cs[i].split("#")):
            raise DataError(
                f"{where(paths[0], line)}: concepts {src[i]!r} disagree with {cs[i]!r} in "
                f"{paths[2].name}; the parallel files are misaligned"
            )
        key = idx[i].strip()
        if concepts_of.setdefault(key, concepts) != concepts:
            raise DataError(
                f"{where(paths[3], line)}: index {key!r} reused for another concept set"
            )
        _text(tgt[i], paths[1], line, "target sentence")
        groups.setdefault(key, []).append(i)
    # one example per sentence, in file order; references = every sentence of the same set
    train: list[Example | None] = [None] * len(tgt)
    for key, members in groups.items():
        refs = tuple(tgt[i].strip() for i in members)
        for j, i in enumerate(members):
            ex = _cg(concepts_of[key], refs[j], refs, f"commongen-train-{key}-{j}")
            train[i] = validate_example(ex, task, where(paths[1], i + 1))
    out["train"] = [e for e in train if e is not None]
    for split in ("dev", "test"):
        path = _require(d, f"en/commongen/commongen.{split}.jsonl")
        exs = []
        for n, (line, obj) in enumerate(read_jsonl(path)):
            cset, scenes = obj.get("concept_set"), obj.get("scene")
            if not isinstance(cset, str) or not isinstance(scenes, list) or not scenes:
                raise DataError(
                    f"{where(path, line)}: expected 'concept_set' (string) and 'scene' (non-empty "
                    "list of sentences)"
                )
            refs = tuple(str(s).strip() for s in scenes)
            ex = _cg(_bare_concepts(cset, path, line), refs[0], refs, f"commongen-{split}-{n:05d}")
            exs.append(validate_example(ex, task, where(path, line)))
        out[split] = exs
    return out


def _kommongen_sets(path: Path) -> list[tuple[int, tuple[str, ...], list[str]]]:
    """(first line, concepts, scenes) per distinct concept set, in order of first appearance."""
    sets: dict[str, tuple[int, tuple[str, ...], list[str]]] = {}
    for line, obj in read_jsonl(path):
        cset, scene = obj.get("concept-set"), obj.get("scene")
        if not isinstance(cset, str) or not cset.strip():
            raise DataError(f"{where(path, line)}: missing 'concept-set' (space-separated words)")
        if not isinstance(scene, str) or not scene.strip():
            raise DataError(f"{where(path, line)}: missing 'scene' (the target sentence)")
        concepts = tuple(dict.fromkeys(cset.split()))
        sets.setdefault(" ".join(concepts), (line, concepts, []))[2].append(scene.strip())
    return list(sets.values())


def _cg_ko(d: Path, task: TaskVariant) -> Splits:
    dev_path = _require(d, "ko/kommongen/kommongen_dev.json")
    dev = []
    for n, (line, concepts, scenes) in enumerate(_kommongen_sets(dev_path)):
        ex = _cg(concepts, scenes[0], tuple(scenes), f"kommongen-dev-{n:05d}")
        dev.append(validate_example(ex, task, where(dev_path, line)))
    test_path = _require(d, "ko/kommongen/kommongen_test_1.1.json")
    sets = [(n, *s) for n, s in enumerate(_kommongen_sets(test_path))]
    test_sets, train_sets = carve(sets, KOMMONGEN_TRAIN_FRACTION)
    test = []
    for n, line, concepts, scenes in test_sets:
        ex = _cg(concepts, scenes[0], tuple(scenes), f"kommongen-test-{n:05d}")
        test.append(validate_example(ex, task, where(test_path, line)))
    train = []
    for n, line, concepts, scenes in train_sets:
        for j, scene in enumerate(scenes):
            ex = _cg(concepts, scene, tuple(scenes), f"kommongen-test-{n:05d}-{j}")
            train.append(validate_example(ex, task, where(test_path, line)))
    return {"train": train, "dev": dev, "test": test}


@dataclass(frozen=True)
class Source:
    """The original files of one pair (relative to data_dir) and the function that parses them."""

    files: tuple[str, ...]
    parse: Callable[[Path, TaskVariant], Splits]


SOURCES: Mapping[str, Source] = {
    "sts-en": Source(tuple(f"en/stsb/stsb-en-{s}.csv" for s in ("train", "dev", "test")), _sts_en),
    "sts-ko": Source(tuple(f"ko/korsts/sts-{s}.tsv" for s in ("train", "dev", "test")), _sts_ko),
    "nli-en": Source(
        tuple(f"en/snli/esnli_{p}.{s}" for s in ("dev", "test") for p in ("s1", "s2", "labels")),
        _nli_en,
    ),
    "nli-ko": Source(tuple(f"ko/kornli/xnli.{s}.ko.tsv" for s in ("dev", "test")), _nli_ko),
    "sa-en": Source(tuple(f"en/sst2/{s}.tsv" for s in ("train", "dev", "test")), _sa_en),
    "sa-ko": Source(
        ("ko/nsmc/ratings_train.first5000.txt", "ko/nsmc/ratings_test.first25000.txt"), _sa_ko
    ),
    "tc-en": Source(("en/agnews/test.csv", "en/agnews/train_subset10k_alps.tsv"), _tc_en),
    "tc-ko": Source(
        tuple(f"ko/ynat/ynat-v1.1_{s}.label_title.tsv" for s in ("train", "dev")), _tc_ko
    ),
    "qa-en": Source(
        tuple(f"en/squad/dev-v1.1.reconstructed.part{p}of2.json" for p in (1, 2)), _qa_en
    ),
    "qa-ko": Source(("ko/korquad/KorQuAD_v1.0_dev.json",), _qa_ko),
    "cg-en": Source(
        (
            *(
                f"en/commongen/commongen.train.{n}.txt"
                for n in ("src_alpha", "tgt", "cs_str", "index")
            ),
            "en/commongen/commongen.dev.jsonl",
            "en/commongen/commongen.test.jsonl",
        ),
        _cg_en,
    ),
    "cg-ko": Source(
        ("ko/kommongen/kommongen_dev.json", "ko/kommongen/kommongen_test_1.1.json"), _cg_ko
    ),
}

_CACHE: dict[tuple[Any, ...], Splits] = {}
_CACHE_MAX = 4  # full CommonGen/SST-2 splits are tens of MB; keep only a few pairs


def _check_not_empty(variant: TaskVariant, d: Path, files: Sequence[str], splits: Splits) -> None:
    """An empty split (a data file with a header and no rows, or only skipped rows) is named
    with its files here, not later as "no training examples" without a file."""
    for split in ("train", "dev", "test"):
        if splits.get(split):
            continue
        paths = [d / rel for rel in files]
        # The likely culprits first: files with at most one non-blank line (a header only).
        short = [p for p in paths if sum(1 for ln in _raw_lines(p) if ln.strip()) <= 1]
        named = ", ".join(str(p) for p in short or paths)
        raise DataError(
            f"no {split} examples for {variant.name} in {named}: "
            f"{'the file holds a header but no rows' if short else 'no row was usable'}; add "
            "rows, or pass data_dir=None (no --data-dir) for the bundled sample"
        )


def _raw_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except OSError:
        return []


def load_source(task: TaskVariant | str, data_dir: str | Path) -> Splits:
    """All three splits of a pair, parsed from the original files under ``data_dir``.

    Results are cached per (pair, folder, file sizes and mtimes), so reading train, dev and
    test one after another parses the files once. Callers get fresh lists.
    """
    variant = task if isinstance(task, TaskVariant) else get_task(*str(task).split("-", 1))
    d = Path(data_dir).expanduser().resolve()
    if not d.is_dir():
        raise DataError(
            f"data_dir {d} is not a folder; point it at a folder laid out like the shared data "
            "(en/..., ko/...) or pass data_dir=None for the bundled sample"
        )
    src = SOURCES[variant.name]
    stats = []
    for rel in src.files:
        st = os.stat(_require(d, rel))
        stats.append((rel, st.st_size, st.st_mtime_ns))
    key = (variant.name, str(d), tuple(stats))
    if key not in _CACHE:
        splits = src.parse(d, variant)
        _check_not_empty(variant, d, src.files, splits)
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = splits
    return {k: list(v) for k, v in _CACHE[key].items()}


def label_counts(examples: Sequence[Example]) -> Counter[str]:
    """Examples per label (classification), for reports."""
    return Counter(e.label for e in examples if e.label is not None)
