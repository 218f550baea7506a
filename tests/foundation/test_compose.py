"""docker-compose.yml and the Dockerfile: valid against the compose-spec schema, every command
they run exists, images are pinned, every service is health-checked, and the image creates and
owns what the broker's services mount. Docker is not needed: all of it is read statically."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from broker.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
BROKER_IMAGE = "exchange-broker:"
# What an exact version is, per image: PostgreSQL's are major.minor (since 10), the others'
# major.minor.patch; a variant (-bookworm) and a digest may follow. Never `latest`, `15` or `7`.
VERSIONS = {"postgres": r"\d+\.\d+", "redis": r"\d+\.\d+\.\d+", "python": r"\d+\.\d+\.\d+"}


def pinned(image: str) -> bool:
    """Whether `image` names one exact version of an image whose version scheme is known."""
    name, _, tag = image.partition(":")
    scheme = VERSIONS.get(name)
    variant_and_digest = r"(-[a-z0-9.-]+)?(@sha256:[0-9a-f]{64})?"
    return scheme is not None and re.fullmatch(scheme + variant_and_digest, tag) is not None


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
        assert "healthcheck" in service, f"{name} has no healthcheck"
    # Every queue has a worker, and deliveries one of their own.
    from broker.workers.celery_app import DEFAULT_QUEUE, DELIVERY_QUEUE

    consumed = [s["command"][s["command"].index("--queues") + 1] for s in services.values()
                if "--queues" in s.get("command", [])]  # fmt: skip
    assert sorted(consumed) == sorted([DELIVERY_QUEUE, DEFAULT_QUEUE])


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _broker_services() -> dict[str, Any]:
    """The services that run the image built from the Dockerfile."""
    return {k: v for k, v in _services().items() if v["image"].startswith(BROKER_IMAGE)}


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (keyword, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _owned_folders(user: str) -> set[str]:
    """Folders the Dockerfile's RUN commands create owned by `user` (`install -d -o user`, or
    `mkdir` then `chown user`)."""
    made: set[str] = set()
    chowned: set[str] = set()
    for keyword, args in _instructions():
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            argv = shlex.split(command)
            if not argv:
                continue
            paths = [a for a in argv[1:] if a.startswith("/")]
            if argv[0] == "install" and "-d" in argv and argv[argv.index("-o") + 1] == user:
                made.update(paths)
                chowned.update(paths)
            elif argv[0] == "mkdir":
                made.update(paths)
            elif argv[0] == "chown" and argv[-len(paths) - 1].split(":")[0] == user:
                chowned.update(paths)
    return made & chowned


def test_images_are_exact_versions() -> None:
    for name, service in _services().items():
        image = service["image"]
        if image.startswith(BROKER_IMAGE):
            assert "build" in service, f"{name} runs the broker's image without building it"
            continue
        assert pinned(image), f"{name}: {image} is not an exact version"
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert bases, "the Dockerfile has no FROM"
    for base in bases:
        assert pinned(base), f"Dockerfile: FROM {base} is not an exact version"


@pytest.mark.parametrize(
    ("image", "exact"),
    [
        ("postgres:15.18-bookworm", True),
        ("redis:7.4.11", True),
        ("python:3.11.17-slim-bookworm@sha256:" + "ab" * 32, True),
        ("postgres:15", False),
        ("redis:7", False),
        ("redis:7.4", False),
        ("python:3.11-slim", False),
        ("redis:latest", False),
        ("postgres", False),
        ("mystery:1.2.3", False),
    ],
)
def test_what_counts_as_pinned(image: str, exact: bool) -> None:
    assert pinned(image) is exact


def test_one_shots_alone_go_without_a_health_check() -> None:
    for name, service in _services().items():
        if service["healthcheck"].get("disable"):
            assert service.get("restart") == "no", f"{name} runs on, unchecked"
            continue
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert test[1:], name


def test_beat_answers_its_health_check() -> None:
    """Beat's check pings it by name: `broker beat` must enable remote control, which Celery's
    beat answers only while its scheduler ticks."""
    from celery.bin.base import CLIContext

    from broker.cli import server
    from broker.workers.celery_app import celery_app

    beat = _services()["beat"]
    assert "inspect ping -d celerybeat@$$HOSTNAME" in beat["healthcheck"]["test"][1]
    started: list[list[str]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(celery_app, "start", started.append)
        server.beat(schedule=beat["command"][beat["command"].index("--schedule") + 1])
    (argv,) = started
    # The arguments are Celery's own beat options (a typo would be refused here).
    obj = CLIContext(app=celery_app, no_color=True, workdir=None, quiet=True)
    from celery.bin.beat import beat as celery_beat

    params = celery_beat.make_context("beat", argv[1:], obj=obj).params
    assert params["remote_control"] is True
    assert 0 < params["max_interval"] <= 30  # silent after twice that without a tick


def test_the_image_creates_and_owns_what_is_mounted() -> None:
    """An empty named volume takes the owner of the folder it is mounted on: every folder the
    broker's services mount a named volume on is made in the image, owned by its user."""
    instructions = _instructions()
    (useradd,) = [a for k, a in instructions if k == "RUN" and "useradd" in a]
    assert re.search(r"useradd\b.*--uid 10001 broker\b", useradd)
    users = [a.strip() for k, a in instructions if k == "USER"]
    assert users[-1] == "broker", "the image must not run as root"
    owned = _owned_folders("broker")
    named = set(yaml.safe_load(COMPOSE.read_text())["volumes"])
    mounted: dict[str, str] = {}
    for name, service in _broker_services().items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in named:
                assert target in owned, f"{name}: {target} is not made and owned in the image"
                mounted[source] = target
    assert {"keys", "beat"} <= set(mounted)
    app = _broker_services()["api"]["environment"]
    assert app["BROKER_KEYS_DIR"] == mounted["keys"]
    beat = _services()["beat"]["command"]
    schedule = beat[beat.index("--schedule") + 1]
    assert Path(schedule).parent == Path(mounted["beat"])
