"""One self-contained HTML page of a study's results folder.

:func:`write_html` reads what a study leaves in its results folder (``report/summary.md`` and
the other markdown and text summaries, the CSV tables, the PNG figures of ``report/``,
``atlas/*/`` and ``compression/``, the YAML configs) and writes one page, ``index.html`` by
default: the summary first, then a table of contents and one section per folder, each with its
own contents list, its summary text, its tables and its figures. Figures are embedded as base64
PNG and tables inline, so the page can be mailed or archived alone; it loads nothing from the
network and runs no script. Every piece of text from the files is HTML-escaped.

Prompt directories (``prompt.json``), PEFT adapters, the prompt banks and hidden folders (run
checkpoints) are not part of the page. Long tables are folded (``<details>``) after
``max_rows`` rows, with the full table one click away in the CSV next to the page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from promptatlas.io import write_text_atomic

__all__ = ["DEFAULT_MAX_ROWS", "markdown_to_html", "write_html"]

DEFAULT_MAX_ROWS = 200
_FOLD_ROWS = 30  # longer tables start folded
_FOLD_FIGURES = 8  # a folder with more figures starts folded
_SKIP_DIRS = {"bank", "__pycache__"}
_SKIP_MARKERS = ("prompt.json", "adapter_config.json")
_TEXT = (".md", ".txt")
_CONFIG = (".yaml", ".yml")
# Known folders first, in reading order; the rest alphabetically after them.
_ORDER = (
    "",  # the folder itself: an experiment's results.csv, a grid's configs
    "report",
    "atlas/attention",
    "atlas/neurons",
    "atlas/geometry",
    "atlas/pca",
    "atlas",
    "compression",
)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# -- markdown -----------------------------------------------------------------------------------

_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_BULLET = re.compile(r"^\s*[-*]\s+")


def _inline(text: str) -> str:
    """Escaped text with `code` and **bold** (applied after escaping: only fixed tags added)."""
    escaped = _e(text)
    escaped = _INLINE_CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _table_cells(line: str) -> list[str]:
    body = line.strip()
    body = body.removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in body.split("|")]


def _is_rule(line: str) -> bool:
    cells = _table_cells(line)
    return bool(cells) and all(re.fullmatch(r":?-{2,}:?", c) for c in cells)


def markdown_to_html(text: str, *, heading_offset: int = 1) -> str:
    """The markdown the reports write (headings, paragraphs, pipe tables, lists, fenced code,
    `code`, **bold**) as HTML; all text escaped. Headings move down ``heading_offset`` levels
    (a page has one h1)."""
    out: list[str] = []
    lines = text.splitlines()
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            block: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{_e(chr(10).join(block))}</pre>")
            i += 1
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", stripped)
        if heading:
            flush()
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and _is_rule(lines[i + 1]):
            flush()
            header = _table_cells(stripped)
            rows: list[list[str]] = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_table_cells(lines[i]))
                i += 1
            out.append(_table(header, rows, inline=True))
            continue
        elif _BULLET.match(stripped):
            flush()
            items: list[str] = []
            while i < len(lines) and _BULLET.match(lines[i]):
                items.append(f"<li>{_inline(_BULLET.sub('', lines[i], count=1))}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        elif not stripped:
            flush()
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


# -- tables -------------------------------------------------------------------------------------


def _numeric(cell: str) -> bool:
    try:
        float(cell.strip().replace("−", "-").rstrip("%"))
    except ValueError:
        return False
    return True


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, inline: bool = False) -> str:
    fmt = _inline if inline else _e
    head = "".join(f"<th>{fmt(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(_number_cell(c) if _numeric(c) else f"<td>{fmt(c)}</td>" for c in row)
        body.append(f"<tr>{cells}</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="wide">{table}</div>'


def _number_cell(cell: str) -> str:
    """A number as written, or to 4 significant digits when it is long (0.8466666666666667 →
    0.8467); the full value stays in the cell's tooltip."""
    text = cell.strip()
    if len(text) > 8 and "." in text and not text.endswith("%"):
        value = float(text.replace("−", "-"))
        return f'<td class="num" title="{_e(text)}">{value:.4g}</td>'
    return f'<td class="num">{_e(cell)}</td>'


def _csv_html(path: Path, max_rows: int) -> tuple[str, int]:
    """The CSV as a table (at most ``max_rows`` body rows) and its number of body rows."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        return f'<p class="note">not a readable CSV table ({_e(exc)})</p>', 0
    if not rows:
        return '<p class="note">empty table</p>', 0
    header, body = rows[0], rows[1:]
    shown = _table(header, body[:max_rows])
    if len(body) > max_rows:
        shown += (
            f'<p class="note">the first {max_rows} of {len(body)} rows; all of them are in '
            f"{_e(path.name)}</p>"
        )
    return shown, len(body)


# -- the folder ---------------------------------------------------------------------------------


@dataclass
class _Section:
    rel: str  # folder relative to the results folder ("" = the folder itself)
    texts: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return "s-" + (re.sub(r"[^A-Za-z0-9]+", "-", self.rel).strip("-") or "top")

    @property
    def title(self) -> str:
        return " / ".join(self.rel.split("/")) if self.rel else "this folder"

    def empty(self) -> bool:
        return not (self.texts or self.tables or self.figures or self.configs)


def _skipped(folder: Path) -> bool:
    return (
        folder.name.startswith(".")
        or folder.name in _SKIP_DIRS
        or any((folder / marker).exists() for marker in _SKIP_MARKERS)
    )


def _walk(root: Path, page: Path) -> list[_Section]:
    sections: list[_Section] = []

    def visit(folder: Path) -> None:
        rel = folder.relative_to(root).as_posix()
        section = _Section("" if rel == "." else rel)
        subfolders = []
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if entry.name.startswith(".") or entry == page:
                continue
            if entry.is_dir():
                if not _skipped(entry):
                    subfolders.append(entry)
                continue
            suffix = entry.suffix.lower()
            if suffix in _TEXT:
                section.texts.append(entry)
            elif suffix == ".csv":
                section.tables.append(entry)
            elif suffix == ".png":
                section.figures.append(entry)
            elif suffix in _CONFIG:
                section.configs.append(entry)
        if not section.empty():
            sections.append(section)
        for sub in subfolders:
            visit(sub)

    visit(root)

    def rank(section: _Section) -> tuple[int, str]:
        for i, name in enumerate(_ORDER):
            if section.rel == name or (name and section.rel.startswith(name + "/")):
                return i, section.rel
        return len(_ORDER), section.rel

    return sorted(sections, key=rank)


def _summary_file(root: Path) -> Path | None:
    for candidate in (root / "report" / "summary.md", root / "summary.md"):
        if candidate.is_file():
            return candidate
    return None


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _caption(path: Path) -> str:
    return path.stem.replace("_", " ")


def _item_id(section: _Section, path: Path) -> str:
    return f"{section.anchor}-{re.sub(r'[^A-Za-z0-9]+', '-', path.name).strip('-')}"


def _section_html(section: _Section, max_rows: int) -> str:
    parts = [f'<section id="{section.anchor}">', f"<h2>{_e(section.title)}</h2>"]
    contents = [
        (f"{kind} {_e(p.name)}", _item_id(section, p))
        for kind, paths in (
            ("table", section.tables),
            ("figure", section.figures),
            ("config", section.configs),
        )
        for p in paths
    ]
    if len(contents) > 1:
        links = "".join(f'<li><a href="#{i}">{label}</a></li>' for label, i in contents)
        folded = len(contents) > 2 * _FOLD_FIGURES
        parts.append(
            f"<details{'' if folded else ' open'}><summary>contents ({len(contents)})</summary>"
            f'<ul class="toc">{links}</ul></details>'
        )
    for path in section.texts:
        if path.suffix.lower() == ".md":
            parts.append(
                f'<div class="text">{markdown_to_html(_read(path), heading_offset=2)}</div>'
            )
        else:
            parts.append(f'<pre class="text">{_e(_read(path).rstrip())}</pre>')
    for path in section.tables:
        table, n = _csv_html(path, max_rows)
        opened = " open" if n <= _FOLD_ROWS else ""
        parts.append(
            f'<details class="table" id="{_item_id(section, path)}"{opened}>'
            f"<summary>{_e(path.name)} ({n} rows)</summary>{table}</details>"
        )
    figures = []
    for path in section.figures:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figures.append(
            f'<figure id="{_item_id(section, path)}"><img alt="{_e(_caption(path))}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(path.name)}</figcaption></figure>'
        )
    if figures:
        opened = "" if len(figures) > _FOLD_FIGURES else " open"
        parts.append(
            f"<details{opened}><summary>{len(figures)} figure{'s' if len(figures) > 1 else ''}"
            f'</summary><div class="figures">{"".join(figures)}</div></details>'
        )
    for path in section.configs:
        parts.append(
            f'<details id="{_item_id(section, path)}"><summary>{_e(path.name)}</summary>'
            f"<pre>{_e(_read(path).rstrip())}</pre></details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:72rem;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2.5rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
.wide{overflow-x:auto;max-width:100%}.wide td{white-space:nowrap}
th,td{border:1px solid #d0d0d0;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem;white-space:pre-wrap}
.figures{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}.note{color:#666;font-size:.85rem}
summary{cursor:pointer;font-weight:600;margin:.4rem 0}ul.toc{columns:2;font-size:.9rem}
footer{margin-top:3rem;color:#777;font-size:.8rem}
"""


def _version() -> str:
    try:
        from promptatlas import __version__
    except ImportError:  # pragma: no cover - the package always defines it
        return "unknown"
    return str(__version__)


def _page(title: str, summary: str, sections: Iterable[_Section], max_rows: int) -> str:
    sections = list(sections)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<div id="summary"><h2>Summary</h2>{summary}</div>' if summary else "",
            '<nav id="contents"><h2>Contents</h2><ul>',
            *(f'<li><a href="#{s.anchor}">{_e(s.title)}</a></li>' for s in sections),
            "</ul></nav>",
            *(_section_html(s, max_rows) for s in sections),
            f"<footer>promptatlas {_e(_version())}, "
            f"{_e(datetime.now(UTC).isoformat(timespec='seconds'))}</footer>",
            "</body></html>",
            "",
        ]
    )


def write_html(
    results_dir: str | Path, out: str | Path | None = None, *, max_rows: int = DEFAULT_MAX_ROWS
) -> Path:
    """Write one self-contained HTML page of ``results_dir`` (``<results_dir>/index.html`` by
    default) and return its path. ``max_rows``: rows shown per CSV table."""
    root = Path(results_dir).expanduser().absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist; check the path")
    page = Path(out).expanduser().absolute() if out is not None else root / "index.html"
    summary_path = _summary_file(root)
    title, summary = root.name, ""
    if summary_path:
        lines = _read(summary_path).splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is not None and lines[first].startswith("# "):
            title = lines[first][2:].strip() or title  # the summary's title is the page's
            lines = lines[first + 1 :]
        summary = markdown_to_html("\n".join(lines))
    sections = _walk(root, page)
    for section in sections:
        if summary_path in section.texts:
            section.texts.remove(summary_path)
    sections = [s for s in sections if not s.empty()]
    page.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(page, _page(title, summary, sections, max_rows))
    return page
