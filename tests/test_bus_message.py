"""Conclave's own message type at the bus boundary, and the real clock behind the Clock port."""

from __future__ import annotations

from typing import Any

from nats.aio.msg import Msg

from shared.bus.message import from_nats
from shared.bus.ports import Clock, SystemClock


def nats_msg(reply: str) -> Msg:
    client: Any = object()
    return Msg(_client=client, subject="a.b", reply=reply, data=b"x", headers={"Nats-Msg-Id": "i"})


def test_a_stream_delivery_carries_its_sequence_time_and_id() -> None:
    msg = from_nats(nats_msg("$JS.ACK.GAMES.c.3.42.7.1700000000000000000.5"))
    assert (msg.stream, msg.seq, msg.num_delivered, msg.num_pending) == ("GAMES", 42, 3, 5)
    assert msg.timestamp is not None and msg.timestamp.year == 2023
    assert msg.msg_id == "i"


def test_a_core_message_or_a_forged_ack_subject_is_a_core_message() -> None:
    for reply in ("", "_INBOX.x", "$JS.ACK.garbage"):
        msg = from_nats(nats_msg(reply))
        assert (msg.subject, msg.data, msg.seq, msg.timestamp) == ("a.b", b"x", 0, None)


async def test_the_system_clock_moves_forward() -> None:
    clock: Clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0.01)
    assert clock.monotonic() > before and clock.time() > 1.7e9
