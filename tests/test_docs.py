"""README stays short and every relative link in README.md and docs/*.md leads somewhere.

README is the front page (what the tool is, the two commands, the everyday uses, where to go next)
and the rest lives in docs/, one file per topic; a moved section leaves links behind, so the links
are read from the files themselves and each must name a file that exists and, where it has one, a
heading of that file. Headings become anchors by GitHub's rule (lower case, punctuation dropped,
spaces to hyphens, repeats numbered), which is what a reader clicking the link gets."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers import REPO

README_MAX_LINES = 300
DOCS = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, where links and headings mean something."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: text lower-cased, markup and punctuation
    dropped (letters, digits, spaces, hyphens and underscores stay), spaces to hyphens, a repeat
    gets -1, -2 and so on."""
    seen: Counter[str] = Counter()
    anchors = set()
    for line in _prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2))  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _relative_links(path: Path) -> list[str]:
    """Every link target of the file that is not a web address or a mail address."""
    targets = []
    for line in _prose_lines(path):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                targets.append(target)
    return targets


def test_readme_is_at_most_300_lines() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; at most {README_MAX_LINES}: move detail to docs/"
    )


def test_readme_links_every_docs_file() -> None:
    targets = {Path(t.split("#")[0]) for t in _relative_links(REPO / "README.md")}
    missing = [p.name for p in DOCS if p.relative_to(REPO) not in targets]
    assert DOCS and not missing, f"docs files README does not link: {missing}"


@pytest.mark.parametrize(
    "source", [REPO / "README.md", *DOCS], ids=lambda p: str(p.relative_to(REPO))
)
def test_relative_links_lead_to_files_and_headings(source: Path) -> None:
    broken = []
    for target in _relative_links(source):
        file_part, _, anchor = target.partition("#")
        dest = (source.parent / unquote(file_part)).resolve() if file_part else source
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and unquote(anchor) not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not broken, f"broken links in {source.relative_to(REPO)}:\n" + "\n".join(broken)


def test_anchor_rule_matches_github() -> None:
    """The anchors the link check relies on, worked out by hand from GitHub's rule."""
    anchors = _anchors(REPO / "docs" / "make-explain.md") | _anchors(REPO / "docs" / "n2g.md")
    assert {"what-make-explain-costs", "neuron-to-graph-n2g"} <= anchors
    assert "n2g-graphs-issue-neuron-to-graph" in _anchors(REPO / "BENCHMARKS.md")
