"""docker-compose.yml: valid against the compose-spec schema, and every command it runs exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer
import yaml

from broker.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def test_compose_file_is_valid_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_run_real_cli_commands() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"db", "redis", "migrate", "api", "worker", "beat"} <= set(services)
    assert services["beat"]["deploy"]["replicas"] == 1
    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    for name in ("migrate", "api", "worker", "worker-log", "beat"):
        argv = services[name]["command"]
        assert argv[0] == "broker", name
        command = group.commands[argv[1]]
        ctx = command.make_context(argv[1], list(argv[2:]), resilient_parsing=False)
        assert ctx.params is not None, name
    for name, service in services.items():
        assert "healthcheck" in service or name in ("migrate", "beat"), f"{name} has no healthcheck"
    # Every queue has a worker, and deliveries one of their own.
    from broker.workers.celery_app import DEFAULT_QUEUE, DELIVERY_QUEUE

    consumed = [s["command"][s["command"].index("--queues") + 1] for s in services.values()
                if "--queues" in s.get("command", [])]  # fmt: skip
    assert sorted(consumed) == sorted([DELIVERY_QUEUE, DEFAULT_QUEUE])
