"""Composition report: the Table 1 layout, CSV/markdown, the attention heatmap, recovery and
PCA figures, from hand-made results."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from promptatlas.compose import MethodScore, RecoveryResult, RecoveryRow
from promptatlas.report.compose import (
    AMP_TABLE1,
    comparison_markdown,
    comparison_table,
    plot_attention_heatmap,
    plot_intrinsic_pca,
    plot_recovery_vs_dim,
    recovery_markdown,
    write_attention_csv,
    write_comparison_csv,
    write_comparison_markdown,
    write_recovery_csv,
)


def _score(method: str, task: str, seed: int, value: float, lang: str = "en") -> MethodScore:
    return MethodScore(method, task, lang, seed, value, None, None, 10)


def _scores() -> list[MethodScore]:
    out = []
    for seed, bump in ((1, 0.0), (2, 0.1)):
        out += [
            _score("pt", "sa", seed, 0.6 + bump),
            _score("pt", "nli", seed, 0.4 + bump),
            _score("amp", "sa", seed, 0.7 + bump),
            _score("amp", "nli", seed, 0.5),
            _score("amp", "sa", seed, 0.1, lang="ko"),  # another language: left out
        ]
    out.append(_score("spot-m", "sa", 1, 0.9))  # no NLI score: no mean
    return out


def test_comparison_table_means_and_stds() -> None:
    table = comparison_table(_scores(), lang="en")
    assert table.tasks == ["nli", "sa"]
    pt_sa = table.cells[("sa", "pt")]
    assert pt_sa.mean == pytest.approx(0.65) and pt_sa.std == pytest.approx(0.0707107, abs=1e-6)
    # mean row: per seed the mean over tasks (pt: .5, .6), then mean ± std over seeds
    assert table.mean_row["pt"] is not None
    assert table.mean_row["pt"].mean == pytest.approx(0.55)
    assert table.mean_row["pt"].values == pytest.approx((0.5, 0.6))
    assert table.mean_row["spot-m"] is None and table.mean_row["attempt"] is None
    both = comparison_table(_scores())
    assert "sa-ko" in both.tasks


def test_comparison_markdown_and_csv(tmp_path: Path) -> None:
    table = comparison_table(_scores(), lang="en")
    text = comparison_markdown(table, paper=True)
    lines = text.splitlines()
    # SPoT-m has one seed where PT and AMP have two: its header says so.
    assert lines[0] == "| task | PT | SPoT-s | SPoT-m (1 seed) | ATTEMPT | AMP |"
    assert "| sa | 65.0 ± 7.1 | – | 90.0 | – | 75.0 ± 7.1 |" in lines
    assert lines[-2].startswith("| **mean** | 55.0 ± 7.1 |")
    assert lines[-1].endswith(f"{AMP_TABLE1['mean']['amp']:.1f} |")
    md = write_comparison_markdown(table, tmp_path / "t" / "table.md")
    assert md.read_text() == comparison_markdown(table)
    path = write_comparison_csv(table, tmp_path / "table.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["task"] for r in rows] == ["nli", "sa", "mean"]
    assert float(rows[1]["pt_mean"]) == pytest.approx(0.65) and rows[1]["pt_seeds"] == "2"
    assert rows[2]["spot-m_mean"] == ""
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_attention_figure_and_csv(tmp_path: Path) -> None:
    a = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    keys = ["sa-en", "nli-en", "sts-en"]
    png = plot_attention_heatmap(a, keys, tmp_path / "attention.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(write_attention_csv(a, keys, tmp_path / "attention.csv").open()))
    assert rows[0] == ["target", *keys] and float(rows[3][3]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="keys"):
        plot_attention_heatmap(a, keys[:2], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def _recovery(dim: int, ist: float) -> RecoveryResult:
    rows = [
        RecoveryRow("sa-en", "sa", "en", True, ist, 1.0, 0.3, 0.9, untrained=0.2),
        RecoveryRow("tc-ko", "tc", "ko", False, ist / 2, 0.5, None, None),
    ]
    return RecoveryResult(dim, rows, {"mean_ratio": ist}, {"mean_ratio": ist})


def test_recovery_csv_and_figures(tmp_path: Path) -> None:
    results = [_recovery(1, 0.5), _recovery(5, 0.8)]
    rows = list(csv.DictReader(write_recovery_csv(results, tmp_path / "rec.csv").open()))
    assert len(rows) == 4 and float(rows[1]["recovery"]) == pytest.approx(0.5)
    assert rows[0]["seen"] == "True" and rows[1]["random_decoder"] == ""
    assert float(rows[0]["gain_recovery"]) == pytest.approx((0.5 - 0.2) / 0.8)
    results[0].seen["gain_recovery"] = 0.375  # type: ignore[index]
    text = recovery_markdown(results).splitlines()
    assert text[2] == "| 1 | 50% | 50% | 38% | — |"  # seen, unseen, seen gain, unseen gain
    assert "| 1 | sa-en | yes | 20.0 | 50.0 | 100.0 | 50% | 37% |" in text
    assert "| 5 | tc-ko | no | — | 40.0 | 50.0 | 80% | — |" in text
    assert rows[1]["untrained"] == "" and rows[1]["gain_recovery"] == ""
    assert plot_recovery_vs_dim(results, tmp_path / "rec.png").stat().st_size > 0
    vectors = np.random.default_rng(0).normal(size=(6, 3))
    tasks = ["sa", "sa", "nli", "nli", "sts", "sts"]
    langs = ["en", "ko"] * 3
    assert plot_intrinsic_pca(vectors, tasks, langs, tmp_path / "pca.png").stat().st_size > 0
    one = plot_intrinsic_pca(vectors[:, :1], tasks, langs, tmp_path / "pca1.png")
    assert one.exists()
    with pytest.raises(ValueError):
        plot_intrinsic_pca(vectors, tasks[:2], langs, tmp_path / "x.png")


def _summary(correct: list[int]) -> dict[str, object]:
    """A stored test summary of an accuracy task: gold 1 everywhere, pred 1 where correct."""
    return {
        "score": sum(correct) / len(correct),
        "examples": {"kind": "accuracy", "preds": correct, "golds": [1] * len(correct)},
    }


def test_compare_to_own_hand_case() -> None:
    """10 examples: composed 8 right, own 9 right, untrained 5 right → differences −10 and
    +30 points (paired on the same examples), recovery 8/9, gain recovery (8−5)/(9−5) = .75."""
    from promptatlas.compose import compare_to_own

    composed = _summary([1] * 8 + [0] * 2)
    score = MethodScore("amp", "sa", "en", 42, 0.8, 0.5, 1.0, 10, summary=composed)
    c = compare_to_own(score, _summary([1] * 9 + [0]), _summary([1] * 5 + [0] * 5))
    assert (c.own, c.untrained) == (0.9, 0.5)
    assert c.minus_own is not None and c.minus_untrained is not None
    assert c.minus_own["value"] == pytest.approx(-0.1)
    assert c.minus_untrained["value"] == pytest.approx(0.3)
    assert c.minus_own["low"] <= -0.1 <= c.minus_own["high"]
    assert c.recovery == pytest.approx(8 / 9) and c.gain_recovery == pytest.approx(0.75)
    # Scored on other examples (another test_limit): no paired difference, not a wrong one.
    other = compare_to_own(score, _summary([1] * 12), None)
    assert other.minus_own is None and other.untrained is None and other.gain_recovery is None


def test_own_composition_markdown() -> None:
    from promptatlas.compose import OwnComposition, ScoreComparison
    from promptatlas.report.compose import own_composition_markdown

    diff = {"value": -0.1, "low": -0.25, "high": 0.05, "significant": False}
    gain = {"value": 0.3, "low": 0.1, "high": 0.5, "significant": True}
    c = ScoreComparison("amp", "sa-en", 0.8, 0.55, 0.95, 10, 0.9, 0.5, diff, gain)
    ist = ScoreComparison("ipt", "nli-en", 0.4, 0.3, 0.5, 10, 0.6, 0.2, None, None)
    result = OwnComposition(
        model="m", amp_lang="en", amp=[c], attention=[[0.25, 0.75], [0.5, 0.5]],
        attention_keys=["nli-en", "sa-en"], ipt=ist, ipt_dim=2,
        ipt_fitted=["sa-en", "nli-en"], ipt_seen=True, ipt_reconstruction_mse=0.0314,
    )  # fmt: skip
    text = own_composition_markdown(result)
    assert "| sa-en | 50.0 | 90.0 | 80.0 [55.0, 95.0] | -10.0 [-25.0, +5.0] " in text
    assert "| +30.0* [+10.0, +50.0] | 89% | 75% |" in text
    assert "| sa-en | 0.75 | 0.50 |" not in text and "| nli-en | 0.25 | 0.75 |" in text
    assert "## IPT (d_I = 2; fitted on sa-en, nli-en; reconstruction MSE 0.031)" in text
    assert "| nli-en | 20.0 | 60.0 | 40.0 [30.0, 50.0] | — | — | 67% | 50% |" in text


def test_each_composition_target_reads_its_own_prompts_format() -> None:
    """A bank with a cue template on SA beside NLI in the plain format: each target gets the
    format stored with its own prompt (lowest seed); a given format overrides all."""
    from types import SimpleNamespace

    from promptatlas.formatting import FormatConfig
    from promptatlas.runs.compose import _target_formats

    cue, plain = FormatConfig(template="{text}\nSentiment:"), FormatConfig()

    def meta(task: str, lang: str, seed: int, fmt: FormatConfig) -> tuple[None, object]:
        return None, SimpleNamespace(
            task=task, lang=lang, seed=seed, run=SimpleNamespace(format=fmt)
        )

    metas = [
        meta("sa", "en", 43, plain),
        meta("sa", "en", 42, cue),
        meta("nli", "en", 42, plain),
        meta("sa", "ko", 42, plain),
    ]
    fallback = FormatConfig(max_length=17)
    got = _target_formats(metas, "en", ("sa", "nli", "sts"), None, fallback)
    assert got == {"sa-en": cue, "nli-en": plain, "sts-en": fallback}
    given = FormatConfig(max_length=19)
    assert set(_target_formats(metas, "en", ("sa", "nli"), given, fallback).values()) == {given}
