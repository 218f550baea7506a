"""README.md and docs/*.md link only inside the repository: every markdown link and every
backticked relative path names a file or folder of the repository (issue 16, point 6)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Paths the guides name that a program creates at run time, not files of the repository.
RUNTIME = (
    "data/",  # broker demo / serve: database, keys, demo credentials
    "keys/",  # the git-ignored development keystore (keys/README.md is checked)
    "~/.broker/",  # the auditor's pinned checkpoint
    "sent/",  # broker send: the receipts
    "inbox/",  # broker inbox pull: cursor and evidence
    "fuzz/findings/",  # the long fuzzing run's findings
    "fuzz/corpus/",
    "bench/.peer-venv",  # the load suite's peer venv (git-ignored)
)
# Schema file names are given as the schemas' own `$ref`s give them, from this folder.
SCHEMAS = ROOT / "broker" / "schemas" / "v1"

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", flags=re.S | re.M)
LINK = re.compile(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", flags=re.M)
SPAN = re.compile(r"`([^`\n]+)`")
# A relative path: segments of file-name characters (placeholders such as <mid> and an
# ellipsis allowed), at least one slash, optionally a pytest node id after `::`.
PATHLIKE = re.compile(r"(\.{1,2}/)?[\w.~<>…*+-]+(/[\w.<>…*+-]*)+(::[\w\[\]-]+)*")
TOP = {p.name for p in ROOT.iterdir()} - {".git", ".venv"}


def prose(page: Path) -> str:
    """The page without its fenced code blocks (commands, not references)."""
    return FENCE.sub("", page.read_text())


def links(page: Path) -> list[str]:
    text = prose(page)
    return LINK.findall(text) + REFERENCE.findall(text)


def is_path(span: str) -> bool:
    """Whether a code span is meant as a path of the repository: it starts at the top of the
    repository or with ./ or ../, or it names a file (an extension); not a media type, an
    address, an API route or a placeholder such as `A/…`."""
    if not PATHLIKE.fullmatch(span) or span.startswith("/"):
        return False
    first, last = span.split("/")[0], span.split("::")[0].rstrip("/").split("/")[-1]
    return first in TOP or first in (".", "..", "~") or re.search(r"\.\w+$", last) is not None


def exists_inside(base: Path, relative: str) -> bool:
    """`relative` from `base` is a file or folder of the repository (placeholders match any)."""
    target = (base / relative).resolve()
    if not target.is_relative_to(ROOT):
        return False
    if "<" in relative or "…" in relative or "*" in relative:
        pattern = re.sub(r"<[^>]*>|…", "*", relative).rstrip("/")
        return any(p.resolve().is_relative_to(ROOT) for p in base.glob(pattern))
    return target.exists()


def dangling(page: Path, target: str) -> str | None:
    """Why `target` (a link of `page`) does not resolve inside the repository, or None."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:
        return None if target.startswith(("https://", "http://", "mailto:")) else "scheme"
    path = target.split("#")[0]
    if not path:  # an anchor in the page itself
        return None
    return None if exists_inside(page.parent, path) else "not a file or folder of the repository"


def test_every_link_stays_in_the_repository() -> None:
    bad = [
        f"{page.relative_to(ROOT)}: ({target}) {why}"
        for page in PAGES
        for target in links(page)
        if (why := dangling(page, target))
    ]
    assert not bad, "\n".join(bad)


def test_every_backticked_path_is_in_the_repository() -> None:
    bad = []
    for page in PAGES:
        for span in SPAN.findall(prose(page)):
            if not is_path(span):
                continue
            path, _, node = span.partition("::")
            if path.startswith(RUNTIME) and not exists_inside(ROOT, path):
                continue
            found = exists_inside(ROOT, path) or exists_inside(page.parent, path)
            found = found or (path.endswith(".json") and exists_inside(SCHEMAS, path))
            if not found:
                bad.append(f"{page.relative_to(ROOT)}: `{span}` is not in the repository")
            elif node and f"def {node.split('::')[-1].split('[')[0]}(" not in (
                (ROOT / path).read_text()
            ):
                bad.append(f"{page.relative_to(ROOT)}: `{span}`: no such test")
    assert not bad, "\n".join(bad)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose(page), flags=re.M)}


def test_every_anchor_names_a_heading() -> None:
    bad = []
    for page in PAGES:
        for target in links(page):
            path, _, anchor = target.partition("#")
            if not anchor or re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):
                continue
            linked = (page.parent / path).resolve() if path else page
            if linked.suffix == ".md" and anchor not in anchors(linked):
                bad.append(f"{page.relative_to(ROOT)}: ({target})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("span", "meant"),
    [
        ("broker/db.py", True),
        ("../shared/design/STYLE.md", True),
        ("research/reliability-security.md", True),
        ("tests/foundation/test_errors.py::test_x", True),
        ("bench/results/submit-<time>.json", True),
        ("application/problem+json", False),
        ("golang.org/x/mod/sumdb/note", False),
        ("/v1/messages/{mid}", False),
        ("100.64.0.0/10", False),
        ("A/…", False),
        ("postgresql+psycopg://postgres@127.0.0.1:5432/test", False),
    ],
)
def test_what_counts_as_a_path(span: str, meant: bool) -> None:
    assert is_path(span) is meant


def test_a_path_outside_the_repository_is_caught(tmp_path: Path) -> None:
    page = ROOT / "docs" / "code.md"
    assert dangling(page, "../../shared/design/STYLE.md") is not None
    assert dangling(page, "performance.md#delivery") is None
    assert not exists_inside(ROOT, "../shared/vectors/")
    assert exists_inside(ROOT, "bench/results/load-…")
