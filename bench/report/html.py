"""report.html: report.md as one self-contained page, readable offline and fit to mail.

The page is converted from the report's own markdown, so it cannot say anything report.md
does not. Only the small subset report.md uses is understood (headings, paragraphs, a
blockquote, pipe tables, images, `code` and **bold**); no markdown package is needed.
Images are embedded as base64 data URIs and the CSS is inline: the page references no
other file and nothing on the network.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path, PurePosixPath

_IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*(e[-+]?\d+)?|\.\d+)\s*(%|x|s|ms)?$", re.I)
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.35em; border-bottom: 1px solid #d0d7de; padding-bottom: .25em; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
code { font: 0.88em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
       background: #f3f4f6; padding: .1em .35em; border-radius: 4px; }
blockquote { margin: 1em 0; padding: .6em 1em; border-left: 4px solid #d29922;
             background: #fff8e5; }
.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; font-weight: 600; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e7eb; }
figcaption { font-size: 13px; color: #57606a; }
nav { font-size: 14px; background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px;
      padding: .5em 1.2em; margin: 1em 0; }
nav ul { margin: .2em 0; padding-left: 1.2em; }
.missing { color: #cf222e; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; max-width: 300px; }
"""


def _inline(text: str) -> str:
    """Escape, then `code` and **bold**; code spans are left untouched by the bold rule."""
    out = []
    for i, part in enumerate(text.split("`")):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            escaped = html.escape(part)
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line)]


def _table(lines: list[str]) -> str:
    head = _cells(lines[0])
    body = [_cells(line) for line in lines[2:]]  # lines[1] is the |---| rule
    rows = ["<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    for cells in body:
        tds = []
        for c in cells:
            cls = ' class="num"' if _NUMBER.match(c) else ""
            tds.append(f"<td{cls}>{_inline(c)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return '<div class="table"><table>\n' + "\n".join(rows) + "\n</table></div>"


def data_uri(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _image(alt: str, src: str, base: Path) -> str:
    rel = PurePosixPath(src)
    caption = f"<figcaption>{html.escape(alt)}</figcaption>"
    # Only files beside the report are embedded; nothing is ever fetched or linked.
    if rel.is_absolute() or ".." in rel.parts or ":" in src or not (base / rel).is_file():
        return f'<p class="missing">[image not available: {html.escape(src)}]</p>'
    img = f'<img src="{data_uri(base / rel)}" alt="{html.escape(alt)}">'
    return f"<figure>{img}{caption}</figure>"


def _slug(text: str, used: set[str]) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
    candidate, k = slug, 1
    while candidate in used:
        k += 1
        candidate = f"{slug}-{k}"
    used.add(candidate)
    return candidate


def markdown_to_html(md: str, *, base: str | Path, title: str | None = None) -> str:
    """The report's markdown as a complete HTML page; images under `base` are embedded."""
    base = Path(base)
    blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", md) if b.strip()]
    body, toc, used = [], [], set()
    for block in blocks:
        lines = block.splitlines()
        first = lines[0]
        if heading := re.match(r"^(#{1,6})\s+(.*)$", first):
            level, text = len(heading.group(1)), heading.group(2)
            anchor = _slug(text, used)
            body.append(f'<h{level} id="{anchor}">{_inline(text)}</h{level}>')
            if level in (2, 3):
                toc.append((level, anchor, text))
            title = title or text
            rest = "\n".join(lines[1:]).strip()
            if rest:
                body.append(f"<p>{_inline(rest)}</p>")
        elif all(line.lstrip().startswith("|") for line in lines) and len(lines) >= 2:
            body.append(_table(lines))
        elif first.startswith(">"):
            text = " ".join(line.lstrip(">").strip() for line in lines)
            body.append(f"<blockquote>{_inline(text)}</blockquote>")
        elif image := _IMAGE.match(block.strip()):
            body.append(_image(image.group("alt"), image.group("src"), base))
        elif all(_IMAGE.match(line.strip()) for line in lines):  # consecutive images: a grid
            figures = [_IMAGE.match(line.strip()) for line in lines]
            body.append(
                '<div class="gallery">'
                + "".join(_image(m.group("alt"), m.group("src"), base) for m in figures)
                + "</div>"
            )
        else:
            body.append("<p>" + "<br>\n".join(_inline(line) for line in lines) + "</p>")
    if len(toc) > 3:
        items = "".join(
            f'<li style="margin-left:{(level - 2) * 1.2}em"><a href="#{a}">{_inline(t)}</a></li>'
            for level, a, t in toc
        )
        nav = f"<nav><strong>Contents</strong><ul>{items}</ul></nav>"
        body.insert(1, nav)  # after the title
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title or 'neu-bench report')}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
