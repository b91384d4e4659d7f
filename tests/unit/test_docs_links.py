"""Every relative link in the project's documentation leads somewhere: the file exists, and an
``#anchor`` into a markdown file names one of its headings (GitHub's slugs)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the target may be <bracketed> and followed by a title.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[^)]*)?\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documentation_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "bench" / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    files += sorted((ROOT / "deploy").glob("**/README.md"))
    return [path for path in files if path.is_file()]


def _outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        opened = FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
            continue
        lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text, lower-cased, without punctuation
    other than hyphens and underscores, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    kept = []
    for char in text.lower():
        category = unicodedata.category(char)
        if category[0] in "LMN" or category == "Pc" or char in " -":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: heading slugs (repeats get -1, -2 …) and HTML
    anchors."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    text = path.read_text(encoding="utf-8")
    for _, line in _outside_fences(text):
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            seen = counts.get(slug, 0)
            counts[slug] = seen + 1
            found.add(slug if seen == 0 else f"{slug}-{seen}")
    found.update(HTML_ANCHOR.findall(text))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in the file's prose."""
    found: list[tuple[int, str]] = []
    for number, raw in _outside_fences(path.read_text(encoding="utf-8")):
        line = CODE_SPAN.sub("", raw)  # a link written inside `code` is an example, not a link
        for match in INLINE_LINK.finditer(line):
            found.append((number, match.group(1).strip("<>")))
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append((number, definition.group(1).strip("<>")))
    return found


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of one file, one line per broken link."""
    problems: list[str] = []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for number, target in links(path):
        if EXTERNAL.match(target) or target.startswith("//"):
            continue  # http(s), mailto …: not ours to check offline
        file_part, _, anchor = target.partition("#")
        destination = path if not file_part else (path.parent / file_part).resolve()
        if not destination.exists():
            problems.append(f"{shown}:{number}: {target} → no such file or folder")
            continue
        is_page = destination.suffix == ".md" and destination.is_file()
        if anchor and is_page and anchor not in anchors(destination):
            problems.append(f"{shown}:{number}: {target} → no heading #{anchor} there")
    return problems


@pytest.mark.parametrize(
    "path", documentation_files(), ids=lambda path: str(path.relative_to(ROOT))
)
def test_relative_links_resolve(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "broken links:\n  " + "\n  ".join(problems)


def test_the_documentation_set_is_found() -> None:
    names = {str(path.relative_to(ROOT)) for path in documentation_files()}
    expected = {"README.md", "docs/configuration.md", "docs/api.md", "docs/providers.md"}
    assert expected <= names, f"expected {sorted(expected - names)} among {sorted(names)}"


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Fail-closed: 503, 502 and 409", "fail-closed-503-502-and-409"),
        ("Kamailio + rtpengine", "kamailio--rtpengine"),
        ("Metrics (`GET /metrics`)", "metrics-get-metrics"),
        (
            "Card data: what is scrubbed, what is refused",
            "card-data-what-is-scrubbed-what-is-refused",
        ),
        ("[Linked](x.md) heading_with_underscore", "linked-heading_with_underscore"),
        ("Asterisk (ARI)", "asterisk-ari"),
    ],
)
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_a_broken_link_and_a_missing_anchor_are_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Real heading\n\n## Twice\n\n## Twice\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "See [ok](other.md#real-heading), [repeat](other.md#twice-1), [self](#top).\n"
        "# Top\n"
        "[gone](missing.md) and [wrong](other.md#no-such-heading).\n"
        "```\n[in code](not-checked.md)\n```\n"
        "`[in a span](not-checked-either.md)` and [web](https://example.org/x).\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2, problems
    assert "missing.md → no such file" in problems[0]
    assert "other.md#no-such-heading → no heading #no-such-heading" in problems[1]
