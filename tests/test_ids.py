from __future__ import annotations

import time

import pytest

from sn.ids import IdGenerator, parse_id, timestamp_ms


def test_ids_are_unique_increasing_and_time_ordered() -> None:
    generator = IdGenerator(5)
    ids = [generator.next_id() for _ in range(20_000)]  # > 4096 per ms forces sequence overflow
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert abs(timestamp_ms(ids[0]) - time.time() * 1000) < 5_000
    assert all(0 < i < 2**63 for i in ids)


def test_generators_never_collide() -> None:
    a, b = IdGenerator(1), IdGenerator(2)
    assert not {a.next_id() for _ in range(5000)} & {b.next_id() for _ in range(5000)}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("42", 42), ("0", None), ("-1", None), ("1e3", None), ("٣", None), ("9" * 19, None), ("", None), (7, 7)],
)
def test_parse_id(raw: str | int, expected: int | None) -> None:
    assert parse_id(raw) == expected


def test_rebind_switches_generator_and_keeps_order() -> None:
    generator = IdGenerator(3)
    first = generator.next_id()
    generator.rebind(9)
    second = generator.next_id()
    assert second > first
    assert (second >> 12) & 0x3FF == 9
    with pytest.raises(ValueError, match="generator id"):
        generator.rebind(5000)
