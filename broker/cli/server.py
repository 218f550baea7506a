"""Server commands: serve, worker, beat, migrate, demo."""

from __future__ import annotations

import os
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
    host: Annotated[str | None, typer.Option(help="Bind address (BROKER_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0: any free port (BROKER_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Reverse proxies whose X-Forwarded-For/-Proto to believe: comma-separated "
            "addresses or CIDRs, '' for none (overrides BROKER_TRUSTED_PROXIES)",
        ),
    ] = None,
) -> None:
    """Serve the API. The embedded profile migrates its SQLite file first."""
    from broker.config import proxy_list

    if forwarded_allow_ips is not None:
        try:
            proxy_list(forwarded_allow_ips)
        except ValueError as exc:
            fail(
                f"--forwarded-allow-ips: {exc}: give your proxies' addresses or CIDRs, "
                "comma-separated (e.g. 10.0.0.5,10.1.0.0/16), or '' for none",
                2,
            )
    if workers < 1:
        fail(f"--workers {workers}: give 1 or more", 2)
    configure(data_dir, host=host, port=port, trusted_proxies=forwarded_allow_ips)
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from broker import migrations_check, serving
    from broker.config import Profile, settings

    cfg = settings()
    # Bound before anything else, so that a port in use is told at once and "serving on" is
    # printed only for an address that is ours (broker/serving.py).
    try:
        sock = serving.listen(cfg.host, cfg.port)
    except serving.CannotListen as exc:
        fail(str(exc), 2)
    with sock:
        if cfg.profile is Profile.embedded:
            with database_errors():
                migrations_check.upgrade()
        _require_keys()
        config = uvicorn.Config(
            "broker.main:create_app",
            factory=True,
            host=cfg.host,
            port=sock.getsockname()[1],
            workers=workers,
            log_config=None,
            access_log=False,
            **cfg.uvicorn_proxy,  # type: ignore[arg-type]
        )
        server = uvicorn.Server(config)
        if workers > 1:
            # uvicorn spawns its workers, which read their settings from the environment,
            # not from this process's overrides: pass on the options that reach the app.
            os.environ["BROKER_DATA_DIR"] = str(cfg.data_dir.resolve())
        where = serving.address(cfg.host, config.port)
        typer.echo(f"serving on http://{where} (API docs at /docs)")
        try:
            if workers > 1:
                Multiprocess(config, sockets=[sock]).run()
            else:
                server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass
    if workers == 1 and not server.started:
        raise typer.Exit(3)  # the application did not start (uvicorn's STARTUP_FAILURE); logged


def _require_keys() -> None:
    """Load (or make, once) the broker's keys, or end with one line: the workers would only
    fail their start-up one by one, in a traceback each."""
    from broker import keyring
    from broker.crypto.errors import InvalidKey

    try:
        keyring.load_or_create()
    except (keyring.KeyringError, InvalidKey, OSError) as exc:
        fail(f"broker keys: {exc}: check --data-dir, BROKER_KEYS_DIR and BROKER_KEY_PASSPHRASE")


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

    _require_keys()  # before forking: the pool's processes then load what exists
    only = [f"--queues={queues}"] if queues else []
    celery_app.worker_main(
        ["worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}", *WORKER_ARGS, *only]
    )


# Beat answers `celery inspect ping -d celerybeat@<host>` (the compose health check) until its
# scheduler has not ticked for twice the longest sleep: MAX_INTERVAL_S keeps that at a minute.
BEAT_MAX_INTERVAL_S = 30


def beat(
    schedule: Annotated[str, typer.Option(help="Beat schedule file")] = "celerybeat-schedule",
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run Celery beat: exactly one per deployment."""
    from broker.workers.celery_app import celery_app

    celery_app.start(
        [
            "beat",
            f"--schedule={schedule}",
            f"--loglevel={loglevel}",
            f"--max-interval={BEAT_MAX_INTERVAL_S}",
            "--enable-remote-control",
        ]
    )


demo_app = typer.Typer()


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    data_dir: DataDir = None,
    port: Annotated[int, typer.Option(help="Port to serve on")] = 8000,
    exit_after: Annotated[bool, typer.Option("--exit", help="End after the scenario")] = False,
) -> None:
    """Play the demo exchange on the embedded default, step by step, then keep serving.

    `broker demo env --as ROLE` then prints a role's environment for its guide.
    """
    if ctx.invoked_subcommand is not None:
        return
    import gc
    import os
    import time

    started = time.monotonic()
    typer.echo("Exchange broker demo: starting the broker (embedded default)…")
    # The start-up builds some 300,000 objects that live as long as the process: the cyclic
    # collector's passes over them while they are imported are wasted, as the server collects
    # once and freezes them when it starts (broker/runtime.py). `scenario.run` turns it back on.
    gc.disable()
    # The narrated scenario is the output; the server's request log would drown it.
    configure(data_dir, port=port, log_level=os.environ.get("BROKER_LOG_LEVEL", "WARNING"))
    from broker import demo as scenario
    from broker import migrations_check
    from broker.config import settings

    progress = scenario.Progress(started)
    with database_errors():
        migrations_check.upgrade()
    progress.done(f"database ready in {settings().data_dir.resolve()}")
    try:
        scenario.run(port=port, keep_serving=not exit_after, progress=progress)
    except scenario.NotServing as exc:
        fail(f"{exc}: pass --port with a free port")


@demo_app.command("env")
def demo_env(
    ctx: typer.Context,
    role: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Whose environment: focal_point, agency, auditor or admin.",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Print `export` lines for a role's guide from the demo's credentials (`eval` them)."""
    from broker import demo as scenario

    if role is None:
        choices = ", ".join(scenario.GUIDE_ROLES)
        fail(f"--as is missing: give the role whose environment to print ({choices})", 2)
    try:
        key = scenario.role_named(role)
    except scenario.DemoEnvError as exc:
        fail(str(exc), 2)
    # `broker demo --data-dir DIR env` works too; without either, the settings' (the default).
    folder = data_dir or (ctx.parent.params.get("data_dir") if ctx.parent else None)
    if folder is None:
        configure()
        from broker.config import settings

        folder = settings().data_dir
    try:
        typer.echo(scenario.environment(folder.resolve(), key))
    except scenario.DemoEnvError as exc:
        fail(str(exc))
