"""Shared CLI plumbing: settings from flags, JSON output, and mistakes told in one line.

Every error ends in one `error: ...` line that names the option or setting, the problem and the
fix, never a traceback. Exit 2 (`USAGE`): the command was called wrongly (a bad option value, an
unreadable file, no token, no passphrase, no key). Exit 1 (`REFUSED`): the broker refused (its
problem's `code: detail`), a check failed, or something could not be reached. `broker --verbose`
adds the details (the whole problem document, the traceback of an unexpected exception).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Concatenate,
    Final,
    NoReturn,
    ParamSpec,
    TypeVar,
)

import typer
from typer._click.exceptions import NoArgsIsHelpError, NoSuchOption, UsageError
from typer.core import TyperGroup
from typer.exceptions import TyperException

if TYPE_CHECKING:
    from pydantic import BaseModel
    from sqlalchemy.ext.asyncio import AsyncSession
    from typer._click import Context

T = TypeVar("T")
P = ParamSpec("P")
M = TypeVar("M", bound="BaseModel")

USAGE: Final = 2  # the command was called wrongly: fix the option, file, token or key
REFUSED: Final = 1  # the broker refused, a check failed, or the broker could not be reached


class _Flags:
    verbose = False  # set by the root callback (`broker --verbose`) for each invocation
    details: str | None = None  # what `fail` shows first with --verbose (`failure_details`)


def set_verbose(on: bool) -> None:
    _Flags.verbose = on


def verbose() -> bool:
    """Whether errors show their details (`broker --verbose`)."""
    return _Flags.verbose


@contextmanager
def failure_details(text: str | None) -> Iterator[None]:
    """A `fail` inside shows `text` (e.g. the traceback of the exception it explains) before
    its line, with --verbose."""
    previous, _Flags.details = _Flags.details, text
    try:
        yield
    finally:
        _Flags.details = previous


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
        fail(f"{name} is not valid ({e['msg']}): fix it in the environment", USAGE)
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
    one line saying what to install, not in an import traceback; any other unexpected exception
    ends in one line too (with `--verbose`, in its traceback)."""

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
                USAGE,
            )
        except NoArgsIsHelpError:
            raise  # `broker keys` alone: the help
        except UsageError as exc:  # a bad option value, a missing option: one line, not a panel
            if exc.ctx is None:
                raise
            if isinstance(exc, NoSuchOption) and exc.option_name in ("--verbose", "-v"):
                path = exc.ctx.command_path.split(" ", 1)
                fail(f"{exc.option_name} goes before the command: `{' -v '.join(path)} ...`", USAGE)
            fail(f"{usage_line(exc.format_message())}: see `{exc.ctx.command_path} --help`", USAGE)
        # Click's own (exit, abort, its other errors) pass: they end the run as click says.
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as exc:
            if verbose():
                raise
            fail(f"unexpected {describe(exc)} (run with --verbose for details)", REFUSED)


def usage_line(message: str) -> str:
    """Click's message in one line; for a value not among the choices, the likely one."""
    import difflib
    import re

    line = " ".join(message.split()).rstrip(".")
    if m := re.search(r"'([^']*)' is not one of ((?:'[^']*'(?:, )?)+)", line):
        choices = {c.lower(): c for c in re.findall(r"'([^']*)'", m[2])}
        if close := difflib.get_close_matches(m[1].lower(), list(choices), n=1, cutoff=0.5):
            line += f", did you mean {choices[close[0]]}?"
    return line


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for one line."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:300] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def fail(message: str, code: int = REFUSED, *, details: str | None = None) -> NoReturn:
    """End the command with one `error: message` line (after `details` with `--verbose`)."""
    details = details or _Flags.details
    if details and verbose():
        typer.echo(details, err=True)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def problem_line(problem: Mapping[str, Any]) -> str:
    """A problem document (RFC 9457) in one line: `code: detail`, and its field errors."""
    line = f"{problem.get('code') or 'http.' + str(problem.get('status', '?'))}: "
    line += str(problem.get("detail") or problem.get("title") or "").strip()
    fields = [
        f"{e.get('pointer') or '/'}: {e.get('detail')}"
        for e in problem.get("errors") or []
        if isinstance(e, Mapping)
    ]
    return line + (f" ({'; '.join(fields)})" if fields else "")


def fail_problem(problem: Mapping[str, Any], fix: str | None = None) -> NoReturn:
    """End with the broker's refusal in one line (exit 1); `--verbose` prints the whole document."""
    line = problem_line(problem)
    fail(f"{line}: {fix}" if fix else line, REFUSED, details=json.dumps(problem, indent=2))


def read_json(path: Path, what: str) -> Any:
    """A JSON file given as `what` (an argument or option name), or one line saying what is wrong."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{what}: cannot read {path} ({exc.strerror}): give a readable file", USAGE)
    except ValueError as exc:
        fail(f"{what}: {path} is not JSON ({exc}): fix the file", USAGE)


def parse_json(text: str, what: str) -> Any:
    """JSON given inline as `what`, or one line saying what is wrong."""
    try:
        return json.loads(text)
    except ValueError as exc:
        fail(f'{what} is not JSON ({exc}): quote it, e.g. \'{{"key": "value"}}\'', USAGE)


def validated(model: type[M], data: Mapping[str, Any], options: Mapping[str, str]) -> M:
    """`model` from the command's values; an invalid one names its option (`options`: field ->)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        field = str(e["loc"][0]) if e["loc"] else ""
        name = options.get(field, f"--{field.replace('_', '-')}" if field else "the input")
        fail(f"{name} is not valid: {e['msg']}", USAGE)


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

    The broker's refusals end in one `code: detail` line (exit 1; `--verbose`: the document).
    """
    configure(data_dir)
    from broker import db
    from broker.errors import BrokerError

    require_database()
    try:
        return db.call(fn, *args, **kwargs)
    except BrokerError as exc:
        fail_problem(exc.problem(instance=None, request_id=None).model_dump(exclude_none=True))
