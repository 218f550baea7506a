"""Shared CLI plumbing: settings from flags, JSON output, error reporting."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder for the embedded database and keys (BROKER_DATA_DIR)."),
]


def configure(data_dir: Path | None = None, **overrides: Any) -> None:
    """Apply CLI flags on top of the environment (imports the server stack lazily)."""
    from broker import config, db

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    if values:
        base = config.Settings().model_dump()
        base.update(values)
        config.configure(**base)
        db.reset_engine()


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
