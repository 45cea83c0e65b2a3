"""MkDocs hooks: fill in the parts of pages that have one source elsewhere.

* ``<!-- readme: Title -->`` becomes the README's section ``## Title`` (or ``### Title``), up to
  the next heading of the same or a higher level (``<!-- readme: Title | alone -->``: up to the
  next heading of any level, its subsections left out), so the conventions, the command line and the
  benchmark tables are written once (the README's code blocks are executed by
  tests/test_readme.py).
* ``<!-- directions -->`` becomes the table of :data:`torchattr.metrics.DIRECTIONS`.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme: (.+?) -->")


def readme_section(title: str, alone: bool = False) -> str:
    """The README's section ``title`` (its heading dropped), up to the next heading as high
    (``alone``: up to the next heading)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(#{2,4}) (.+)$", line)
        if match and match.group(2).strip() == title:
            level = len(match.group(1))
            body, fenced = [], False
            for rest in lines[i + 1 :]:
                fenced ^= rest.startswith("```")
                heading = re.match(r"^(#{1,6}) ", rest)
                if not fenced and heading and (alone or len(heading.group(1)) <= level):
                    break
                body.append(re.sub(r"^(#{3,5}) ", lambda m: m.group(1)[:-1] + " ", rest))
            return "\n".join(body).strip() + "\n"
    raise ValueError(f"README.md has no section {title!r} (docs/hooks.py)")


def directions_table() -> str:
    """The metric directions registry as a markdown table."""
    from torchattr.metrics import DIRECTIONS

    rows = ["| metric | better | note |", "|---|---|---|"]
    for name, d in DIRECTIONS.items():
        note = (d.note or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {d.word} | {note} |")
    return "\n".join(rows) + "\n"


def _section(spec: str) -> str:
    title, _, flag = spec.partition("|")
    return readme_section(title.strip(), alone=flag.strip() == "alone")


def on_page_markdown(markdown: str, page, config, files) -> str:  # MkDocs hook signature
    """Replace the markers of one page."""
    markdown = MARKER.sub(lambda m: _section(m.group(1)), markdown)
    return markdown.replace("<!-- directions -->", directions_table())
