"""
Line mode with reliable delivery (docs/reliability.md), through a session with
a fake client: /retry and /stats, with and without the feature, and what the
session prints of our messages' states.
"""

from __future__ import annotations

import json
from typing import cast

from chatd.client.chat_client import ChatClient, ConnectionState
from chatd.client.delivery import DeliveryStats
from chatd.client.events import DeliveryPathChanged, MessageReceived, MessagesMissed, MessageStateChanged
from tests.client.test_line_console import attached
from tests.client.test_line_mode import FakeClient, SessionCase

NO_DELIVERY = "= this server does not offer reliable delivery: each message is sent once, without acknowledgement\n"


class WithoutTheFeatureTests(SessionCase):
    def test_retry_and_stats_say_the_server_does_not_offer_it(self) -> None:
        self.read("/retry\n/STATS\n")
        self.assertEqual(self.output(), NO_DELIVERY * 2)
        self.assertEqual((self.client.sent, self.reports), ([], []))


class WithTheFeatureTests(SessionCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.delivery = True
        self.client.delivery_stats = DeliveryStats(retransmissions=2, repaired=5, missed=3)
        self.client.delivery_path = "udp"

    def test_retry_sends_the_failed_messages_again(self) -> None:
        self.read("one\ntwo\n")
        self.session.chat_event(MessageStateChanged(1, "one", "sending"))
        self.session.chat_event(MessageStateChanged(1, "one", "not delivered"))
        self.session.chat_event(MessageStateChanged(2, "two", "sent", 9))
        self.client.failed = [1]
        self.read("/retry\n/retry\n")
        self.assertEqual(
            self.output(),
            "! not delivered: one (/retry sends it again)\n"
            "= sending 1 message again\n"
            "= nothing to send again: no message failed\n",
        )
        # Sent again by the client under its id, never as a new message.
        self.assertEqual(self.client.sent, ["one", "two"])

    def test_retry_while_reconnecting_is_a_warning(self) -> None:
        self.lose_connection()
        self.read("/retry\n")
        self.assertEqual(self.reports, ["not sent again: reconnecting"])

    def test_stats(self) -> None:
        self.read("/stats\n")
        self.assertEqual(
            self.output(), "= delivery: 2 messages sent again, 5 repaired, 0 duplicates dropped, 3 missed; path: UDP\n"
        )

    def test_history_missed_and_path(self) -> None:
        self.session.chat_event(MessageReceived("bob", "before you came", 1.0, seq=1, history=True))
        self.session.chat_event(MessagesMissed(2, 4, "3 messages missed"))
        self.session.chat_event(MessageReceived("bob", "now", 2.0, seq=5))
        self.session.chat_event(DeliveryPathChanged("tcp", "UDP blocked: messages go over TCP"))
        self.assertEqual(
            self.output(),
            "[history] bob: before you came\n! 3 messages missed\nbob: now\n! UDP blocked: messages go over TCP\n",
        )

    def test_json_writes_every_state(self) -> None:
        session = self.make_session(json=True)
        session.client = cast(ChatClient, self.client)
        transport = attached(session.console)
        session.chat_event(MessageStateChanged(1, "one", "sending"))
        session.chat_event(MessageStateChanged(1, "one", "sent", 4))
        session.console.dataReceived(b"/stats\n/retry\n")
        objects = [json.loads(line) for line in transport.value().decode().splitlines()]
        self.assertEqual(
            [(line["event"], line.get("state")) for line in objects],
            [("message_state", "sending"), ("message_state", "sent"), ("stats", None), ("retried", None)],
        )
        self.assertEqual(objects[1]["seq"], 4)
        self.assertEqual(objects[2]["path"], "udp")
        self.assertEqual(objects[3], {"event": "retried", "delivery": True, "ids": []})

    def test_a_fresh_client_in_the_room_has_its_answers(self) -> None:
        # The session reads the client's state when asked, not when it entered.
        client = FakeClient()
        self.session.client = cast(ChatClient, client)
        self.read("/stats\n")
        client.delivery, client.delivery_stats = True, DeliveryStats()
        client.state = ConnectionState.IN_ROOM
        self.read("/stats\n")
        self.assertEqual(
            self.output(),
            NO_DELIVERY + "= delivery: 0 messages sent again, 0 repaired, 0 duplicates dropped, 0 missed; path: UDP\n",
        )
