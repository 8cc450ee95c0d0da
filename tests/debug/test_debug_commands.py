"""Tests for chatd.debug.commands: the command parser and how the session moves on."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from chatd.debug.commands import (
    HELP,
    ChangeDialect,
    CommandError,
    Connect,
    Quit,
    SendBytes,
    SendDatagram,
    SendFrame,
    SendSealed,
    Session,
    Show,
    advance,
    learn,
    open_datagram,
    parse_command,
)
from chatd.debug.describe import Opened, Unopened, frame_hex, sealed_hex
from chatd.protocol.datagrams import FrameType, decode_legacy, encode_legacy
from chatd.protocol.payloads import Dialect
from chatd.protocol.seal import REJECT_AFTER, Channel, Direction
from chatd.protocol.wire import Frame, Operation, SizeEncoding, State, decode_frame, encode_frame
from tests.helpers import SEED_EXAMPLE

MEMBER = Session(room="hoge", token="tok", local_udp_port=40001)
"""A session that has been through a legacy complete frame: a token, no UDP key."""

KEY = bytes(range(32))
KEY_ID = 77


def native_member() -> Session:
    """A session that has been through a native complete frame: a fresh client Channel (it changes in place)."""
    return replace(MEMBER, dialect=Dialect.NATIVE, channel=Channel(KEY, KEY_ID, Direction.TO_SERVER))


def server_side(key: bytes = KEY, key_id: int = KEY_ID) -> Channel:
    """The server's Channel for the same key: it seals TO_CLIENT and opens what the client sealed."""
    return Channel(key, key_id, Direction.TO_CLIENT)


def native_complete(operation: Operation = Operation.CREATE, key: bytes = KEY, key_id: object = KEY_ID) -> Frame:
    payload = {"chatd": 1, "token": "T", "key": base64.b64encode(key).decode(), "key_id": key_id, "room": "hoge"}
    if operation is Operation.REKEY:
        payload = {"key": payload["key"], "key_id": key_id}
    return Frame(operation, State.COMPLETE, "hoge", json.dumps(payload).encode())


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

    def test_create_native_only(self) -> None:
        """docs/protocol.md 4.8: the create payload's "native_only": true, in any position on the line."""
        for line in ("create hoge ann --native-only", "create --native-only hoge ann"):
            frame = sent_frame(line, Session(dialect=Dialect.NATIVE))
            self.assertEqual((frame.operation, frame.room), (Operation.CREATE, "hoge"))
            self.assertEqual(json.loads(frame.payload), {"chatd": 1, "username": "ann", "native_only": True})
        frame = sent_frame("create hoge ann pw --native-only", Session(dialect=Dialect.NATIVE))
        self.assertEqual(
            json.loads(frame.payload), {"chatd": 1, "username": "ann", "password": "pw", "native_only": True}
        )
        # A legacy dialect sends it too, to see the server refuse it (NOT_PERMITTED).
        frame = sent_frame("create hoge ann --native-only", Session(dialect=Dialect.SEED))
        self.assertEqual(json.loads(frame.payload), {"username": "ann", "native_only": True})
        self.assert_refused("create hoge --native-only", "usage: create ROOM USER [PASSWORD] [--native-only]")
        self.assertIn("--native-only", HELP)

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
        datagram = decode_legacy(action.data)
        self.assertEqual((datagram.room, datagram.token, datagram.message), ("hoge", "tok", b"hello,  world "))

    def test_say_needs_text_and_a_token(self) -> None:
        self.assert_refused("say", "usage: say TEXT")
        self.assert_refused("say hi", "create or join a room first", Session())

    def test_nsay_is_a_sealed_message(self) -> None:
        session = native_member()
        self.assertEqual(parse("nsay hi there", session), SendSealed(FrameType.MESSAGE, b"hi there"))
        self.assertEqual(parse("nsay  héllo ", session), SendSealed(FrameType.MESSAGE, " héllo ".encode()))
        # Parsing seals nothing: the counter moves only when the client seals.
        assert session.channel is not None
        self.assertEqual(session.channel.sent, 0)
        self.assert_refused("nsay", "usage: nsay TEXT", session)

    def test_nsay_and_keepalive_need_a_key(self) -> None:
        for line in ("nsay hi", "keepalive"):
            # A token alone (a legacy membership) is not enough: the token is never used on UDP.
            self.assert_refused(line, "needs a UDP key: create or join a room in the native dialect first")
            self.assert_refused(line, "needs a UDP key", Session())

    def test_keepalive(self) -> None:
        session = native_member()
        self.assertEqual(parse("keepalive", session), SendSealed(FrameType.KEEPALIVE, b""))
        self.assert_refused("keepalive now", "usage: keepalive", session)

    def test_a_spent_key_is_refused(self) -> None:
        session = native_member()
        assert session.channel is not None
        session.channel.sent = REJECT_AFTER
        self.assert_refused("nsay hi", "UDP key id 77 is spent (no counter left): rekey", session)
        self.assert_refused("keepalive", "is spent", session)

    def test_rekey(self) -> None:
        frame = sent_frame("rekey", native_member())
        self.assertEqual(
            (frame.operation, frame.state, frame.room, frame.payload, frame.encoding),
            (Operation.REKEY, State.REQUEST, "hoge", b"", SizeEncoding.BINARY),
        )
        self.assertEqual(encode_frame(frame)[1:3], b"\x06\x00")
        # Anyone may ask, to see the server refuse a legacy member or a stranger.
        self.assertEqual(sent_frame("rekey", Session()).room, "")
        self.assertEqual(sent_frame("rekey other").room, "other")
        self.assertEqual(sent_frame("rekey", Session(dialect=Dialect.SEED)).encoding, SizeEncoding.ASCII)
        self.assert_refused("rekey a b", "usage: rekey [ROOM]")

    def test_members(self) -> None:
        frame = sent_frame("members", native_member())
        self.assertEqual(
            (frame.operation, frame.state, frame.room, frame.payload, frame.encoding),
            (Operation.MEMBERS, State.REQUEST, "hoge", b"", SizeEncoding.BINARY),
        )
        self.assertEqual(encode_frame(frame)[1:3], b"\x07\x00")
        # Anyone may ask, to see the server refuse a legacy member or a stranger.
        self.assertEqual(sent_frame("members", Session()).room, "")
        self.assertEqual(sent_frame("members other").room, "other")
        self.assert_refused("members a b", "usage: members [ROOM]")

    def test_raw(self) -> None:
        self.assertEqual(parse("raw 0401 00 31"), SendBytes(b"\x04\x01\x00\x31"))
        # The client's own hex output can be pasted back.
        self.assertEqual(parse("raw " + frame_hex(SEED_EXAMPLE)), SendBytes(SEED_EXAMPLE))
        self.assert_refused("raw", "usage: raw HEX")
        self.assert_refused("raw 0g", "not hex")
        self.assert_refused("raw 123", "not hex")

    def test_udpraw(self) -> None:
        self.assertEqual(parse("udpraw 00 01 | 02", Session()), SendDatagram(b"\x00\x01\x02"))
        # A sealed datagram's hex, as shown, pastes back: a replay.
        sealed = server_side().seal(FrameType.RELAY, b"x" * 20)
        self.assertEqual(parse("udpraw " + sealed_hex(sealed), Session()), SendDatagram(sealed))
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
        self.assertIn("UDP key    (none)", state.text)
        self.assertEqual(parse("connect"), Connect())
        self.assertEqual(parse("quit"), Quit())
        self.assertEqual(parse("exit"), Quit())
        self.assert_refused("state now", "usage: state")
        self.assert_refused("connect there", "usage: connect")

    def test_state_shows_the_key_id_never_the_key(self) -> None:
        session = native_member()
        assert session.channel is not None
        session.channel.seal(FrameType.KEEPALIVE, b"")
        session.channel.open(server_side().seal(FrameType.KEEPALIVE_ACK, b""))
        text = parse("state", session).text
        self.assertIn(
            "UDP key    key id 77 (the key itself is not shown), next counter to send 1, newest counter received 0",
            text,
        )
        for form in (KEY.hex(), base64.b64encode(KEY).decode(), repr(KEY)):
            self.assertNotIn(form, text)
        fresh = parse("state", native_member()).text
        self.assertIn("next counter to send 0, newest counter received none yet", fresh)

    def test_help_mentions_every_command(self) -> None:
        commands = (
            "create",
            "join",
            "invite",
            "rekey",
            "members",
            "register",
            "port",
            "say",
            "nsay",
            "keepalive",
            "raw",
            "udpraw",
        )
        for command in commands:
            self.assertIn(f"  {command} ", HELP)
        for command in ("dialect", "help", "quit"):
            self.assertIn(f"  {command}", HELP)


class SessionTests(SynchronousTestCase):
    def test_advance(self) -> None:
        self.assertEqual(advance(Session(), ChangeDialect(Dialect.SEED)).dialect, Dialect.SEED)
        self.assertEqual(advance(MEMBER, SendDatagram(b"x")), MEMBER)
        self.assertEqual(advance(MEMBER, SendSealed(FrameType.KEEPALIVE, b"")), MEMBER)
        self.assertEqual(advance(MEMBER, Quit()), MEMBER)

    def test_learns_a_legacy_token(self) -> None:
        frame = Frame(Operation.CREATE, State.COMPLETE, "hoge", b"abc123")
        learned = learn(native_member(), frame)
        # A legacy membership has no key: the native one's is forgotten.
        self.assertEqual((learned.room, learned.token, learned.channel), ("hoge", "abc123", None))

    def test_learns_a_native_token_and_key(self) -> None:
        learned = learn(Session(), native_complete(Operation.JOIN))
        self.assertEqual((learned.room, learned.token), ("hoge", "T"))
        channel = learned.channel
        assert channel is not None
        self.assertEqual((channel.key, channel.key_id, channel.sent), (KEY, KEY_ID, 0))
        # A client's Channel: what it seals, the server opens, and the other way round.
        server = server_side()
        self.assertEqual(server.open(channel.seal(FrameType.MESSAGE, b"hi")), (FrameType.MESSAGE, b"hi"))
        self.assertEqual(channel.open(server.seal(FrameType.KEEPALIVE_ACK, b"")), (FrameType.KEEPALIVE_ACK, b""))

    def test_every_complete_frame_is_a_new_channel(self) -> None:
        first = learn(Session(), native_complete())
        again = learn(first, native_complete())
        self.assertIsNot(again.channel, first.channel)

    def test_learns_a_new_key_from_rekey(self) -> None:
        session = native_member()
        assert session.channel is not None
        session.channel.seal(FrameType.KEEPALIVE, b"")
        new_key = bytes(32)
        learned = learn(session, native_complete(Operation.REKEY, key=new_key, key_id=78))
        assert learned.channel is not None
        self.assertEqual((learned.channel.key, learned.channel.key_id, learned.channel.sent), (new_key, 78, 0))
        self.assertEqual((learned.room, learned.token, learned.dialect), ("hoge", "tok", Dialect.NATIVE))
        # Not the acknowledgement, and not a rekey frame without a usable key.
        self.assertEqual(learn(session, Frame(Operation.REKEY, State.ACKNOWLEDGE, "hoge", b"\x00")), session)
        self.assertEqual(learn(session, native_complete(Operation.REKEY, key=b"short")), session)
        self.assertEqual(learn(session, Frame(Operation.REKEY, State.COMPLETE, "hoge", b"T")), session)

    def test_an_unusable_key_is_no_key(self) -> None:
        good = base64.b64encode(KEY).decode()
        for key, key_id in (
            (base64.b64encode(KEY[:31]).decode(), KEY_ID),
            (base64.b64encode(KEY + b"!").decode(), KEY_ID),
            ("not base64!", KEY_ID),
            (good + "\n", KEY_ID),
            (None, KEY_ID),
            (42, KEY_ID),
            (good, -1),
            (good, 2**32),
            (good, True),
            (good, "77"),
            (good, 77.0),
            (good, None),
        ):
            payload = json.dumps({"chatd": 1, "token": "T", "key": key, "key_id": key_id}).encode()
            learned = learn(native_member(), Frame(Operation.CREATE, State.COMPLETE, "hoge", payload))
            self.assertEqual((learned.token, learned.channel), ("T", None), (key, key_id))
        payload = json.dumps({"chatd": 1, "token": "T"}).encode()
        self.assertIsNone(learn(native_member(), Frame(Operation.JOIN, State.COMPLETE, "hoge", payload)).channel)

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
            Frame(Operation.REKEY, State.COMPLETE, "hoge", b'{"key": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ):
            self.assertEqual(learn(MEMBER, frame), MEMBER, frame)

    def test_learns_invitations(self) -> None:
        legacy = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b"INV"))
        self.assertEqual((legacy.invite, legacy.token), ("INV", "tok"))
        native = learn(MEMBER, Frame(Operation.INVITE, State.COMPLETE, "hoge", b'{"chatd": 1, "invite": "I2"}'))
        self.assertEqual(native.invite, "I2")


class OpenDatagramTests(SynchronousTestCase):
    def test_received_opens_with_the_channel(self) -> None:
        session = native_member()
        server = server_side()
        relay = server.seal(FrameType.RELAY, b"body")
        self.assertEqual(open_datagram(session, relay, sent=False), Opened(FrameType.RELAY, b"body"))

    def test_a_received_replay_is_refused(self) -> None:
        session = native_member()
        ack = server_side().seal(FrameType.KEEPALIVE_ACK, b"")
        self.assertEqual(open_datagram(session, ack, sent=False), Opened(FrameType.KEEPALIVE_ACK, b""))
        self.assertEqual(open_datagram(session, ack, sent=False), Unopened("counter 0 was seen before or is too old"))

    def test_forged_damaged_and_misdirected(self) -> None:
        session = native_member()
        server = server_side()
        forged = bytearray(server.seal(FrameType.RELAY, b"body"))
        forged[-1] ^= 1
        self.assertEqual(
            open_datagram(session, bytes(forged), sent=False), Unopened("sealed frame did not authenticate")
        )
        # The same key, but sealed as the client seals: not something the server sends.
        own = Channel(KEY, KEY_ID, Direction.TO_SERVER).seal(FrameType.MESSAGE, b"x")
        self.assertEqual(open_datagram(session, own, sent=False), Unopened("sealed frame did not authenticate"))
        other = server_side(bytes(32), 78).seal(FrameType.RELAY, b"body")
        self.assertEqual(
            open_datagram(session, other, sent=False),
            Unopened("sealed under key id 78, not this client's key id 77"),
        )
        self.assertEqual(
            open_datagram(session, b"\x00\x01", sent=False), Unopened("sealed frame shorter than its flags")
        )
        # None of these moved the replay window.
        assert session.channel is not None
        self.assertEqual(session.channel.newest_received, -1)

    def test_sent_opens_as_the_server_would_without_a_window(self) -> None:
        session = native_member()
        assert session.channel is not None
        message = session.channel.seal(FrameType.MESSAGE, b"hi")
        # Again and again: a replay still shows what it carries.
        for _ in range(2):
            self.assertEqual(open_datagram(session, message, sent=True), Opened(FrameType.MESSAGE, b"hi"))
        self.assertEqual(session.channel.newest_received, -1)
        self.assertEqual(session.channel.sent, 1)
        relay = server_side().seal(FrameType.RELAY, b"body")
        self.assertEqual(open_datagram(session, relay, sent=True), Unopened("sealed frame did not authenticate"))

    def test_no_key_or_not_native(self) -> None:
        sealed = server_side().seal(FrameType.RELAY, b"body")
        self.assertIsNone(open_datagram(MEMBER, sealed, sent=False))
        self.assertIsNone(open_datagram(MEMBER, sealed, sent=True))
        self.assertIsNone(open_datagram(native_member(), b"ann: hi", sent=False))
        self.assertIsNone(open_datagram(native_member(), b"", sent=True))
