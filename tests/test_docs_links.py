"""Every relative link and image in README.md and docs/*.md points at a file of the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and ![alt](target), with an optional "title"; <img src="target">
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMG_SRC = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")


def targets(text: str) -> list[str]:
    """The link and image targets of a markdown text, outside code blocks and code spans."""
    found, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = CODE_SPAN.sub("", line)
        found += LINK.findall(line) + IMG_SRC.findall(line)
    return found


def is_external(target: str) -> bool:
    return target.startswith(("http://", "https://", "mailto:", "#"))


def test_pages_exist():
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, "docs/*.md holds no page"


def test_targets_parse():
    text = (
        "a [x](docs/a.md#s) ![i](../b.png \"t\") `[no](c.md)` <img src='d.png'>\n"
        "```\n[no](e.md)\n```"
    )
    assert targets(text) == ["docs/a.md#s", "../b.png", "d.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in targets(page.read_text(encoding="utf-8")):
        if is_external(target):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).is_file():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links to missing files: {broken}"
