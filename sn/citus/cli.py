"""`sn cluster init|status` and `sn hot promote|demote`: the command-line side of provision, status and hot_users."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from typing import Any

from sn.settings import Settings, SettingsError


def add_arguments(sub: Any) -> None:
    """Register the `cluster` and `hot` subcommands on the top-level subparsers."""
    cluster = sub.add_parser("cluster", help="Citus cluster: init (idempotent), status")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    cluster_sub.add_parser(
        "init",
        help="register coordinator and workers (SN_CITUS_WORKERS, SN_CITUS_HOT_WORKER), migrate, distribute;"
        " on plain PostgreSQL: migrate only",
    )
    cluster_sub.add_parser("status", help="print what GET /admin/cluster/status returns, as JSON")
    hot = sub.add_parser("hot", help="hot users: isolate a user's shards on the hot worker, or move them back")
    hot_sub = hot.add_subparsers(dest="hot_command", required=True)
    for name, text in (
        ("promote", "isolate the user's rows and move them to the hot worker"),
        ("demote", "move the user's rows back to a regular worker"),
    ):
        action = hot_sub.add_parser(name, help=text)
        action.add_argument("user_id")
        action.add_argument(
            "--transfer-mode",
            choices=("auto", "force_logical", "block_writes"),
            default="auto",
            help="Citus shard_transfer_mode (auto: logical replication, writes continue)",
        )


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from sn.citus import hot_users
    from sn.citus.coordinator import dedicated_connection
    from sn.citus.errors import ClusterError
    from sn.citus.nodes import address_of_url, parse_node, parse_nodes
    from sn.citus.provision import init_cluster
    from sn.citus.status import cluster_status
    from sn.ids import parse_id

    if not settings.database_url:
        raise SettingsError("SN_DATABASE_URL is not set (the coordinator, on Citus)")
    try:
        workers = parse_nodes(settings.citus_workers)
        hot_worker = parse_node(settings.citus_hot_worker) if settings.citus_hot_worker else None
    except ClusterError as exc:
        raise SettingsError(f"SN_CITUS_WORKERS / SN_CITUS_HOT_WORKER: {exc}") from exc
    async with dedicated_connection(settings.database_url) as conn:
        if args.command == "cluster" and args.cluster_command == "init":
            result = await init_cluster(
                conn,
                coordinator=address_of_url(settings.database_url),
                workers=workers,
                hot=hot_worker,
            )
            print(f"mode: {result.mode}")
            for line in result.lines:
                print(f"  {line}")
            return 0
        if args.command == "cluster":
            status = await cluster_status(conn, database_url=settings.database_url)
            print(json.dumps(status, indent=2, default=_json_default))
            return 0
        user_id = parse_id(args.user_id)
        if user_id is None:
            raise SettingsError(f"not a valid user id: {args.user_id!r}")
        if args.hot_command == "promote":
            change = await hot_users.promote(conn, user_id, transfer_mode=args.transfer_mode)
        else:
            change = await hot_users.demote(conn, user_id, transfer_mode=args.transfer_mode)
        assert change is not None  # promote waits for the lock
        print(f"user {change.user_id}: {change.action} ({change.mode}{', on ' + change.node if change.node else ''})")
        for step in change.steps:
            print(f"  {step}")
        return 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from sn import logs
    from sn.citus.errors import ClusterError

    logs.configure(settings)
    try:
        return asyncio.run(_run(settings, args))
    except ClusterError as exc:
        print(f"sn: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        # e.g. citus_add_node on a worker that is down, or a move refused by Citus: its message
        # is the diagnosis.
        print(f"sn: PostgreSQL error ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
