"""The HTML page of a results folder: one self-contained file with the summary first, every
figure embedded, every table's rows, a contents list per section, all text escaped."""

from __future__ import annotations

import base64
import csv
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from promptatlas.report.html import markdown_to_html, write_html

SUMMARY = """# demo: results with intervals

Scores ×100 with 95% intervals; `n` per row. **Bold** <script>alert("summary")</script>

## Baselines

| method | task | score |
|---|---|---|
| v1 | sa-en | 71.3 [66.0, 76.3] |
| v2 | <script>x</script> | 64.0 |

- one point
- another `point`
"""

VOIDS = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Collects tags, ids, links and image sources; checks that elements nest properly."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self.images: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(str(values["id"]))
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        if tag == "img":
            self.images.append(str(values.get("src")))
        for name in ("src", "href"):
            value = values.get(name) or ""
            if value and not value.startswith(("#", "data:")):
                self.errors.append(f"external {name}: {value[:60]}")
        if tag not in VOIDS:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _png(path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path.read_bytes()


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    (root / "report").mkdir(parents=True)
    (root / "report" / "summary.md").write_text(SUMMARY, encoding="utf-8")
    with open(root / "report" / "cells.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["kind", "task", "score"])
        writer.writerow(["baseline", "sa-en", "0.713"])
        writer.writerow(["transfer", "<script>alert('csv')</script>", "-0.05"])
        writer.writerow(["quote", 'a "b" & c', "1e-3"])
    _png(root / "report" / "transfer_heatmaps.png")
    attention = root / "atlas" / "attention"
    _png(attention / "kl_per_layer.png")
    (attention / "summary.txt").write_text("v1: peaks at layers [2] <b>not bold</b>\n")
    with open(attention / "kl_heads.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "layer", "kl"])
        writer.writerows([["sa-en-v1", i, i / 10] for i in range(300)])
    (root / "g.yaml").write_text("name: demo\nmodel: tiny-llama # <model>\n")
    # Not part of the page: prompt directories, banks, checkpoints.
    prompt = root / "bank" / "sa-en-v1-s1"
    prompt.mkdir(parents=True)
    (prompt / "prompt.json").write_text("{}")
    _png(prompt / "secret_bank.png")
    transfer = root / "transfer" / "nli-to-sa-en-v1-s1"
    transfer.mkdir(parents=True)
    (transfer / "prompt.json").write_text("{}")
    (transfer / "secret_transfer.csv").write_text("a\n1\n")
    hidden = root / ".run.checkpoint"
    hidden.mkdir()
    (hidden / "secret_hidden.txt").write_text("x")
    return root


def test_page_is_self_contained_and_complete(results: Path) -> None:
    page = write_html(results)
    assert page == results / "index.html"
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")

    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.errors == []
    assert checker.stack == []
    assert "script" not in checker.tags  # no script at all, not even escaped into a tag

    # Every figure is embedded, byte for byte.
    for png in (
        results / "report" / "transfer_heatmaps.png",
        results / "atlas/attention/kl_per_layer.png",
    ):
        assert f"data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}" in text
    assert len(checker.images) == 2
    assert all(src.startswith("data:image/png;base64,") for src in checker.images)

    # Tables: the markdown summary's rows and the CSV rows.
    assert '<td class="num">0.713</td>' in text
    assert "<td>71.3 [66.0, 76.3]</td>" in text
    assert "<td>a &quot;b&quot; &amp; c</td>" in text
    assert '<td class="num">-0.05</td>' in text
    # Long tables are cut at max_rows with a note.
    assert "the first 200 of 300 rows" in text
    assert '<td>sa-en-v1</td><td class="num">199</td>' in text
    assert '<td>sa-en-v1</td><td class="num">200</td>' not in text

    # Escaping: no markup from the files gets through.
    assert "<script" not in text
    assert "&lt;script&gt;alert(&quot;summary&quot;)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(&#x27;csv&#x27;)&lt;/script&gt;" in text
    assert "&lt;b&gt;not bold&lt;/b&gt;" in text
    assert "# &lt;model&gt;" in text

    # The summary comes first; its title is the page's.
    assert "<title>demo: results with intervals</title>" in text
    assert text.index('id="summary"') < text.index('id="contents"') < text.index("<section")
    assert "<strong>Bold</strong>" in text and "<code>n</code>" in text
    assert "<li>another <code>point</code></li>" in text

    # Contents: the page's and each section's, every link resolves.
    anchors = [link[1:] for link in checker.links if link.startswith("#")]
    assert set(anchors) <= set(checker.ids)
    assert {"s-report", "s-atlas-attention", "s-top"} <= set(anchors)
    assert "s-report-cells-csv" in anchors and "s-report-transfer-heatmaps-png" in anchors
    order = [text.index(f'<section id="{s}"') for s in ("s-top", "s-report", "s-atlas-attention")]
    assert order == sorted(order)

    # What is not part of the page.
    for secret in ("secret_bank", "secret_transfer", "secret_hidden"):
        assert secret not in text


def test_out_path_and_rerun(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "pages" / "demo.html"
    assert write_html(results, out, max_rows=5) == out
    text = out.read_text(encoding="utf-8")
    assert "the first 5 of 300 rows" in text
    first = write_html(results)
    # A second page in the folder is not taken into the next one.
    again = write_html(results).read_text(encoding="utf-8")
    assert again.count("<section") == first.read_text(encoding="utf-8").count("<section")


def test_folder_without_summary(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "compression").mkdir(parents=True)
    (root / "compression" / "results.csv").write_text("method,score\nv1,0.5\n")
    text = write_html(root).read_text(encoding="utf-8")
    assert "<title>plain</title>" in text
    assert 'id="summary"' not in text
    assert '<td class="num">0.5</td>' in text
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_html(tmp_path / "missing")


def test_markdown_blocks() -> None:
    out = markdown_to_html("# T\n\n```\n<a> & b\n```\ntext *not a list*\n", heading_offset=1)
    assert "<h2>T</h2>" in out
    assert "<pre>&lt;a&gt; &amp; b</pre>" in out
    assert "<p>text *not a list*</p>" in out
    assert re.search(r"<table>", markdown_to_html("| a |\n| b |\n")) is None  # no rule line


def _browser() -> object:
    """A headless Chromium driven by Selenium (Debian's chromium and chromium-driver; `.ci/run`
    installs them), or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("no Chromium: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # No network here: without these, Chromium keeps trying to reach Google's hosts.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_page_in_a_real_browser(results: Path, tmp_path: Path) -> None:
    """Opened in headless Chromium: every figure decodes, every table renders its rows, every
    contents link lands on its section, nothing from the files runs as script, no console error."""
    page = write_html(results)
    driver: Any = _browser()
    try:
        driver.get(page.as_uri())
        assert driver.title == "demo: results with intervals"
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.naturalHeight, i.getBoundingClientRect().width]);"
        )
        assert len(images) == 2
        for complete, width, height, shown in images:
            assert complete and width > 0 and height > 0 and shown > 0  # decoded and laid out
        rows = driver.execute_script(
            "return Array.from(document.querySelectorAll('table')).map(t => "
            "[t.querySelector('th') ? t.querySelector('th').textContent : '', "
            "t.querySelectorAll('tbody tr').length || t.querySelectorAll('tr').length - 1]);"
        )
        by_header = {header: n for header, n in rows}
        assert by_header["method"] == 2  # the summary's markdown table
        assert by_header["kind"] == 3  # cells.csv
        assert by_header["prompt"] == 200  # kl_heads.csv, cut at max_rows
        missing = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href^=\"#\"]'))"
            ".map(a => a.getAttribute('href').slice(1))"
            ".filter(id => !document.getElementById(id));"
        )
        assert missing == []
        # Following a contents link brings its section into view (at the top of the window,
        # or as far as the page scrolls).
        driver.execute_script("window.scrollTo(0, 0);")
        driver.find_element("css selector", 'a[href="#s-atlas-attention"]').click()
        hash_, top, height, scrolled, bottom = driver.execute_script(
            "const s = document.getElementById('s-atlas-attention').getBoundingClientRect();"
            "const e = document.scrollingElement;"
            "return [location.hash, s.top, innerHeight, e.scrollTop, "
            "e.scrollTop + innerHeight >= e.scrollHeight - 1];"
        )
        assert hash_ == "#s-atlas-attention"
        assert 0 <= top < height and (abs(top) < 5 or (scrolled > 0 and bottom))
        assert driver.execute_script("return document.scripts.length;") == 0
        text = driver.find_element("tag name", "body").text
        assert 'alert("summary")' in text  # shown as text, never run
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert errors == []
        shot = tmp_path / "page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_long_numbers_are_shortened_with_the_full_value_kept(tmp_path: Path) -> None:
    root = tmp_path / "nums"
    root.mkdir()
    (root / "r.csv").write_text(
        "name,score,n\nsa,0.8466666666666667,300\nnli,-3.6847785300766396,7\n"
    )
    text = write_html(root).read_text(encoding="utf-8")
    assert '<td class="num" title="0.8466666666666667">0.8467</td>' in text
    assert '<td class="num" title="-3.6847785300766396">-3.685</td>' in text
    assert '<td class="num">300</td>' in text
    assert '<div class="wide"><table>' in text  # wide tables scroll instead of wrapping
