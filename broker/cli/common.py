"""Shared CLI plumbing: settings from flags, JSON output, and mistakes told in one line.

A mistake (a bad option, an unreadable file, a database that is not there or not migrated)
ends in one `error: ...` line that names the option or setting and the fix, never a
traceback. A refusal by the broker itself is its problem document (code and detail), exit 2.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Concatenate, NoReturn, ParamSpec, TypeVar

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy.ext.asyncio import AsyncSession
    from typer._click import Context

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound="BaseModel")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder for the embedded database and keys (BROKER_DATA_DIR)."),
]


def configure(data_dir: Path | None = None, **overrides: Any) -> None:
    """Apply CLI flags on top of the environment (imports the server stack lazily)."""
    from pydantic import ValidationError

    from broker import config, db

    values = {k: v for k, v in overrides.items() if v is not None}
    if data_dir is not None:
        values["data_dir"] = data_dir
    try:
        base = config.Settings().model_dump()
    except ValidationError as exc:
        e = exc.errors()[0]
        name = "BROKER_" + str(e["loc"][0]).upper() if e["loc"] else "a BROKER_ setting"
        fail(f"{name} is not valid ({e['msg']}): fix it in the environment")
    if values:
        base.update(values)
        config.configure(**base)
        db.reset_engine()


# Import names of the `server` extra (pyproject.toml): the agency side installs without them.
SERVER_PACKAGES = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "pydantic_settings",
        "sqlalchemy",
        "greenlet",
        "alembic",
        "asyncpg",
        "aiosqlite",
        "celery",
        "kombu",
        "redis",
        "packaging",
        "structlog",
        "prometheus_client",
        "jinja2",
        "multipart",
        "python_multipart",
        "limits",
    }
)
SERVER_INSTALL = "pip install 'exchange-broker[server]'"


class Group(TyperGroup):
    """The command group: a server command run where only the agency side is installed ends in
    one line saying what to install, not in an import traceback."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in SERVER_PACKAGES:
                raise
            command = " ".join(["broker", *filter(None, [ctx.invoked_subcommand])])
            fail(
                f"`{command}` runs or administers the broker service, which needs the server's "
                f"packages ({exc.name} is not installed): {SERVER_INSTALL}",
                2,
            )


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_json(path: Path, what: str) -> Any:
    """A JSON file given as `what` (an argument or option name), or one line saying what is wrong."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{what}: cannot read {path} ({exc.strerror}): give a readable file")
    except ValueError as exc:
        fail(f"{what}: {path} is not JSON ({exc}): fix the file")


def parse_json(text: str, what: str) -> Any:
    """JSON given inline as `what`, or one line saying what is wrong."""
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f'{what} is not JSON ({exc}): quote it, e.g. \'{{"key": "value"}}\'')


def validated(model: type[M], data: Mapping[str, Any], options: Mapping[str, str]) -> M:
    """`model` from the command's values; an invalid one names its option (`options`: field ->)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = str(e["loc"][0]) if e["loc"] else ""
        name = options.get(field, f"--{field.replace('_', '-')}" if field else "the input")
        fail(f"{name} is not valid: {e['msg']}")


@contextmanager
def database_errors() -> Iterator[None]:
    """A database that cannot be reached or is not migrated: one line with the fix."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from broker.migrations_check import NotMigrated

    try:
        yield
    except NotMigrated as exc:
        fail(str(exc))
    # OSError: the SQLite file's folder cannot be made (failed connects are OperationalErrors).
    except (OperationalError, InterfaceError, OSError) as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        fail(
            f"cannot open the database ({type(exc).__name__}: {lines[0] if lines else ''}): "
            "start it, or check --data-dir and BROKER_DATABASE_URL"
        )


def require_database() -> None:
    """Reach the configured database and check its schema, or end with one line and the fix."""
    from broker import db, migrations_check

    with database_errors():
        db.run(migrations_check.require_current)


def call(
    data_dir: Path | None,
    fn: Callable[Concatenate[AsyncSession, P], Awaitable[T]],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """`fn(session, ...)` in one transaction on the migrated database (`db.call`).

    The broker's refusals are printed as their problem document (exit 2).
    """
    configure(data_dir)
    from broker import db
    from broker.errors import BrokerError

    require_database()
    try:
        return db.call(fn, *args, **kwargs)
    except BrokerError as exc:
        problem = exc.problem(instance=None, request_id=None).model_dump(exclude_none=True)
        typer.echo(json.dumps(problem, indent=2), err=True)
        raise typer.Exit(2) from exc
