"""Command start-up (issue 16): what a command imports, not how long it takes (the timings are
`bench/startup_bench.py`'s, on a quiet machine)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Imported by `broker --help` only through a mistake: the server stack, the audit verifier, the
# schema validator and the HTTP and crypto libraries that only some commands need.
HEAVY = (
    "sqlalchemy",
    "fastapi",
    "uvicorn",
    "celery",
    "alembic",
    "jsonschema",
    "httpx2",
    "cryptography",
    "broker.audit",
    "broker.db",
    "broker.crypto",
    "broker.schemas.validation",  # the vocabulary (choices of options) is light
)


def imported_by(code: str) -> list[str]:
    """Modules in sys.modules after `code` runs in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


@pytest.mark.parametrize("args", [["--help"], ["send", "--help"], ["keys", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    code = (
        "from broker.cli.main import app\n"
        "try:\n"
        f"    app({args!r}, prog_name='broker')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code"
    )
    assert heavy(imported_by(code)) == []


def test_the_schemas_build_no_grammar_at_import() -> None:
    """jsonschema's rfc3987-syntax backend (iri formats, unused) builds Lark grammars on import."""
    modules = imported_by("from broker import schemas\nschemas.validator('routing')")
    assert [m for m in modules if m.split(".")[0] in ("rfc3987_syntax", "lark")] == []


def test_every_format_the_schemas_use_is_checked() -> None:
    """Formats are chosen by name: one without a checker would pass anything (jsonschema skips
    a format it cannot check), so every one the schemas name must have one."""
    from broker.schemas.validation import FORMAT_CHECKER

    used = {
        match
        for path in (ROOT / "broker" / "schemas").rglob("*.json")
        for match in re.findall(r'"format"\s*:\s*"([^"]+)"', path.read_text())
    }
    assert used
    assert sorted(used - set(FORMAT_CHECKER.checkers)) == []


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date", "2026-12-07", "2026-02-30"),
        ("date-time", "2026-12-07T09:30:00Z", "2026-12-07T25:30:00Z"),
        ("duration", "P7D", "P7X"),
        ("uri", "https://example.org/a?b=c", "https://exa mple.org/"),
        ("uuid", "01a24f3f-f77c-70d4-a996-290c7dcb7f75", "01a24f3f-f77c-70d4-a996"),
    ],
)
def test_the_standard_formats_are_asserted(fmt: str, good: str, bad: str) -> None:
    from broker.schemas.validation import FORMAT_CHECKER

    assert FORMAT_CHECKER.conforms(good, fmt)
    assert not FORMAT_CHECKER.conforms(bad, fmt)
