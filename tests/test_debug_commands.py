"""Tests for chatd.debug_commands: the command parser and how the session moves on."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.datagrams import FrameType, NativeFrame, decode_legacy, decode_native, encode_legacy, encode_native
from chatd.debug_commands import (
    HELP,
    ChangeDialect,
    CommandError,
    Connect,
    Quit,
    SendBytes,
    SendDatagram,
    SendFrame,
    Session,
    Show,
    advance,
    learn,
    parse_command,
)
from chatd.debug_describe import frame_hex
from chatd.payloads import Dialect
from chatd.wire import Frame, Operation, SizeEncoding, State, decode_frame, encode_frame
from tests.helpers import SEED_EXAMPLE

MEMBER = Session(room="hoge", token="tok", local_udp_port=40001)
"""A session that has been through a complete frame."""


def replace_session(**changes: Any) -> Session:
    return replace(MEMBER, **changes)


def parse(line: str, session: Session = MEMBER) -> Any:
    return parse_command(line, session)


def sent_frame(line: str, session: Session = MEMBER) -> Frame:
    action = parse_command(line, session)
    assert isinstance(action, SendFrame), action
    # What goes on the wire decodes back to the same frame.
    assert decode_frame(encode_frame(action.frame)) == action.frame
    return action.frame


def sent_datagram(line: str, session: Session = MEMBER) -> SendDatagram:
    action = parse_command(line, session)
    assert isinstance(action, SendDatagram), action
    return action


class ParseCommandTests(SynchronousTestCase):
    def assert_refused(self, line: str, fragment: str, session: Session = MEMBER) -> None:
        error = self.assertRaises(CommandError, parse_command, line, session)
        self.assertIn(fragment, str(error))

    def test_blank_and_comment_lines_do_nothing(self) -> None:
        for line in ("", "   ", "\t\r\n", "# a note", "  #create x y"):
            self.assertIsNone(parse(line), line)

    def test_unknown_command(self) -> None:
        self.assert_refused("hello there", "unknown command 'hello'")

    def test_command_words_ignore_case(self) -> None:
        self.assertEqual(sent_frame("CREATE hoge ann").operation, Operation.CREATE)

    def test_create_model(self) -> None:
        frame = sent_frame("create hoge ann", Session())
        self.assertEqual(
            (frame.operation, frame.state, frame.room, frame.encoding),
            (Operation.CREATE, State.REQUEST, "hoge", SizeEncoding.BINARY),
        )
        self.assertEqual(json.loads(frame.payload), {"username": "ann"})

    def test_create_with_password(self) -> None:
        frame = sent_frame("create hoge ann s3cret", Session())
        self.assertEqual(json.loads(frame.payload), {"username": "ann", "password": "s3cret"})

    def test_create_seed_uses_ascii_size(self) -> None:
        frame = sent_frame("create hoge ann", Session(dialect=Dialect.SEED))
        self.assertEqual(frame.encoding, SizeEncoding.ASCII)
        self.assertEqual(json.loads(frame.payload), {"username": "ann"})
        self.assertEqual(encode_frame(frame)[3:5], b"19")

    def test_create_native_carries_the_version(self) -> None:
        frame = sent_frame("create hoge ann pw", Session(dialect=Dialect.NATIVE))
        self.assertEqual(frame.encoding, SizeEncoding.BINARY)
        self.assertEqual(json.loads(frame.payload), {"chatd": 1, "username": "ann", "password": "pw"})

    def test_quoted_arguments(self) -> None:
        frame = sent_frame("create 'tea room' \"ann\" 'pass word'")
        self.assertEqual(frame.room, "tea room")
        self.assertEqual(json.loads(frame.payload), {"username": "ann", "password": "pass word"})

    def test_non_ascii_names(self) -> None:
        frame = sent_frame("create お茶 花子")
        self.assertEqual(frame.room, "お茶")
        self.assertEqual(json.loads(frame.payload), {"username": "花子"})

    def test_create_usage(self) -> None:
        self.assert_refused("create", "usage: create ROOM USER [PASSWORD]")
        self.assert_refused("create hoge", "usage: create ROOM USER [PASSWORD]")
        self.assert_refused("create hoge ann pw extra", "usage: create ROOM USER [PASSWORD]")

    def test_unbalanced_quote(self) -> None:
        self.assert_refused("create 'hoge ann", "No closing quotation")

    def test_room_name_over_255_bytes(self) -> None:
        self.assert_refused("create " + "é" * 128 + " ann", "256 bytes long")

    def test_join(self) -> None:
        frame = sent_frame("join hoge bob pw", Session(dialect=Dialect.SEED))
        self.assertEqual((frame.operation, frame.room, frame.encoding), (Operation.JOIN, "hoge", SizeEncoding.ASCII))
        self.assertEqual(json.loads(frame.payload), {"username": "bob", "password": "pw"})
        self.assert_refused("join hoge", "usage: join ROOM USER [PASSWORD]")

    def test_accept_joins_with_an_invitation(self) -> None:
        frame = sent_frame("accept hoge bob INV", Session(dialect=Dialect.NATIVE))
        self.assertEqual((frame.operation, frame.room), (Operation.JOIN, "hoge"))
        self.assertEqual(json.loads(frame.payload), {"chatd": 1, "username": "bob", "invite": "INV"})
        self.assert_refused("accept hoge bob", "usage: accept ROOM USER INVITE")

    def test_invite(self) -> None:
        frame = sent_frame("invite")
        self.assertEqual((frame.operation, frame.state, frame.room, frame.payload), (Operation.INVITE, 0, "hoge", b""))
        self.assertEqual(sent_frame("invite", Session()).room, "")
        self.assertEqual(sent_frame("invite other").room, "other")
        self.assert_refused("invite a b", "usage: invite [ROOM]")

    def test_register_defaults_to_our_udp_port(self) -> None:
        frame = sent_frame("register", replace_session(dialect=Dialect.SEED))
        self.assertEqual(
            (frame.operation, frame.room, frame.payload, frame.encoding),
            (Operation.REGISTER_UDP, "hoge", b"40001", SizeEncoding.ASCII),
        )

    def test_register_given_port(self) -> None:
        self.assertEqual(sent_frame("register 9").payload, b"9")

    def test_register_errors(self) -> None:
        self.assert_refused("register", "no UDP port yet", Session())
        self.assert_refused("register 65536", "not a port number")
        self.assert_refused("register -1", "not a port number")
        self.assert_refused("register x", "not a port number")
        self.assert_refused("register 1 2", "usage: register [PORT]")

    def test_port_is_two_raw_bytes(self) -> None:
        self.assertEqual(parse("port"), SendBytes(bytes((0x9C, 0x41))))
        self.assertEqual(parse("port 9002"), SendBytes(b"\x23\x2a"))
        self.assertEqual(parse("port 0"), SendBytes(b"\x00\x00"))
        self.assert_refused("port 70000", "not a port number")
        self.assert_refused("port", "no UDP port yet", Session())

    def test_say_is_a_legacy_datagram(self) -> None:
        action = sent_datagram("say hello,  world ")
        self.assertEqual(action.data, encode_legacy("hoge", "tok", "hello,  world "))
        self.assertIsNone(action.sequence)
        datagram = decode_legacy(action.data)
        self.assertEqual((datagram.room, datagram.token, datagram.message), ("hoge", "tok", b"hello,  world "))

    def test_say_needs_text_and_a_token(self) -> None:
        self.assert_refused("say", "usage: say TEXT")
        self.assert_refused("say hi", "create or join a room first", Session())

    def test_nsay_is_a_native_message(self) -> None:
        action = sent_datagram("nsay hi there", replace_session(sequence=4))
        self.assertEqual(action.sequence, 5)
        self.assertEqual(action.data, encode_native(NativeFrame(FrameType.MESSAGE, 5, b"tok", b"hi there")))
        self.assert_refused("nsay", "usage: nsay TEXT")
        self.assert_refused("nsay hi", "create or join a room first", Session())

    def test_keepalive(self) -> None:
        action = sent_datagram("keepalive")
        self.assertEqual(action.sequence, 1)
        self.assertEqual(decode_native(action.data), NativeFrame(FrameType.KEEPALIVE, 1, b"tok", b""))
        self.assert_refused("keepalive now", "usage: keepalive")
        self.assert_refused("keepalive", "create or join a room first", Session())

    def test_raw(self) -> None:
        self.assertEqual(parse("raw 0401 00 31"), SendBytes(b"\x04\x01\x00\x31"))
        # The client's own hex output can be pasted back.
        self.assertEqual(parse("raw " + frame_hex(SEED_EXAMPLE)), SendBytes(SEED_EXAMPLE))
        self.assert_refused("raw", "usage: raw HEX")
        self.assert_refused("raw 0g", "not hex")
        self.assert_refused("raw 123", "not hex")

    def test_udpraw(self) -> None:
        self.assertEqual(parse("udpraw 00 01 | 02", Session()), SendDatagram(b"\x00\x01\x02"))
        self.assert_refused("udpraw", "usage: udpraw HEX")
        self.assert_refused("udpraw zz", "not hex")

    def test_dialect(self) -> None:
        self.assertEqual(parse("dialect seed"), ChangeDialect(Dialect.SEED))
        self.assertEqual(parse("dialect NATIVE"), ChangeDialect(Dialect.NATIVE))
        self.assertEqual(parse("dialect model"), ChangeDialect(Dialect.MODEL))
        shown = parse("dialect", Session(dialect=Dialect.SEED))
        self.assertIsInstance(shown, Show)
        self.assertIn("seed", shown.text)
        self.assert_refused("dialect klingon", "one of model, seed, native")
        self.assert_refused("dialect seed model", "usage: dialect")

    def test_help_state_connect_quit(self) -> None:
        self.assertEqual(parse("help"), Show(HELP))
        state = parse("state")
        self.assertIsInstance(state, Show)
        self.assertIn("'tok'", state.text)
        self.assertIn("40001", state.text)
        self.assertEqual(parse("connect"), Connect())
        self.assertEqual(parse("quit"), Quit())
        self.assertEqual(parse("exit"), Quit())
        self.assert_refused("state now", "usage: state")
        self.assert_refused("connect there", "usage: connect")

    def test_help_mentions_every_command(self) -> None:
        for command in ("create", "join", "invite", "register", "port", "say", "nsay", "keepalive", "raw", "udpraw"):
            self.assertIn(f"  {command} ", HELP)
        for command in ("dialect", "help", "quit"):
            self.assertIn(f"  {command}", HELP)


class SessionTests(SynchronousTestCase):
    def test_advance(self) -> None:
        self.assertEqual(advance(Session(), ChangeDialect(Dialect.SEED)).dialect, Dialect.SEED)
        self.assertEqual(advance(MEMBER, SendDatagram(b"x", 7)).sequence, 7)
        self.assertEqual(advance(MEMBER, SendDatagram(b"x")), MEMBER)
        self.assertEqual(advance(MEMBER, Quit()), MEMBER)

    def test_learns_a_legacy_token(self) -> None:
        frame = Frame(Operation.CREATE, State.COMPLETE, "hoge", b"abc123")
        learned = learn(Session(sequence=3), frame)
        self.assertEqual((learned.room, learned.token, learned.sequence), ("hoge", "abc123", 0))

    def test_learns_a_native_token(self) -> None:
        payload = json.dumps({"chatd": 1, "token": "T", "room": "hoge", "user": "bob"}).encode()
        learned = learn(Session(), Frame(Operation.JOIN, State.COMPLETE, "hoge", payload))
        self.assertEqual((learned.room, learned.token), ("hoge", "T"))

    def test_ignores_what_is_not_a_complete_create_or_join(self) -> None:
        for frame in (
            Frame(Operation.CREATE, State.ACKNOWLEDGE, "hoge", b"\x00"),
            Frame(Operation.NOTICE, State.COMPLETE, "hoge", b"* bob joined hoge"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b""),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b"\xff"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"chatd": 1}'),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b"{not json"),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"token": "\\ud800"}'),
            Frame(Operation.CREATE, State.COMPLETE, "hoge", b'{"token": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ):
            self.assertEqual(learn(MEMBER, frame), MEMBER, frame)

    def test_learns_invitations(self) -> None:
        legacy = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b"INV"))
        self.assertEqual((legacy.invite, legacy.token), ("INV", "tok"))
        native = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b'{"chatd": 1, "invite": "I2"}'))
        self.assertEqual(native.invite, "I2")
