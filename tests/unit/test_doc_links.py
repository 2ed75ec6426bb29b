"""Every relative link in the repository's Markdown resolves, and no document points outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_SKIPPED_DIRS = {".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}
# [text](target) and [text](target "title"); images too.
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = ("http://", "https://", "mailto:")


def markdown_files() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*.md")
        if not _SKIPPED_DIRS.intersection(path.relative_to(REPO).parts)
    )


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {_slug(line.lstrip("#")) for line in lines if re.match(r"#{1,6} ", line)}


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [t for t in _LINK.findall(text) if not t.startswith(_EXTERNAL)]


def test_the_documents_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in markdown_files()}
    assert {"README.md", "docs/protocol.md", "docs/telephony-clients.md"} <= names


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves_inside_the_repository(path: Path) -> None:
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        assert resolved.is_relative_to(REPO), f"{link} in {path.name} leaves the repository"
        assert resolved.exists(), f"{link} in {path.name} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{link} in {path.name}: no such heading"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_document_sends_readers_to_files_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for outside in ("../shared/", "PROTOCOLS.md", "DESIGN.md"):
        assert outside not in text, f"{path.name} names {outside}, which is not in the repository"


def test_the_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [gone](missing.md) [web](https://example.org)\n")
    assert relative_links(page) == ["#top", "missing.md"]
    assert anchors(page) == {"top"}
    assert not (tmp_path / "missing.md").exists()


def _codes(path: Path) -> set[str]:
    """The error codes of a document's refusal table (rows: `| ... | `code` | close ...`)."""
    rows = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    return {match for row in rows for match in re.findall(r"\| `([a-z_]+)` \| 10\d\d", row)}


def test_the_client_guide_tells_what_to_do_for_every_refusal_the_readme_lists() -> None:
    readme = _codes(REPO / "README.md")
    assert "inference_overloaded" in readme  # the table was found
    assert readme <= _codes(REPO / "docs" / "telephony-clients.md")
