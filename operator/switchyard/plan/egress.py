"""Where a gateway may send traffic and provider keys.

Endpoint owners choose backend URLs, and both the operator's probes and the gateway's Envoys
connect to them with a provider key attached. So some hosts are never backends, whatever the
spec says: cloud metadata services (they hand out the node's cloud credentials) and the
Kubernetes API server. And a platform team may pin its gateway to the hosts it names
(`spec.allowedBackends`).

A host is judged as written in the URL, the way a resolver reads it: `2852039166` and
`0xa9.0xfe.0xa9.0xfe` are 169.254.169.254. A name that DNS resolves to a forbidden address is
beyond what a spec can show; the gateway Pods' NetworkPolicy is the place for that.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from switchyard.api.models import AllowedBackends, hostname_matches

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # link-local: AWS, GCP, Azure, OCI (169.254.169.254), ECS, EKS
        "fe80::/10",
        "fd00:ec2::254/128",  # AWS's IPv6 metadata address
        "100.100.100.200/32",  # Alibaba Cloud
    )
)
METADATA_HOSTNAMES = frozenset(
    {"metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
)
# How Pods name the API server, in every cluster.
KUBERNETES_HOSTNAMES = frozenset({"kubernetes", "kubernetes.default", "kubernetes.default.svc"})
NOT_ALLOWED = "BackendNotAllowed"


@dataclass(frozen=True)
class ApiServer:
    """Where this cluster's API server listens, beyond the names every cluster has: its
    Service's ClusterIP and port, and the address and port the operator itself uses (other
    ports of those hosts are other services)."""

    listeners: frozenset[tuple[IPAddress, int]] = field(default_factory=frozenset)
    hostnames: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, listeners: Iterable[tuple[str, int]]) -> ApiServer:
        addresses, hostnames = set(), set()
        for host, port in listeners:
            address = _address(host)
            if address is None:
                hostnames.add(host.lower().rstrip("."))
            else:
                addresses.add((address, port))
        return cls(frozenset(addresses), frozenset(hostnames))


# Knowing nothing of this cluster's own addresses: the names every cluster has still count.
ANY_CLUSTER = ApiServer()


_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def _address(host: str) -> IPAddress | None:
    """The address `host` denotes without DNS, or None for a name."""
    try:
        address: IPAddress = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        legacy = _inet_aton(host)
        if legacy is None:
            return None
        address = legacy
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 as C resolvers also read it: 1 to 4 parts, each decimal, octal (0 first) or hex
    (0x first), the last filling the bytes left (`2852039166` and `0xa9.0xfe.43518` are
    169.254.169.254)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    values = [int(p, 16) if p[:2].lower() == "0x" else int(p, 8 if p[:1] == "0" else 10)
              for p in parts]  # fmt: skip
    last_bits = 8 * (5 - len(values))
    if any(v > 255 for v in values[:-1]) or values[-1] >= 1 << last_bits:
        return None
    number = values[-1]
    for index, value in enumerate(values[:-1]):
        number |= value << (24 - 8 * index)
    return ipaddress.IPv4Address(number)


def refusal(url: str, allowed: AllowedBackends | None, api_server: ApiServer) -> str | None:
    """Why `url` may not be a backend of a gateway with `allowed`, or None if it may."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    address = _address(host)
    if address is not None:
        if any(address in network for network in METADATA_NETWORKS):
            return f"url host {host} is a cloud metadata address, never a backend"
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        if (address, port) in api_server.listeners:
            return f"url {host}:{port} is the Kubernetes API server, never a backend"
    else:
        if host in METADATA_HOSTNAMES:
            return f"url host {host} is a cloud metadata service, never a backend"
        if (
            host in KUBERNETES_HOSTNAMES
            or host.startswith("kubernetes.default.svc.")
            or host in api_server.hostnames
        ):
            return f"url host {host} is the Kubernetes API server, never a backend"
    if allowed is None:
        return None
    if address is not None:
        if any(address in ipaddress.ip_network(c, strict=False) for c in allowed.cidrs):
            return None
        return f"url host {host} is in none of the gateway's spec.allowedBackends.cidrs"
    if hostname_matches(host, allowed.hostnames):
        return None
    return f"url host {host} matches none of the gateway's spec.allowedBackends.hostnames"
