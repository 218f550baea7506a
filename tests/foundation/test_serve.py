"""`broker serve` as an operator runs it, in a subprocess: the address it binds and the proxies
it believes (issue 16.6)."""

from __future__ import annotations

import os
import re
import secrets
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest

BROKER = [sys.executable, "-m", "broker.cli"]


def _env(**values: str) -> dict[str, str]:
    """A newcomer's environment: no BROKER_ settings but these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    return {**env, **values}


@contextmanager
def _taken() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BROKER, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_a_port_in_use_is_one_line_and_nothing_claims_to_serve(tmp_path: Path) -> None:
    with _taken() as port:
        result = _run("serve", "--port", str(port), data_dir=tmp_path)
    line = _one_error_line(result)
    assert line.startswith(f"error: --port {port}: 127.0.0.1:{port} is already in use: "), line
    assert "pass --port with a free port" in line
    assert "serving on" not in result.stdout
    assert result.returncode == 2
    # Refused before the database was touched: nothing was migrated for a server that never ran.
    assert not (tmp_path / "broker.db").exists()


def test_an_address_of_another_machine_names_host(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never an address of this machine.
    result = _run("serve", "--host", "192.0.2.1", "--port", "0", data_dir=tmp_path)
    line = _one_error_line(result)
    assert line.startswith("error: --host 192.0.2.1: cannot listen on 192.0.2.1:0 ("), line
    assert "pass --host with an address of this machine" in line
    assert "serving on" not in result.stdout
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--port", "70000"], "error: --port 70000: not a TCP port: "),
        (["--forwarded-allow-ips", "10.0.0.300"], "error: --forwarded-allow-ips: '10.0.0.300'"),
        (["--workers", "0"], "error: --workers 0: give 1 or more"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], start: str) -> None:
    result = _run("serve", *args, data_dir=tmp_path)
    assert _one_error_line(result).startswith(start)
    assert "serving on" not in result.stdout
    assert result.returncode == 2


def test_the_demo_says_so_too(tmp_path: Path) -> None:
    with _taken() as port:
        result = _run("demo", "--exit", "--port", str(port), data_dir=tmp_path)
    line = _one_error_line(result)
    assert f"127.0.0.1:{port} is already in use" in line
    assert "--port" in line
    assert result.returncode != 0


# --- trusted proxies --------------------------------------------------------------------------


@contextmanager
def _serving(tmp_path: Path, *args: str, **env: str) -> Iterator[str]:
    """`broker serve --port 0 ...` until the block ends; yields its base URL, read from its
    "serving on" line (printed once the port is bound)."""
    with subprocess.Popen(
        [*BROKER, "serve", "--port", "0", "--data-dir", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(BROKER_RATE_AUTH_FAILURES_PER_MINUTE="2", **env),
    ) as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline() if ready else ""
            found = re.match(r"serving on (http://127\.0\.0\.1:\d+) ", line)
            assert found, f"no 'serving on' line: {line!r}"
            url = found.group(1)
            # The socket listens from the start: the first request waits for the app if need be.
            assert httpx2.get(f"{url}/health/live", timeout=60).status_code == 200
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def _bad_token(url: str, forwarded_for: str) -> int:
    """One request with a token that cannot be right, as forwarded by the proxy at 127.0.0.1."""
    headers = {
        "Authorization": f"Bearer brk_{secrets.token_urlsafe(32)}",
        "X-Forwarded-For": forwarded_for,
    }
    return httpx2.get(f"{url}/v1/me", headers=headers, timeout=30).status_code


def _told_apart(url: str) -> bool:
    """Whether clients behind the proxy have a failure budget each (two failures a minute)."""
    assert [_bad_token(url, "198.51.100.9") for _ in range(3)] == [401, 401, 429]
    others = [_bad_token(url, f"203.0.113.{i}") for i in range(1, 4)]
    assert others in ([401] * 3, [429] * 3), others
    return others == [401] * 3


def test_forwarded_for_counts_only_from_a_trusted_proxy(tmp_path: Path) -> None:
    with _serving(tmp_path, "--forwarded-allow-ips", "127.0.0.1") as url:
        assert _told_apart(url)
    with _serving(tmp_path) as url:
        assert not _told_apart(url)  # every client is the proxy: one shared budget


def test_the_option_overrides_the_setting(tmp_path: Path) -> None:
    with _serving(tmp_path, BROKER_TRUSTED_PROXIES="127.0.0.0/8") as url:
        assert _told_apart(url)
    with _serving(tmp_path, "--forwarded-allow-ips", "", BROKER_TRUSTED_PROXIES="127.0.0.1") as url:
        assert not _told_apart(url)
