"""The distribution plan, and the names `sn cluster init` installs in the cluster.

Data only: provisioning creates what is listed here, the status report compares the cluster
with it, and hot-user moves use its colocation anchor. Kept apart so that the plan reads as one
page (docs/architecture.md, "Schema and the Citus distribution plan").
"""

from __future__ import annotations

from dataclasses import dataclass

# The rebalance strategy that keeps hot users' shards on the hot worker and everything else off it,
STRATEGY = "sn_hot_pinned"
# the SQL function that records which node is the hot worker (the single record of it),
HOT_WORKER_FUNCTION = "sn_hot_worker"
# and the strategy's placement function, which reads it.
ALLOWED_FUNCTION = "sn_shard_allowed_on_node"


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    column: str
    # "none": a colocation group of its own; otherwise the table whose group it joins.
    colocate_with: str


# The distribution plan (docs/architecture.md, "Schema and the Citus distribution plan").
# post_index (bigint), user_emails and dialog_messages (text) use 'none': with the default
# colocation Citus would put post_index into the users group (same column type, same shard
# count) and user_emails with dialog_messages, and tenant isolation of a hot user would then
# split post_index too.
DISTRIBUTED: tuple[TableSpec, ...] = (
    TableSpec("users", "id", "none"),
    TableSpec("friendships", "user_id", "users"),
    TableSpec("followers", "author_id", "users"),
    TableSpec("posts", "author_id", "users"),
    TableSpec("post_index", "id", "none"),
    TableSpec("user_emails", "email", "none"),
    TableSpec("dialog_messages", "dialog_id", "none"),
)
REFERENCE: tuple[str, ...] = ("hot_users",)
COORDINATOR_LOCAL: dict[str, str] = {
    # The relay claims rows with `ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED` across all owners;
    # Citus refuses FOR UPDATE on a multi-shard query ("could not run distributed query with
    # FOR UPDATE/SHARE commands"). As a coordinator table it keeps its semantics, and a write
    # that touches shards and the outbox is still one (two-phase) transaction.
    "outbox": "relay uses FOR UPDATE SKIP LOCKED over all owners (not routable)",
    "schema_migrations": "bookkeeping of the migrations, read only by `sn migrate`",
}
# The table that names the per-user colocation group: shard lookups and tenant isolation go through it.
COLOCATION_ANCHOR = "users"
