"""The range assembler's answers in the races around a frame's start and completion."""

from __future__ import annotations

import threading
import time

import pytest

from splitlink.channel.assembly import Assembler, RangeDelivered, RangeRefused


def _room(total: int, alive: object) -> bool:
    return True


def test_a_retried_range_of_a_frame_just_assembled_is_a_duplicate() -> None:
    asm = Assembler()
    a = asm.begin("s", 1, 7, 8, lambda: True, _room, bytearray)
    for offset in (0, 4):
        token = a.claim(offset, 4)
        a.write(offset, token, 0, b"abcd")
        done = a.finish(offset, token)
    assert done
    with pytest.raises(RangeDelivered):  # before the handler handed the frame on
        a.claim(4, 4)
    asm.finish("s", a)
    with pytest.raises(RangeDelivered):  # after: a new assembly is not started for it
        asm.begin("s", 1, 7, 8, lambda: True, _room, bytearray)
    assert asm.pending("s") is None


def test_waiters_of_a_frame_whose_start_failed_are_told_to_retry() -> None:
    asm = Assembler()
    started = threading.Event()

    def reserve_then_give_up(total: int, alive: object) -> bool:
        started.set()
        time.sleep(0.3)
        return False  # the first range's call ended while the queue was full

    errors: list[RangeRefused] = []

    def first() -> None:
        with pytest.raises(RangeRefused):
            asm.begin("s", 1, 7, 8, lambda: True, reserve_then_give_up, bytearray)

    t = threading.Thread(target=first)
    t.start()
    started.wait(5)
    try:
        asm.begin("s", 1, 7, 8, lambda: True, _room, bytearray)
    except RangeRefused as e:
        errors.append(e)
    t.join(5)
    assert [e.code for e in errors] == ["UNAVAILABLE"]  # transient: the sender retries, not fails
    assert asm.begin("s", 1, 7, 8, lambda: True, _room, bytearray).buf is not None  # the retry starts it again


def test_a_late_range_of_a_replaced_process_does_not_abandon_the_new_one() -> None:
    asm = Assembler()
    asm.retired_by(lambda sender, incarnation: incarnation == 1)
    new = asm.begin("s", 2, 1, 8, lambda: True, _room, bytearray)
    with pytest.raises(RangeRefused, match="replaced"):
        asm.begin("s", 1, 9, 8, lambda: True, _room, bytearray)
    assert asm.pending("s") is new and not new.closed
