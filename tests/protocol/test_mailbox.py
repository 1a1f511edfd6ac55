from __future__ import annotations

import pytest

from sn.protocol.mailbox import Mailbox


def test_rejects_non_positive_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Mailbox[int](0)


def test_fifo_until_full_then_rejects_without_growing() -> None:
    box: Mailbox[int] = Mailbox(3)
    assert [box.offer(i) for i in range(5)] == [True, True, True, False, False]
    assert len(box) == 3
    assert box.full
    assert box.free == 0
    assert (box.accepted, box.rejected) == (3, 2)
    assert box.drain() == [0, 1, 2]
    assert len(box) == 0


def test_drain_in_batches_preserves_order() -> None:
    box: Mailbox[str] = Mailbox(10)
    for ch in "abcde":
        box.offer(ch)
    assert box.drain(2) == ["a", "b"]
    assert box.drain(0) == []
    assert box.drain(10) == ["c", "d", "e"]
    assert box.drain(1) == []


def test_drain_rejects_negative_batch() -> None:
    box: Mailbox[int] = Mailbox(2)
    box.offer(1)
    with pytest.raises(ValueError, match="max_items"):
        box.drain(-1)
    assert len(box) == 1  # a bad call must not lose items


def test_space_is_reusable_after_drain() -> None:
    box: Mailbox[int] = Mailbox(2)
    assert box.offer(1)
    assert box.offer(2)
    assert not box.offer(3)
    assert box.drain(1) == [1]
    assert box.free == 1
    assert box.offer(3)
    assert box.drain() == [2, 3]


def test_closed_mailbox_refuses_offers_but_keeps_backlog_drainable() -> None:
    box: Mailbox[int] = Mailbox(4)
    box.offer(1)
    box.offer(2)
    box.close()
    box.close()  # idempotent
    assert box.closed
    assert box.free == 0
    assert box.offer(3) is False
    assert box.rejected == 1
    assert box.drain() == [1, 2]


def test_clear_reports_dropped_count() -> None:
    box: Mailbox[int] = Mailbox(4)
    for i in range(3):
        box.offer(i)
    assert box.clear() == 3
    assert len(box) == 0
    assert box.accepted == 3  # counters are cumulative, not reset by clear


def test_repr_shows_fill_and_state() -> None:
    box: Mailbox[int] = Mailbox(2)
    box.offer(1)
    assert repr(box) == "<Mailbox 1/2 open>"
    box.close()
    assert repr(box) == "<Mailbox 1/2 closed>"


def test_an_empty_mailbox_holds_no_storage() -> None:
    # An idle socket's outbox: nothing allocated until the first offer, and nothing kept once
    # drained or cleared (sn.protocol.mailbox, "Lazy storage").
    box: Mailbox[int] = Mailbox(4)
    assert not box.allocated
    assert box.drain() == []
    assert not box.allocated
    box.offer(1)
    box.offer(2)
    assert box.allocated
    assert box.drain(1) == [1]
    assert box.allocated  # one item left
    assert box.drain() == [2]
    assert not box.allocated
    box.offer(3)
    box.clear()
    assert not box.allocated
    box.close()
    assert not box.offer(4)
    assert not box.allocated  # a refused offer allocates nothing


def test_a_full_drain_hands_over_the_storage() -> None:
    box: Mailbox[int] = Mailbox(4)
    box.offer(1)
    batch = box.drain()
    box.offer(2)
    assert batch == [1]  # the next offer starts a new list, the batch handed out stays as it was
    assert box.drain() == [2]
