"""Task definitions: the six tasks of the thesis in English and Korean (SPEC §2).

A :class:`TaskSpec` is language-independent (what is computed and how it is scored); a
:class:`TaskVariant` is that task in one language with its data source, label words
(verbalizers, thesis Appendix Tables 4-5) and input token budget (thesis Table 6).

Label order. ``TaskVariant.labels`` is the order used when a label is given as an integer index
(``load_file``/``load_hf_dataset``). It follows the Hugging Face datasets' ``ClassLabel`` order of
the source sets, so integer labels from those sets map correctly without a column remap:

========  ===========================================================================
sts       different=0, similar=1 (KLUE-STS ``binary-label``)
nli       entailment=0, neutral=1, contradiction=2 (SNLI, XNLI, KLUE-NLI)
sa        negative=0, positive=1 (SST-2, NSMC)
tc-en     world=0, sports=1, business=2, scitech=3 (``ag_news``; the CSV's 1-4 minus one)
tc-ko     itscience=0, economy=1, society=2, culture=3, world=4, sports=5, politics=6
          (``klue``/``ynat``)
========  ===========================================================================
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from promptatlas.tasks.errors import DataError, UnknownTaskError

TaskKind = Literal["classification", "generation"]
Split = Literal["train", "dev", "test"]
SPLITS: tuple[Split, ...] = ("train", "dev", "test")
LANGS: tuple[str, ...] = ("en", "ko")


@dataclass(frozen=True)
class Example:
    """One task instance in the unified text-to-text format (SPEC §2).

    ``inputs`` holds one text (single-input task) or two (pair task). QA: ``(context, question)``;
    CG: ``(concepts joined by " ",)``. ``target`` is what the model must produce: the gold
    verbalizer word (classification) or the target text (QA answer, CG sentence).
    """

    inputs: tuple[str, ...]
    target: str
    label: str | None = None
    references: tuple[str, ...] = ()
    concepts: tuple[str, ...] = ()
    uid: str = ""

    def __post_init__(self) -> None:
        # Callers often build examples from JSON lists; store tuples so examples stay hashable.
        for name in ("inputs", "references", "concepts"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class TaskSpec:
    """A task independent of language: its kind, number of inputs and main metric."""

    name: str
    kind: TaskKind
    n_inputs: int
    metric: str
    description: str


@dataclass(frozen=True)
class TaskVariant:
    """A task in one language with its data source and label words."""

    spec: TaskSpec
    lang: str
    dataset: str
    labels: tuple[str, ...]
    # hash=False: a Mapping is unhashable, but variants are used as dict keys elsewhere.
    verbalizers: Mapping[str, str] = field(hash=False)
    positive_label: str | None
    max_length: int
    official_split: bool
    source: str
    licence: str

    @property
    def name(self) -> str:
        return f"{self.spec.name}-{self.lang}"

    def label_of_word(self, word: str) -> str:
        """Inverse verbalizer: the label key whose label word is ``word``.

        Surrounding whitespace is ignored and, failing an exact match, case is too (English
        label words are lower-case but generated text may not be).
        """
        text = word.strip()
        for key, w in self.verbalizers.items():
            if w == text:
                return key
        folded = text.casefold()
        for key, w in self.verbalizers.items():
            if w.casefold() == folded:
                return key
        valid = ", ".join(repr(w) for w in self.verbalizers.values())
        raise DataError(
            f"{word!r} is not a label word of task {self.name}; expected one of {valid}"
        )


class FrozenMap(Mapping[str, str]):
    """A read-only, hashable and picklable str -> str mapping (``MappingProxyType`` cannot be
    pickled, and variants travel to DataLoader workers)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, str]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def _v(mapping: dict[str, str]) -> Mapping[str, str]:
    return FrozenMap(mapping)


TASKS: Mapping[str, TaskSpec] = MappingProxyType(
    {
        "sts": TaskSpec(
            "sts",
            "classification",
            2,
            "binary_f1",
            "Semantic textual similarity, binarised: > 3 similar, < 3 different, = 3 dropped.",
        ),
        "nli": TaskSpec(
            "nli",
            "classification",
            2,
            "macro_f1",
            "Natural language inference (premise, hypothesis): entailment/neutral/contradiction.",
        ),
        "sa": TaskSpec(
            "sa", "classification", 1, "accuracy", "Binary sentiment analysis of a review."
        ),
        "tc": TaskSpec("tc", "classification", 1, "macro_f1", "News topic classification."),
        "qa": TaskSpec(
            "qa",
            "generation",
            2,
            "squad",
            "Extractive QA answered generatively: inputs (context, question), target the answer.",
        ),
        "cg": TaskSpec(
            "cg",
            "generation",
            1,
            "coverage",
            "Generative commonsense: write a sentence that uses every input concept.",
        ),
    }
)

_CC_BY_SA_4 = "CC BY-SA 4.0"
_KLUE_LICENCE = "CC BY-SA 4.0 (KLUE; see LICENSE.KLUE.md in the source data)"


def _variants() -> dict[str, TaskVariant]:
    t = TASKS
    out = [
        TaskVariant(
            t["sts"],
            "en",
            "STS-B",
            ("different", "similar"),
            _v({"different": "different", "similar": "similar"}),
            "similar",
            180,
            True,
            "STS benchmark (PhilipMay/stsb-multi-mt English files)",
            "STS benchmark licence (sentences from public sources; see ixa2.si.ehu.eus/stswiki)",
        ),
        TaskVariant(
            t["sts"],
            "ko",
            "KorSTS",
            ("different", "similar"),
            _v({"different": "상이", "similar": "유사"}),
            "similar",
            180,
            True,
            "KorSTS (kakaobrain/KorNLUDatasets)",
            _CC_BY_SA_4,
        ),
        TaskVariant(
            t["nli"],
            "en",
            "SNLI",
            ("entailment", "neutral", "contradiction"),
            _v(
                {"entailment": "entailment", "neutral": "neutral", "contradiction": "contradiction"}
            ),
            None,
            150,
            False,
            "SNLI 1.0 dev/test gold pairs (via the e-SNLI repository, MIT)",
            _CC_BY_SA_4,
        ),
        TaskVariant(
            t["nli"],
            "ko",
            "KorNLI",
            ("entailment", "neutral", "contradiction"),
            _v({"entailment": "함의", "neutral": "중립", "contradiction": "모순"}),
            None,
            150,
            False,
            "KorNLI XNLI-ko dev/test (kakaobrain/KorNLUDatasets)",
            _CC_BY_SA_4,
        ),
        TaskVariant(
            t["sa"],
            "en",
            "SST-2",
            ("negative", "positive"),
            _v({"negative": "negative", "positive": "positive"}),
            "positive",
            256,
            True,
            "GLUE SST-2 with labelled test (awake020/pytorch_Bert_sst2)",
            "GLUE SST-2 (Stanford Sentiment Treebank; research use)",
        ),
        TaskVariant(
            t["sa"],
            "ko",
            "NSMC",
            ("negative", "positive"),
            _v({"negative": "부정", "positive": "긍정"}),
            "positive",
            256,
            False,
            "NSMC first 5,000 train / 25,000 test rows (e9t/nsmc via chrisjihee/DeepKNLP)",
            "CC0 1.0",
        ),
        TaskVariant(
            t["tc"],
            "en",
            "AG News",
            ("world", "sports", "business", "scitech"),
            _v(
                {"world": "world", "sports": "sports", "business": "business", "scitech": "scitech"}
            ),
            None,
            80,
            False,
            "AG News test (tonyzhaozh/few-shot-learning) + 10k train subset (forest-snow/alps)",
            "AG News: free for non-commercial research use (Zhang et al. 2015)",
        ),
        TaskVariant(
            t["tc"],
            "ko",
            "KLUE-YNAT",
            ("itscience", "economy", "society", "culture", "world", "sports", "politics"),
            _v(
                {
                    "itscience": "IT과학",
                    "economy": "경제",
                    "society": "사회",
                    "culture": "생활문화",
                    "world": "세계",
                    "sports": "스포츠",
                    "politics": "정치",
                }
            ),
            None,
            80,
            False,
            "KLUE-YNAT v1.1 train/dev titles",
            _KLUE_LICENCE,
        ),
        TaskVariant(
            t["qa"],
            "en",
            "SQuAD v1.1",
            (),
            _v({}),
            None,
            400,
            False,
            "SQuAD v1.1 dev, rebuilt from the SQuAD explorer pages (48 articles)",
            _CC_BY_SA_4,
        ),
        TaskVariant(
            t["qa"],
            "ko",
            "KorQuAD 1.0",
            (),
            _v({}),
            None,
            400,
            False,
            "KorQuAD 1.0 dev (140 articles)",
            "CC BY-ND 2.0 KR",
        ),
        TaskVariant(
            t["cg"],
            "en",
            "CommonGen",
            (),
            _v({}),
            None,
            60,
            True,
            "CommonGen v1.0 (INK-USC/CommonGen @ f01ef0a)",
            "MIT",
        ),
        TaskVariant(
            t["cg"],
            "ko",
            "KommonGen",
            (),
            _v({}),
            None,
            60,
            False,
            "KommonGen dev + test 1.1 (nlpai-lab/KommonGen)",
            "MIT",
        ),
    ]
    return {v.name: v for v in out}


VARIANTS: Mapping[str, TaskVariant] = MappingProxyType(_variants())


def list_tasks() -> list[TaskVariant]:
    """Every task/language pair available, in a fixed order (task, then language)."""
    return list(VARIANTS.values())


def get_task(task: str, lang: str) -> TaskVariant:
    """The variant of ``task`` in ``lang``; :class:`UnknownTaskError` lists the valid names."""
    key = f"{str(task).strip().lower()}-{str(lang).strip().lower()}"
    try:
        return VARIANTS[key]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {task!r} in language {lang!r}; valid tasks: {', '.join(TASKS)}; "
            f"languages: {', '.join(LANGS)} (pairs: {', '.join(VARIANTS)})"
        ) from None


def check_split(split: str) -> Split:
    """Validate a split name (the public API is typed, but names often come from configs)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def validate_example(ex: Example, task: TaskVariant, loc: str) -> Example:
    """Check an example against its task; raise :class:`DataError` naming ``loc`` if invalid."""
    spec = task.spec
    if len(ex.inputs) != spec.n_inputs:
        raise DataError(
            f"{loc}: task {task.name} needs {spec.n_inputs} input text(s), got {len(ex.inputs)}"
        )
    for i, text in enumerate(ex.inputs, 1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{loc}: input {i} is empty or not a string; every input needs text")
    if spec.kind == "classification":
        if ex.label not in task.labels:
            raise DataError(
                f"{loc}: unknown label {ex.label!r} for task {task.name}; "
                f"use one of {', '.join(task.labels)}"
            )
        if ex.target != task.verbalizers[ex.label]:
            raise DataError(
                f"{loc}: target {ex.target!r} is not the label word "
                f"{task.verbalizers[ex.label]!r} of label {ex.label!r}"
            )
        if ex.references or ex.concepts:
            raise DataError(f"{loc}: classification examples take no references or concepts")
    else:
        if ex.label is not None:
            raise DataError(f"{loc}: generation task {task.name} takes no label")
        if not ex.target.strip():
            raise DataError(f"{loc}: empty target; a generation example needs its target text")
        if not ex.references or any(not r.strip() for r in ex.references):
            raise DataError(f"{loc}: generation examples need non-empty references")
        if spec.name == "cg" and (not ex.concepts or any(not c.strip() for c in ex.concepts)):
            raise DataError(f"{loc}: CG examples need their non-empty concepts")
    return ex
