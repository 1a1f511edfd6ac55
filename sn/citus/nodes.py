"""Node addresses: the `host:port` values of SN_CITUS_WORKERS / SN_CITUS_HOT_WORKER and of pg_dist_node.

Pure parsing, no I/O: the CLI validates its settings with it before connecting, and the catalog
reads compare nodes as `NodeAddress` values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sn.citus.errors import ClusterError

_HOST = re.compile(r"^[A-Za-z0-9._-]+$|^\[[0-9A-Fa-f:.]+\]$")


@dataclass(frozen=True, slots=True, order=True)
class NodeAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_node(raw: str) -> NodeAddress:
    """`host:port` (or `[v6]:port`; the port defaults to 5432)."""
    text = raw.strip()
    host, port = text, "5432"
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port = rest.removeprefix(":") or port
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if not host or not _HOST.match(host) or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"not a host:port: {raw!r}")
    return NodeAddress(host.strip("[]"), int(port))


def parse_nodes(raw: str | None) -> list[NodeAddress]:
    return [parse_node(item) for item in (raw or "").split(",") if item.strip()]


def address_of_url(url: str) -> NodeAddress:
    """The coordinator as the workers should reach it: the host and port of SN_DATABASE_URL."""
    parts = urlsplit(url)
    return NodeAddress(parts.hostname or "localhost", parts.port or 5432)
