"""
What line mode prints for reliable delivery (chatd.client.line_output): the
events of docs/reliability.md and the answers to /retry and /stats, as text
and as JSON; and that a message without a sequence number prints as before.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.delivery import DeliveryStats
from chatd.client.events import (
    DeliveryPathChanged,
    MessageReceived,
    MessagesMissed,
    MessageStateChanged,
    RoomRecreated,
)
from chatd.client.line_output import LineEvent, Retried, StatsReport, format_json, format_text

NO_DELIVERY = "= this server does not offer reliable delivery: each message is sent once, without acknowledgement"

EVENTS: list[tuple[LineEvent, str | None, dict[str, Any]]] = [
    (
        MessageReceived("alice", "hello", 1795885041.5, seq=7),
        "alice: hello",
        {
            "event": "message",
            "sender": "alice",
            "text": "hello",
            "time": 1795885041.5,
            "action": False,
            "seq": 7,
            "history": False,
        },
    ),
    (
        MessageReceived("alice", "earlier", 1795885000.25, seq=3, history=True),
        "[history] alice: earlier",
        {
            "event": "message",
            "sender": "alice",
            "text": "earlier",
            "time": 1795885000.25,
            "action": False,
            "seq": 3,
            "history": True,
        },
    ),
    (
        MessageReceived("bob", "/me waved", 1795885000.0, seq=4, history=True),
        "[history] * bob waved",
        {
            "event": "message",
            "sender": "bob",
            "text": "/me waved",
            "time": 1795885000.0,
            "action": True,
            "seq": 4,
            "history": True,
        },
    ),
    (
        MessageStateChanged(3, "hello", "sending"),
        None,
        {"event": "message_state", "id": 3, "state": "sending", "seq": None, "text": "hello"},
    ),
    (
        MessageStateChanged(3, "hello", "sent", 12),
        None,
        {"event": "message_state", "id": 3, "state": "sent", "seq": 12, "text": "hello"},
    ),
    (
        MessageStateChanged(4, "are you there?", "not delivered"),
        "! not delivered: are you there? (/retry sends it again)",
        {"event": "message_state", "id": 4, "state": "not delivered", "seq": None, "text": "are you there?"},
    ),
    (
        MessagesMissed(10, 12, "3 messages missed"),
        "! 3 messages missed",
        {"event": "missed", "first": 10, "last": 12, "count": 3, "text": "3 messages missed"},
    ),
    (
        RoomRecreated("hoge", "room hoge was created again: earlier messages are gone"),
        "! room hoge was created again: earlier messages are gone",
        {"event": "room_recreated", "room": "hoge", "text": "room hoge was created again: earlier messages are gone"},
    ),
    (
        DeliveryPathChanged("tcp", "UDP blocked: messages go over TCP"),
        "! UDP blocked: messages go over TCP",
        {"event": "path", "path": "tcp", "text": "UDP blocked: messages go over TCP"},
    ),
    (
        DeliveryPathChanged("udp", "UDP works again"),
        "! UDP works again",
        {"event": "path", "path": "udp", "text": "UDP works again"},
    ),
    (
        Retried(delivery=True, ids=(4, 6)),
        "= sending 2 messages again",
        {"event": "retried", "delivery": True, "ids": [4, 6]},
    ),
    (
        Retried(delivery=True, ids=(4,)),
        "= sending 1 message again",
        {"event": "retried", "delivery": True, "ids": [4]},
    ),
    (
        Retried(delivery=True),
        "= nothing to send again: no message failed",
        {"event": "retried", "delivery": True, "ids": []},
    ),
    (Retried(delivery=False), NO_DELIVERY, {"event": "retried", "delivery": False, "ids": []}),
    (
        StatsReport(DeliveryStats(retransmissions=3, repaired=1, duplicates=0, missed=2, path="TCP")),
        "= delivery: 3 messages sent again, 1 repaired, 0 duplicates dropped, 2 missed; path: TCP (UDP blocked)",
        {
            "event": "stats",
            "delivery": True,
            "retransmissions": 3,
            "repaired": 1,
            "duplicates": 0,
            "missed": 2,
            "path": "tcp",
        },
    ),
    (
        StatsReport(DeliveryStats(retransmissions=1, duplicates=1)),
        "= delivery: 1 message sent again, 0 repaired, 1 duplicate dropped, 0 missed; path: UDP",
        {
            "event": "stats",
            "delivery": True,
            "retransmissions": 1,
            "repaired": 0,
            "duplicates": 1,
            "missed": 0,
            "path": "udp",
        },
    ),
    (
        StatsReport(None),
        NO_DELIVERY,
        {
            "event": "stats",
            "delivery": False,
            "retransmissions": None,
            "repaired": None,
            "duplicates": None,
            "missed": None,
            "path": None,
        },
    ),
]


class DeliveryTextTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, line, _ in EVENTS:
            self.assertEqual(format_text(event), line, event)

    def test_a_failed_message_stays_one_line(self) -> None:
        line = format_text(MessageStateChanged(1, "one\ntwo", "not delivered"))
        self.assertEqual(line, "! not delivered: one\\ntwo (/retry sends it again)")

    def test_a_message_without_the_feature_is_unchanged(self) -> None:
        self.assertEqual(format_text(MessageReceived("alice", "hello", 1.5)), "alice: hello")


class DeliveryJsonTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, _, expected in EVENTS:
            line = format_json(event)
            self.assertEqual(json.loads(line), expected, event)
            # Key order is part of the format: "event" first, then as documented.
            self.assertEqual(list(json.loads(line)), list(expected), event)

    def test_without_the_feature_a_message_is_byte_for_byte_as_before(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("alice", "hello", 1795885041.972)),
            '{"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": false}',
        )

    def test_exact_lines(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("bob", "hi", 1795885041.9, seq=7, history=True)),
            '{"event": "message", "sender": "bob", "text": "hi", "time": 1795885041.9, "action": false,'
            ' "seq": 7, "history": true}',
        )
        self.assertEqual(
            format_json(MessageStateChanged(3, "hello", "not delivered")),
            '{"event": "message_state", "id": 3, "state": "not delivered", "seq": null, "text": "hello"}',
        )
