"""The listening socket of `broker serve` and `broker demo`, bound before either says it serves.

uvicorn binds its port only after the application has started, and a port in use then ends in
a logged `[Errno 98]` after the command had announced the address. Binding first lets the
commands name the option to change in one line, and announce the address only once it is
theirs. The bound socket is handed to uvicorn (`Server.run(sockets=...)`, or its worker
processes), which binds nothing itself.
"""

from __future__ import annotations

import errno
import socket

# uvicorn's own default: connections made before the server accepts wait here.
BACKLOG = 2048
HOST_FIX = "pass --host with an address of this machine (127.0.0.1, or 0.0.0.0 for all)"


class CannotListen(Exception):
    """The address cannot be bound: `option` is what to change, `fix` how."""

    def __init__(self, option: str, problem: str, fix: str) -> None:
        super().__init__(f"{option}: {problem}: {fix}")
        self.option = option
        self.problem = problem
        self.fix = fix


def address(host: str, port: int) -> str:
    """`host:port` as a URL writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` (0: any free port) and listening, or `CannotListen`."""
    where = address(host, port)
    if not 0 <= port <= 65535:
        raise CannotListen(
            f"--port {port}", "not a TCP port", "give one from 1 to 65535 (0: any free port)"
        )
    # As uvicorn binds (Config.bind_socket): IPv6 only for an IPv6 literal, SO_REUSEADDR so that
    # a restart does not wait for the last connections' TIME_WAIT.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise _refusal(exc, host, port, where) from None
    sock.set_inheritable(True)  # for uvicorn's worker processes
    return sock


def _refusal(exc: OSError, host: str, port: int, where: str) -> CannotListen:
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return CannotListen(
            f"--port {port}",
            f"{where} is already in use",
            "pass --port with a free port, or stop the program that holds it",
        )
    if exc.errno == errno.EACCES:
        return CannotListen(
            f"--port {port}",
            f"not permitted to listen on {where} ({reason})",
            "pass --port 1024 or above, or give the process the right to bind low ports",
        )
    # EADDRNOTAVAIL (not an address of this machine), a name that does not resolve, ...
    return CannotListen(f"--host {host}", f"cannot listen on {where} ({reason})", HOST_FIX)
