"""`make chaos`: every fault against private instances, one table per fault, then all of them.

    python -m tests.chaos [--faults a,b] [--users 16] [--tabs 2] [--follows 5] [--rate 6]

PostgreSQL: SN_TEST_DATABASE_URL or 127.0.0.1:5432 (a database of its own is created, behind a
proxy); RabbitMQ: SN_TEST_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/ when it answers
(behind a proxy, a bus prefix of its own); Redis: a server of its own. Exit status 1 when a
fault misses the target (0 missing, 0 duplicates, recovery <= 10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from tests.chaos.driver import FAULTS, run, table
from tests.support import port_open


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--tabs", type=int, default=2)
    parser.add_argument("--follows", type=int, default=5)
    parser.add_argument("--rate", type=float, default=6.0, help="requests a second (85%% posts)")
    args = parser.parse_args()
    postgres = os.environ.get("SN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    amqp = os.environ.get("SN_TEST_AMQP_URL")
    if amqp is None and port_open("127.0.0.1", 5672):
        amqp = "amqp://guest:guest@127.0.0.1:5672/"
    started = time.monotonic()
    rows = asyncio.run(
        run(
            args.faults.split(","),
            postgres_admin_url=postgres,
            amqp_url=amqp,
            users=args.users,
            tabs=args.tabs,
            follows=args.follows,
            rate=args.rate,
            report=lambda text: print(text, flush=True),
        )
    )
    print(
        f"\nAll faults ({time.monotonic() - started:.0f} s; {args.users} users x {args.tabs} tabs, "
        f"{args.follows} follows each, {args.rate}/s, bus {'rabbitmq' if amqp else 'redis-streams'}):"
    )
    print(table(rows))
    return 0 if all(row.met for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
