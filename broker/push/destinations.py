"""Where a push may go: resolve the endpoint's name, refuse internal addresses, pin the checked one.

An administrator registers the URL, but whoever runs the name's DNS decides where it points, and
may change it between the check and the connection (DNS rebinding). So the name is resolved and
every address it resolves to is checked when the URL is registered and again at every attempt,
and the attempt connects to an address it checked: the request URL carries the IP address, while
the Host header, TLS SNI and the certificate check keep the registered name.

Refused: loopback, private (RFC 1918), unique-local, link-local, shared (CGNAT, 100.64/10),
multicast, reserved, unspecified and any other address that is not globally routable, the same
addresses in IPv4-mapped, 6to4 and NAT64 form, and cloud metadata endpoints.
`push_allowed_networks` admits internal receivers; metadata endpoints, the unspecified address
and multicast stay refused inside it.

A refusal names the class of address, never the address or anything the resolver said.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit, urlunsplit

from broker.config import settings
from broker.errors import BrokerError, FieldProblem

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}

# Instance metadata and platform endpoints: refused even inside an allowed network. The
# ipaddress module knows none of them as such (most are link-local; the last one is public).
METADATA = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata and credentials
        "169.254.170.23",  # AWS EKS Pod Identity
        "fd00:ec2::254",  # AWS instance metadata over IPv6
        "fd00:ec2::23",  # AWS EKS Pod Identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure WireServer: a public address that only Azure hosts reach
    )
)

SHARED = ip_network("100.64.0.0/10")  # CGNAT, RFC 6598: not global, yet not `is_private`
UNIQUE_LOCAL = ip_network("fc00::/7")
NAT64 = ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 host

# Not globally routable, but `is_global` in the ipaddress module of the Python this project runs
# (3.11.7; CVE-2024-4032 fixed part of its table in later releases).
NOT_GLOBAL: tuple[tuple[IPNetwork, str], ...] = (
    (ip_network("192.0.0.0/24"), "a reserved address"),  # IETF protocol assignments, RFC 6890
    (ip_network("64:ff9b:1::/48"), "a local-use NAT64 address"),  # RFC 8215
    (ip_network("fec0::/10"), "a site-local address"),  # deprecated by RFC 3879
    (ip_network("3fff::/20"), "a documentation address"),  # RFC 9637
)


class DestinationForbidden(BrokerError, code="push.destination_forbidden"): ...


class Unresolvable(Exception):
    """The name resolves to nothing now: there is nothing to check and nowhere to connect."""


def _forms(address: IPAddress) -> list[IPAddress]:
    """The address and the IPv4 addresses it stands for."""
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return [address.ipv4_mapped]  # the same host
        if address in NAT64:
            # DNS64 gives IPv6-only hosts such addresses for IPv4-only names; the translator
            # connects to the embedded IPv4 address, so that is what is checked.
            return [IPv4Address(int(address) & 0xFFFFFFFF)]
        if address.sixtofour is not None:
            return [address, address.sixtofour]
    return [address]


def _class(address: IPAddress) -> str | None:
    """The class of a non-public address, None for a public one."""
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address in SHARED:
        return "a shared (CGNAT) address"
    if address in UNIQUE_LOCAL:
        return "a unique-local address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    for network, name in NOT_GLOBAL:
        if address in network:
            return name
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why a push may not go to `address` (the class of address), or None if it may."""
    forms = _forms(address)
    for form in forms:
        if form in METADATA:
            return "a cloud metadata address"
        if form.is_unspecified:
            return "the unspecified address"
        if form.is_multicast:
            return "a multicast address"
    for form in forms:
        if any(form in network for network in allowed):
            continue
        found = _class(form)
        if found is not None:
            return found
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for `host`, in its order (the one place that
    resolves: tests replace it). Runs in the event loop's executor, never blocking the loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ip_address(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True, slots=True)
class Pinned:
    """A destination checked just now: connect to one of `addresses`, speak to `host`."""

    scheme: str
    host: str  # the name: TLS SNI and the certificate check
    authority: str  # the Host header, as registered (name[:port])
    port: int
    path: str
    query: str
    addresses: tuple[IPAddress, ...]  # every address the name resolved to, all checked
    literal: bool  # the URL names an address itself: no SNI, nothing to pin

    def url(self, address: IPAddress) -> str:
        """The request URL, with `address` in place of the name."""
        literal = f"[{address}]" if address.version == 6 else str(address)
        return urlunsplit((self.scheme, f"{literal}:{self.port}", self.path, self.query, ""))

    @property
    def extensions(self) -> dict[str, str]:
        """httpcore's request extensions: the name for SNI and the certificate check."""
        return {} if self.literal else {"sni_hostname": self.host}


def _forbidden(why: str, literal: bool) -> DestinationForbidden:
    detail = (
        f"the push URL's host {'is' if literal else 'resolves to'} {why}; push endpoints must "
        "be reachable on the internet (BROKER_PUSH_ALLOWED_NETWORKS admits internal networks)"
    )
    return DestinationForbidden(detail, errors=[FieldProblem(pointer="/url", detail=detail)])


async def pin(url: str) -> Pinned:
    """Resolve the URL's host now and check every address (`check_url` has passed).

    Raises `DestinationForbidden` if any address is refused, `Unresolvable` if there is none.
    """
    cfg = settings()
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    try:
        addresses: list[IPAddress] = [ip_address(host)]
        literal = True
    except ValueError:
        literal = False
        try:
            async with asyncio.timeout(cfg.push_timeout_s):
                addresses = await resolve(host, port)
        except (OSError, UnicodeError, ValueError, TimeoutError) as exc:
            raise Unresolvable(type(exc).__name__) from exc
    if not addresses:
        raise Unresolvable("no address")
    for address in addresses:
        why = refusal(address, cfg.push_allowed_networks)
        if why is not None:
            raise _forbidden(why, literal)
    return Pinned(
        scheme=parts.scheme,
        host=host,
        authority=parts.netloc,
        port=port,
        path=parts.path or "/",
        query=parts.query,
        addresses=tuple(addresses),
        literal=literal,
    )
