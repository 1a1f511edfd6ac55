"""Node addresses (sn/citus/nodes.py): the host:port values of SN_CITUS_WORKERS and SN_CITUS_HOT_WORKER."""

from __future__ import annotations

import pytest

from sn.citus.errors import ClusterError
from sn.citus.nodes import NodeAddress, parse_node, parse_nodes


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("db1:5432", NodeAddress("db1", 5432)),
        ("10.0.0.7", NodeAddress("10.0.0.7", 5432)),
        ("[::1]:6000", NodeAddress("::1", 6000)),
        (" citus-worker-hot:5433 ", NodeAddress("citus-worker-hot", 5433)),
    ],
)
def test_parse_node(raw: str, expected: NodeAddress) -> None:
    assert parse_node(raw) == expected


@pytest.mark.parametrize("raw", ["", "host:", "host:0", "host:99999", "a'b:5432", "host:12a"])
def test_parse_node_rejects(raw: str) -> None:
    with pytest.raises(ClusterError):
        parse_node(raw)


def test_parse_nodes_list() -> None:
    assert parse_nodes("a:1, b:2,,") == [NodeAddress("a", 1), NodeAddress("b", 2)]
    assert parse_nodes(None) == []
