"""Analysis figures: every plot writes a real PNG of a sensible size atomically, styles are
consistent, and malformed input fails with a clear ValueError before anything is written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb

from promptatlas.analysis.attention import (
    AttentionChangeResult,
    AttentionVariabilityResult,
    correlate_heads,
)
from promptatlas.analysis.geometry import IsotropyResult, LabelSpaceResult
from promptatlas.analysis.layers import select_layers
from promptatlas.analysis.neurons import on_scores
from promptatlas.analysis.pca import pca_points
from promptatlas.report import analysis as ra

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = [f"{t}-{lang}-v2-s0" for t in ("sts", "sa", "qa") for lang in ("en", "ko")]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _variability(n_layers: int, heads: int, seed: int = 0) -> AttentionVariabilityResult:
    values = torch.tensor(_rng(seed).uniform(0.0, 0.6, (n_layers, heads)))
    return AttentionVariabilityResult(list(range(n_layers)), values, n_examples=32)


def _change(n_layers: int, heads: int, seed: int = 1) -> AttentionChangeResult:
    values = torch.tensor(_rng(seed).gamma(1.0, 0.1, (n_layers, heads)))
    return AttentionChangeResult(list(range(n_layers)), values, n_examples=32)


def _runs(n: int, seed: int, runs: tuple[str, ...] = ("base", "prompted")) -> dict[str, Any]:
    rng = _rng(seed)
    return {r: torch.tensor(rng.uniform(0.0, 1.0, n)) for r in runs}


def _isotropy(n_hidden: int, seed: int = 0) -> IsotropyResult:
    layers = list(range(n_hidden))
    r, d = _runs(n_hidden, seed), _runs(n_hidden, seed + 1)
    return IsotropyResult(
        layers, r, d, _runs(n_hidden, seed + 2), _runs(n_hidden, seed + 3), 64, 100
    )


def _label_space(n_hidden: int, seed: int = 0, runs: tuple[str, ...] = ("base", "prompted")) -> Any:
    layers = list(range(n_hidden))
    return LabelSpaceResult(
        layers, _runs(n_hidden, seed, runs), _runs(n_hidden, seed + 1, runs), 40
    )


def _check_png(path: Path, *, min_px: int = 300, max_px: int = 6000) -> np.ndarray:
    """A complete PNG of a plausible size with something drawn, and no temp file beside it."""
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    height, width = image.shape[:2]
    assert min_px <= height <= max_px and min_px <= width <= max_px, (height, width)
    rgb = image[..., :3]
    assert float((rgb < 0.9).any(axis=-1).mean()) > 0.01  # not a blank canvas
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    return image


def _has_colour(image: np.ndarray, colour: str, tol: float = 0.04, min_pixels: int = 20) -> bool:
    target = np.array(to_rgb(colour))
    close = (np.abs(image[..., :3] - target) < tol).all(axis=-1)
    return int(close.sum()) >= min_pixels


# -- styles -----------------------------------------------------------------------------------


def test_prompt_names_are_parsed_into_task_language_method() -> None:
    assert ra.parse_prompt_name("atlas/bank/nli-ko-v2-s1") == ("nli", "ko", "v2")
    assert ra.parse_prompt_name("sa_en_v1") == ("sa", "en", "v1")
    assert ra.parse_prompt_name("my-prompt") == (None, None, None)
    assert ra.parse_prompt_name("tc-de-v2") == ("tc", "de", "v2")
    style = ra.prompt_style("qa-ko-v1-s0")
    assert (style.colour, style.marker, style.linestyle) == (ra.TASK_COLOURS["qa"], "s", "--")
    by_method = ra.prompt_style("qa-ko-v1-s0", encode="method")
    assert (by_method.colour, by_method.marker, by_method.linestyle) == (
        ra.TASK_COLOURS["qa"],
        ra.METHOD_MARKERS["v1"],
        ra.METHOD_LINESTYLES["v1"],
    )
    # Unknown tasks get a stable colour, distinct from the bundled tasks' colours.
    assert ra.task_colour("ner") == ra.task_colour("ner")
    assert ra.task_colour("ner") not in ra.TASK_COLOURS.values()
    assert len(set(ra.TASK_COLOURS.values())) == len(ra.TASK_COLOURS)


def test_both_encodes_language_by_marker_and_method_by_line_style() -> None:
    style = ra.prompt_style("tc-ko-v1", encode="both")
    assert (style.marker, style.linestyle) == (ra.LANG_MARKERS["ko"], ra.METHOD_LINESTYLES["v1"])
    assert (style.marker_key, style.line_key) == ("ko", "v1")
    explicit = ra.prompt_style("my prompt", task="sa", lang="en", method="v2")
    assert (explicit.colour, explicit.marker) == (ra.TASK_COLOURS["sa"], "o")


def test_input_type_groups_follow_the_task_specs() -> None:
    groups = ra.input_type_groups([*NAMES, "unknown"])
    assert groups == {
        "single-input": ["sa-en-v2-s0", "sa-ko-v2-s0"],
        "pair-input": ["sts-en-v2-s0", "sts-ko-v2-s0", "qa-en-v2-s0", "qa-ko-v2-s0"],
    }


# -- one figure per analysis ------------------------------------------------------------------


@pytest.mark.parametrize(("n_layers", "heads"), [(18, 1), (30, 16)])
def test_plot_variability(tmp_path: Path, n_layers: int, heads: int) -> None:
    out = ra.plot_variability(_variability(n_layers, heads), tmp_path / "var.png")
    assert out == tmp_path / "var.png"
    _check_png(out)


def test_plot_variability_of_several_data_sets_and_its_width_scales_with_depth(
    tmp_path: Path,
) -> None:
    many = {name: _variability(18, 4, seed=i) for i, name in enumerate(NAMES)}
    shallow = _check_png(ra.plot_variability(many, tmp_path / "a" / "var.png"))
    deep = _check_png(ra.plot_variability(_variability(30, 4), tmp_path / "b" / "var.png"))
    assert deep.shape[1] > shallow.shape[1]  # ~0.3 in per layer


def test_plot_kl_per_layer_colours_are_the_task_colours(tmp_path: Path) -> None:
    curves = {name: _rng(i).gamma(1.0, 0.1, 24) for i, name in enumerate(NAMES) if "sa" in name}
    image = _check_png(ra.plot_kl_per_layer(curves, tmp_path / "kl.png"))
    assert _has_colour(image, ra.TASK_COLOURS["sa"])
    assert not _has_colour(image, ra.TASK_COLOURS["nli"])


def test_plot_kl_per_layer_grouped_and_by_method(tmp_path: Path) -> None:
    curves = {name: _rng(i).gamma(1.0, 0.1, 18) for i, name in enumerate(NAMES)}
    grouped = ra.plot_kl_per_layer(
        curves, tmp_path / "grouped.png", groups=ra.input_type_groups(curves)
    )
    single = _check_png(ra.plot_kl_per_layer(curves, tmp_path / "single.png"))
    assert _check_png(grouped).shape[0] > single.shape[0]  # one row of panels per group + means
    methods = {"sa-en-v1": np.arange(18.0), "sa-en-v2": np.arange(18.0)[::-1]}
    _check_png(ra.plot_kl_per_layer(methods, tmp_path / "methods.png", encode="method"))


def test_plot_kl_per_layer_accepts_mapping_styles_and_name_to_group(tmp_path: Path) -> None:
    # Entry names that do not parse, described by mappings; v1 and v2 in both languages.
    specs = {
        f"p{i}": {"task": task, "lang": lang, "method": method}
        for i, (task, lang, method) in enumerate(
            (t, lg, m) for t in ("nli", "sa") for lg in ("en", "ko") for m in ("v1", "v2")
        )
    }
    specs["p0"] = {**specs["p0"], "colour": "#000000", "label": "nli en v1"}
    curves = {name: _rng(i).random(12) for i, name in enumerate(specs)}
    groups = {name: ("pair input" if spec["task"] == "nli" else "single input")
              for name, spec in specs.items()}  # fmt: skip
    out = ra.plot_kl_per_layer(curves, tmp_path / "kl.png", styles=specs, groups=groups)
    image = _check_png(out)
    assert _has_colour(image, ra.TASK_COLOURS["sa"])
    assert _has_colour(image, ra.TASK_COLOURS["nli"])


def test_plot_kl_heads(tmp_path: Path) -> None:
    results = {name: _change(18, 4, seed=i) for i, name in enumerate(NAMES[:3])}
    _check_png(ra.plot_kl_heads(results, tmp_path / "heads.png"))
    _check_png(ra.plot_kl_heads(results, tmp_path / "own.png", shared_scale=False, ncols=3))


def test_plot_correlation(tmp_path: Path) -> None:
    var, kl = _variability(24, 12), _change(24, 12)
    report = correlate_heads(var.variability, kl.kl, layers=var.layers)
    _check_png(ra.plot_correlation(var, kl, report, tmp_path / "corr.png"))


def test_plot_on_scores_and_transfer(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    states = {name: torch.randn(18, 64, generator=gen) for name in NAMES}
    on = on_scores(states)
    _check_png(ra.plot_on_scores(on, tmp_path / "on.png"))
    _check_png(ra.plot_on_scores(on, tmp_path / "on_raw.png", kind="raw", ncols=9))
    x, y = _rng(0).random(5), _rng(1).random(5)
    targets = ["sts-en", "sa-en", "qa-en", "sts-ko", "sa-ko"]
    sources = ["qa-en", "qa-en", "sts-en", "sts-en", "sts-en"]
    _check_png(ra.plot_on_transfer(x, y, targets, tmp_path / "tr.png", sources=sources))
    _check_png(ra.plot_on_transfer(list(x), list(y), targets, tmp_path / "tr2.png"))


def test_plot_isotropy(tmp_path: Path) -> None:
    _check_png(ra.plot_isotropy(_isotropy(19), tmp_path / "iso.png"))
    many = {name: _isotropy(19, seed=i) for i, name in enumerate(NAMES)}
    _check_png(ra.plot_isotropy(many, tmp_path / "iso_many.png", exact=True))


def test_plot_label_space(tmp_path: Path) -> None:
    runs = ("base", "pre-transfer", "prompted")
    _check_png(ra.plot_label_space(_label_space(25, runs=runs), tmp_path / "ls.png"))
    many = {name: _label_space(25, seed=i) for i, name in enumerate(NAMES)}
    _check_png(ra.plot_label_space(many, tmp_path / "ls_many.png"))


def test_plot_pca_v1_and_v2(tmp_path: Path) -> None:
    rng = _rng(0)
    points = {name: rng.normal(size=(5, 16)) + i for i, name in enumerate(NAMES)}
    task_of = {n: n.split("-")[0] for n in NAMES}
    lang_of = {n: n.split("-")[1] for n in NAMES}
    v1 = ra.plot_pca([pca_points(points)], tmp_path / "v1.png", task_of=task_of, lang_of=lang_of)
    image = _check_png(v1)
    assert _has_colour(image, ra.TASK_COLOURS["qa"])
    panels = [pca_points(points, layer=layer) for layer in range(18)]
    v2 = ra.plot_pca(panels, tmp_path / "v2.png", task_of=task_of, lang_of=lang_of, muted=NAMES[:2])
    assert _check_png(v2).shape[1] > image.shape[1]
    # Language prompts: no task, no language (the analysis suite passes "lang" and "").
    task_of["qa-en-v2-s0"], lang_of["qa-en-v2-s0"] = "lang", ""
    _check_png(ra.plot_pca(panels[:2], tmp_path / "lp.png", task_of=task_of, lang_of=lang_of))
    one_component = [pca_points(points, n_components=1, layer=0)]
    _check_png(ra.plot_pca(one_component, tmp_path / "pc1.png", task_of=task_of, lang_of=lang_of))


def test_plot_layer_selection(tmp_path: Path) -> None:
    curve = _rng(0).random(24)
    selection = select_layers(curve, size=12)
    _check_png(ra.plot_layer_selection(selection, tmp_path / "sel.png"))
    _check_png(ra.plot_layer_selection(select_layers([0.1, 0.2, 0.3]), tmp_path / "flat.png"))


def test_existing_figure_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "var.png"
    path.write_bytes(b"old")
    ra.plot_variability(_variability(6, 2), path)
    _check_png(path, min_px=200)


# -- bad input --------------------------------------------------------------------------------


def _bad_cases(tmp: Path) -> list[tuple[str, Any]]:
    var, kl = _variability(12, 4), _change(12, 4)
    report = correlate_heads(var.variability, kl.kl)
    states = {n: torch.randn(6, 8) for n in NAMES[:3]}
    task_of = {n: n.split("-")[0] for n in NAMES}
    lang_of = {n: n.split("-")[1] for n in NAMES[1:]}
    panel = pca_points({n: np.eye(3, 4) + i for i, n in enumerate(NAMES[:2])})
    selection = select_layers(np.arange(8.0))
    broken = type(selection)(
        peak=[0, 9], trough=[], peaks=[], troughs=[], kept=[0], curve=list(map(float, range(8)))
    )
    p = tmp / "bad.png"
    return [
        ("different lengths", lambda: ra.plot_kl_per_layer({"a": [1, 2, 3], "b": [1, 2]}, p)),
        ("no KL curves", lambda: ra.plot_kl_per_layer({}, p)),
        ("unknown", lambda: ra.plot_kl_per_layer({"a": [1.0, 2.0]}, p, groups={"g": ["b"]})),
        ("layer labels", lambda: ra.plot_kl_per_layer({"a": [1.0, 2.0]}, p, layers=[0, 1, 2])),
        (
            "expected (12, n_heads)",
            lambda: ra.plot_variability(
                AttentionVariabilityResult(list(range(12)), torch.zeros(11, 4), 1), p
            ),
        ),
        ("different layers", lambda: ra.plot_variability({"a": var, "b": _variability(10, 4)}, p)),
        ("no attention-change", lambda: ra.plot_kl_heads({}, p)),
        ("differ from KL layers", lambda: ra.plot_correlation(var, _change(10, 4), report, p)),
        ("different shapes", lambda: ra.plot_correlation(var, _change(12, 3), report, p)),
        (
            "other layers",
            lambda: ra.plot_correlation(
                var, kl, correlate_heads(var.variability[:6], kl.kl[:6]), p
            ),
        ),
        ("kind must be", lambda: ra.plot_on_scores(on_scores(states), p, kind="cosine")),  # type: ignore[arg-type]
        ("at least two", lambda: ra.plot_on_scores(on_scores({"a": states[NAMES[0]]}), p)),
        ("differ in length", lambda: ra.plot_on_transfer([0.1, 0.2], [0.3], ["a", "b"], p)),
        (
            "differ in length",
            lambda: ra.plot_on_transfer([0.1], [0.3], ["a"], p, sources=["x", "y"]),
        ),
        ("finite", lambda: ra.plot_on_transfer([float("nan")], [0.3], ["a"], p)),
        ("different layers", lambda: ra.plot_isotropy({"a": _isotropy(5), "b": _isotropy(6)}, p)),
        (
            "expected 7 values",
            lambda: ra.plot_isotropy(
                IsotropyResult(
                    list(range(7)), _runs(6, 0), _runs(7, 1), _runs(7, 2), _runs(7, 3), 4, 4
                ),
                p,
            ),
        ),
        (
            "different model runs",
            lambda: ra.plot_label_space(
                {"a": _label_space(5), "b": _label_space(5, runs=("base",))}, p
            ),
        ),
        ("no label-space", lambda: ra.plot_label_space({}, p)),
        ("no entry for", lambda: ra.plot_pca([panel], p, task_of=task_of, lang_of=lang_of)),
        ("no PCA panels", lambda: ra.plot_pca([], p, task_of=task_of, lang_of=task_of)),
        ("outside 0..7", lambda: ra.plot_layer_selection(broken, p)),
        ("layer labels", lambda: ra.plot_layer_selection(selection, p, layers=[1, 2])),
    ]


def test_bad_input_raises_a_clear_value_error_and_writes_nothing(tmp_path: Path) -> None:
    cases = _bad_cases(tmp_path)
    for message, call in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()
    assert list(tmp_path.iterdir()) == []
