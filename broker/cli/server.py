"""Server commands: serve, worker, beat, migrate, demo."""

from __future__ import annotations

from typing import Annotated

import typer

from broker.cli.common import DataDir, configure, database_errors, fail


def migrate(
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Option(help="Target revision")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to the revision instead")] = False,
) -> None:
    """Apply database migrations (or roll back with --down)."""
    configure(data_dir)
    from alembic.util import CommandError

    from broker import db, migrations_check

    with database_errors():
        try:
            if down:
                migrations_check.downgrade(revision)
            else:
                migrations_check.upgrade(revision)
        except CommandError as exc:
            fail(f"--revision {revision}: {exc}: give a revision id, `head` or `base`")
        typer.echo(f"database at revision {db.run(migrations_check.current)}")


def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Bind address")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the API. The embedded profile migrates its SQLite file first."""
    configure(data_dir, host=host, port=port)
    import uvicorn

    from broker import migrations_check
    from broker.config import Profile, settings

    cfg = settings()
    if cfg.profile is Profile.embedded:
        with database_errors():
            migrations_check.upgrade()
    typer.echo(f"serving on http://{cfg.host}:{cfg.port} (API docs at /docs)")
    uvicorn.run(
        "broker.main:create_app",
        factory=True,
        host=cfg.host,
        port=cfg.port,
        workers=workers,
        log_config=None,
        access_log=False,
        **cfg.uvicorn_proxy,  # type: ignore[arg-type]
    )


def worker(
    concurrency: Annotated[int, typer.Option(help="Worker processes")] = 2,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
    queues: Annotated[
        str | None,
        typer.Option(help="Only these queues, comma-separated: delivery, celery (default: both)"),
    ] = None,
) -> None:
    """Run a Celery worker (production profile)."""
    from broker.workers.celery_app import WORKER_ARGS, celery_app

    only = [f"--queues={queues}"] if queues else []
    celery_app.worker_main(
        ["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", *WORKER_ARGS, *only]
    )


def beat(
    schedule: Annotated[str, typer.Option(help="Beat schedule file")] = "celerybeat-schedule",
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run Celery beat: exactly one per deployment."""
    from broker.workers.celery_app import celery_app

    celery_app.start(["beat", f"--schedule={schedule}", f"--loglevel={loglevel}"])


def demo(
    data_dir: DataDir = None,
    port: Annotated[int, typer.Option(help="Port to serve on")] = 8000,
    exit_after: Annotated[bool, typer.Option("--exit", help="End after the scenario")] = False,
) -> None:
    """Create the demo world on the embedded default, print it, then keep serving."""
    import os

    # The narrated scenario is the output; the server's request log would drown it.
    configure(data_dir, port=port, log_level=os.environ.get("BROKER_LOG_LEVEL", "WARNING"))
    from broker import demo as scenario
    from broker import migrations_check

    with database_errors():
        migrations_check.upgrade()
    try:
        scenario.run(port=port, keep_serving=not exit_after)
    except scenario.NotServing as exc:
        fail(f"{exc}: pass --port with a free port")
