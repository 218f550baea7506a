"""How the agency commands print results: an aligned table for people, JSON for scripts.

A command prints a table when its output is a terminal and JSON when it is piped or redirected
(`broker send ... | jq -r .mid` works as it always has); `--json` or `--table` chooses either
way. Times in tables are ISO 8601 UTC (`2026-12-07T14:15:15Z`), never epoch numbers; the JSON
is the broker's own data, unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

import typer

from broker.cli.common import print_json

AS_JSON = Annotated[
    bool | None,
    typer.Option(
        "--json/--table",
        help="Print JSON (for scripts) or a table (for people); "
        "default: a table on a terminal, JSON when the output is piped",
        show_default=False,
    ),
]

Columns = Sequence[tuple[str, str]]  # (key in the row, header)


def wants_json(flag: bool | None) -> bool:
    """The `--json/--table` choice, or JSON unless stdout is a terminal."""
    if flag is not None:
        return flag
    return not sys.stdout.isatty()


def iso(value: Any) -> str | None:
    """An epoch (seconds, or milliseconds when that large) or an RFC 3339 string as ISO UTC."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 10**11 else value
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    elif isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:  # a date, or a naive time: shown as given
            return value
    elif isinstance(value, dt.datetime):
        moment = value
    else:
        return str(value)
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def cell(value: Any) -> str:
    """One value as table text: lists joined, booleans yes/blank, nothing as blank."""
    if value is None or value is False:
        return ""
    if value is True:
        return "yes"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def table(rows: Iterable[Mapping[str, Any]], columns: Columns) -> None:
    """Aligned columns, never cut or folded (ids are copied from them): a line longer than
    the terminal wraps as a whole, as `ls -l` does."""
    lines = [tuple(h for _, h in columns)] + [
        tuple(cell(r.get(k)) for k, _ in columns) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """`name  value` lines for one record; empty values left out."""
    shown = [(k, cell(v)) for k, v in pairs if cell(v)]
    width = max((len(k) for k, _ in shown), default=0)
    for key, text in shown:
        typer.echo(f"{key.ljust(width)}  {text}")


def emit(value: Any, as_json: bool | None, render: Callable[[], None]) -> None:
    """`value` as JSON, or `render()` for people."""
    if wants_json(as_json):
        print_json(value)
    else:
        render()


def json_line(value: Any) -> None:
    """One compact JSON document per line (a stream a script reads line by line)."""
    typer.echo(json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":")))
