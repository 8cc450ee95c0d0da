"""
What line mode prints (chatd.client.line_output): every event as text and
as JSON, one line each, whatever the text holds.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.client.events import (
    ConnectionLost,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Reconnected,
    Reconnecting,
    RemovedForInactivity,
    RoomClosed,
    ServerStopping,
    Throttled,
    UdpPathLost,
    UdpPathRestored,
    WaitingForHost,
)
from chatd.client.line_output import Entered, LineEvent, format_json, format_text, one_line

HELLO = "こんにちは 🙂"
WAVE = "/me 手を振る 👋"
FAMILY = "👨\u200d👩\u200d👧"
"""An emoji sequence: its zero-width joiners must survive the text form."""

EVENTS: list[tuple[LineEvent, str, dict[str, Any]]] = [
    (
        Entered("hoge", "alice", True, ("alice",)),
        "* you created hoge as alice; members: alice",
        {"event": "entered", "room": "hoge", "user": "alice", "host": True, "members": ["alice"]},
    ),
    (
        Entered("hoge", "bob", False, ("alice", "bob")),
        "* you joined hoge as bob; members: alice, bob",
        {"event": "entered", "room": "hoge", "user": "bob", "host": False, "members": ["alice", "bob"]},
    ),
    (
        MessageReceived("alice", "hello", 1795885041.972),
        "alice: hello",
        {"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": False},
    ),
    (
        MessageReceived("alice", "/me waves", 1795885041.5),
        "* alice waves",
        {"event": "message", "sender": "alice", "text": "/me waves", "time": 1795885041.5, "action": True},
    ),
    (
        MemberJoined("bob", ("alice", "bob"), "* bob joined hoge"),
        "* bob joined hoge",
        {"event": "joined", "user": "bob", "members": ["alice", "bob"], "text": "* bob joined hoge"},
    ),
    (
        MemberLeft("bob", ("alice",), "* bob left hoge"),
        "* bob left hoge",
        {"event": "left", "user": "bob", "members": ["alice"], "text": "* bob left hoge", "timed_out": False},
    ),
    (
        MemberLeft("bob", ("alice",), "* bob was removed from hoge after 300 s without activity", timed_out=True),
        "* bob was removed from hoge after 300 s without activity",
        {
            "event": "left",
            "user": "bob",
            "members": ["alice"],
            "text": "* bob was removed from hoge after 300 s without activity",
            "timed_out": True,
        },
    ),
    (
        RoomClosed("hoge", "the host left", "* room hoge was closed: the host left"),
        "* room hoge was closed: the host left",
        {
            "event": "room_closed",
            "room": "hoge",
            "reason": "the host left",
            "text": "* room hoge was closed: the host left",
        },
    ),
    (
        RemovedForInactivity("hoge", "* you were removed from hoge after 300 s without activity"),
        "* you were removed from hoge after 300 s without activity",
        {"event": "removed", "room": "hoge", "text": "* you were removed from hoge after 300 s without activity"},
    ),
    (
        ServerStopping("hoge", "* the server is shutting down; room hoge is closed"),
        "* the server is shutting down; room hoge is closed",
        {"event": "server_stopping", "room": "hoge", "text": "* the server is shutting down; room hoge is closed"},
    ),
    (
        Throttled("hoge", "* you are sending too fast: messages are being dropped; slow down"),
        "* you are sending too fast: messages are being dropped; slow down",
        {
            "event": "throttled",
            "room": "hoge",
            "text": "* you are sending too fast: messages are being dropped; slow down",
        },
    ),
    (
        ConnectionLost("Connection was closed cleanly.", will_reconnect=True),
        "! lost the connection to the server; reconnecting",
        {"event": "connection_lost", "reason": "Connection was closed cleanly.", "will_reconnect": True},
    ),
    (
        ConnectionLost("room hoge is gone", will_reconnect=False),
        "! lost the connection to the server: room hoge is gone",
        {"event": "connection_lost", "reason": "room hoge is gone", "will_reconnect": False},
    ),
    (
        Reconnecting(3, 2.0),
        "! reconnecting in 2 s (attempt 3)",
        {"event": "reconnecting", "attempt": 3, "delay": 2.0, "server": None, "resuming": False},
    ),
    (
        Reconnecting(1, 0.5, "127.0.0.1:7001", resuming=True),
        "! reconnecting in 0.5 s (attempt 1): resuming on 127.0.0.1:7001",
        {"event": "reconnecting", "attempt": 1, "delay": 0.5, "server": "127.0.0.1:7001", "resuming": True},
    ),
    (
        Reconnecting(2, 1.0, "[::1]:7011"),
        "! reconnecting in 1 s (attempt 2): to [::1]:7011",
        {"event": "reconnecting", "attempt": 2, "delay": 1.0, "server": "[::1]:7011", "resuming": False},
    ),
    (
        Reconnected("hoge", ("alice", "bob")),
        "! reconnected to hoge; members: alice, bob",
        {
            "event": "reconnected",
            "room": "hoge",
            "members": ["alice", "bob"],
            "host": None,
            "server": None,
            "resumed": False,
            "as_host": False,
        },
    ),
    (
        Reconnected("hoge", ("alice", "bob"), "alice"),
        "! reconnected to hoge; members: alice, bob; host: alice",
        {
            "event": "reconnected",
            "room": "hoge",
            "members": ["alice", "bob"],
            "host": "alice",
            "server": None,
            "resumed": False,
            "as_host": False,
        },
    ),
    (
        Reconnected("hoge", ("alice", "bob"), "alice", "127.0.0.1:7001", resumed=True, as_host=True),
        "! reconnected to hoge: resumed as host on 127.0.0.1:7001; members: alice, bob",
        {
            "event": "reconnected",
            "room": "hoge",
            "members": ["alice", "bob"],
            "host": "alice",
            "server": "127.0.0.1:7001",
            "resumed": True,
            "as_host": True,
        },
    ),
    (
        Reconnected("hoge", ("alice", "bob"), "alice", "127.0.0.1:7011", resumed=True),
        "! reconnected to hoge: resumed on 127.0.0.1:7011; members: alice, bob; host: alice",
        {
            "event": "reconnected",
            "room": "hoge",
            "members": ["alice", "bob"],
            "host": "alice",
            "server": "127.0.0.1:7011",
            "resumed": True,
            "as_host": False,
        },
    ),
    (
        Reconnected("hoge", ("alice", "bob"), "alice", "127.0.0.1:7011"),
        "! reconnected to hoge on 127.0.0.1:7011; members: alice, bob; host: alice",
        {
            "event": "reconnected",
            "room": "hoge",
            "members": ["alice", "bob"],
            "host": "alice",
            "server": "127.0.0.1:7011",
            "resumed": False,
            "as_host": False,
        },
    ),
    (
        WaitingForHost("hoge", "alice", 3, 2.0, 55.0),
        "! waiting for alice to reopen hoge: trying again in 2 s (attempt 3; giving up in 55 s)",
        {"event": "waiting_for_host", "room": "hoge", "host": "alice", "attempt": 3, "delay": 2.0, "gives_up_in": 55.0},
    ),
    (
        UdpPathLost(12.3),
        "! no UDP from the server for 12 s: messages cannot be delivered",
        {"event": "udp_lost", "silent_for": 12.3},
    ),
    (UdpPathRestored(), "! UDP from the server again: messages are delivered", {"event": "udp_restored"}),
]


class FormatTextTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, line, _ in EVENTS:
            self.assertEqual(format_text(event), line, event)

    def test_japanese_and_emoji_as_they_are(self) -> None:
        self.assertEqual(format_text(MessageReceived("花子", HELLO, 0.0)), f"花子: {HELLO}")
        self.assertEqual(format_text(MessageReceived("花子", WAVE, 0.0)), "* 花子 手を振る 👋")
        self.assertEqual(format_text(MessageReceived("花子", FAMILY, 0.0)), f"花子: {FAMILY}")

    def test_me_without_a_space_is_a_message(self) -> None:
        self.assertEqual(format_text(MessageReceived("alice", "/me", 0.0)), "alice: /me")
        self.assertEqual(format_text(MessageReceived("alice", "/meow", 0.0)), "alice: /meow")

    def test_an_empty_message(self) -> None:
        self.assertEqual(format_text(MessageReceived("alice", "", 0.0)), "alice: ")

    def test_line_breaks_and_controls_are_escaped(self) -> None:
        event = MessageReceived("alice", "one\ntwo\r\x1b[31m\x85\u2028\u2029\x7f\tend", 0.0)
        self.assertEqual(format_text(event), "alice: one\\ntwo\\r\\x1b[31m\\x85\\u2028\\u2029\\x7f\tend")

    def test_one_line_keeps_plain_text(self) -> None:
        text = f"a\\b {HELLO} {FAMILY} \u3000"
        self.assertIs(one_line(text), text)


class FormatJsonTests(SynchronousTestCase):
    def test_every_event(self) -> None:
        for event, _, expected in EVENTS:
            line = format_json(event)
            self.assertEqual(json.loads(line), expected, event)
            # Key order is part of the format: "event" first, then as documented.
            self.assertEqual(list(json.loads(line)), list(expected), event)

    def test_exact_line(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("alice", "hello", 1795885041.972)),
            '{"event": "message", "sender": "alice", "text": "hello", "time": 1795885041.972, "action": false}',
        )

    def test_utf8_not_ascii_escapes(self) -> None:
        self.assertEqual(
            format_json(MessageReceived("花子", WAVE, 1.5)),
            '{"event": "message", "sender": "花子", "text": "/me 手を振る 👋", "time": 1.5, "action": true}',
        )

    def test_one_line_for_any_text(self) -> None:
        text = "one\ntwo\r\x85\u2028\u2029\x00"
        line = format_json(MessageReceived("alice", text, 0.0))
        self.assertEqual(line.splitlines(), [line])
        self.assertEqual(json.loads(line)["text"], text)
