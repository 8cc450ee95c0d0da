"""
What one message costs the relay, in microseconds, without sockets: a
datagram handed to RelayProtocol.datagramReceived and fanned out to a room
of 10 on a fake port, for each kind of sender and room.

    python -m tests.relay_cost [--rounds 7] [--number 20000]

- legacy: a model-dialect datagram, relayed as text to 9 legacy members;
- native: a plain native member's sealed MESSAGE, opened, then sealed as a
  RELAY for each of 9 native members;
- delivery: a "delivery" member's sealed SEND, opened, numbered, checked
  against the duplicate window, then sealed as a POSTED for each of 9
  delivery members, and SENT back (only in a tree that has the feature).

Each figure is the best of C{--rounds} timeit runs of C{--number} messages,
as timeit advises (the others are the same code slowed by the machine). Run
it from two trees with PYTHONPATH to compare them side by side: it uses only
what both have. Not a test: a benchmark (docs/performance.md).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable, Sequence

from chatd.daemon.rooms import Member
from chatd.protocol.datagrams import FrameType, encode_legacy
from chatd.protocol.payloads import Dialect, RoomRequest
from chatd.protocol.seal import Channel, Direction
from tests.helpers import make_server

MESSAGE = b"x" * 100
ROOM_SIZE = 10

try:
    # The daemon's side of the feature, not only its wire: a tree whose daemon does not grant it has no delivery case.
    import chatd.daemon.delivery  # noqa: F401
    from chatd.protocol.delivery import encode_send
    from chatd.protocol.payloads import DELIVERY
except ImportError:  # a tree from before reliable delivery
    DELIVERY = None  # type: ignore[assignment]


def _room(dialect: Dialect, features: frozenset[str]) -> tuple[Callable[[], None], Callable[[], None]]:
    """A server with a room of ROOM_SIZE members of one kind; what sends one message from the first, and a reset."""
    server, clock, udp = make_server(messages_per_s=1e12, message_burst=1e12, bytes_per_s=1e15, byte_burst=1e15)
    clock.advance(1_700_000_000)
    store, relay = server.store, server.relay
    native = dialect is Dialect.NATIVE
    members = []
    for index in range(ROOM_SIZE):
        version = 1 if native else None
        # Only a tree with the feature knows the argument: a plain request is built without it.
        request = (
            RoomRequest(f"m{index}", version=version, features=features)
            if features
            else RoomRequest(f"m{index}", version=version)
        )
        entering = store.create_room("r", request, dialect) if index == 0 else store.join_room("r", request, dialect)
        entered: list[Member] = []
        entering.addCallback(entered.append)
        (member,) = entered
        store.bind_address(member, ("127.0.0.1", 5000 + index))
        members.append(member)
    sender = members[0]
    address = ("127.0.0.1", 5000)
    if not native:
        datagram = encode_legacy("r", sender.token, MESSAGE.decode())

        def send() -> None:
            relay.datagramReceived(datagram, address)

    else:
        channel = sender.channel
        assert channel is not None
        client = Channel(channel.key, channel.key_id, Direction.TO_SERVER)
        if features:
            counter = iter(range(1, 1 << 62))

            def send() -> None:
                relay.datagramReceived(client.seal(FrameType.SEND, encode_send(next(counter), "x" * 100)), address)

        else:

            def send() -> None:
                relay.datagramReceived(client.seal(FrameType.MESSAGE, MESSAGE), address)

    def reset() -> None:
        udp.written.clear()

    return send, reset


def measure(send: Callable[[], None], reset: Callable[[], None], rounds: int, number: int) -> float:
    """Microseconds per message, the best of C{rounds} runs."""
    best = min(timeit.repeat(send, setup=reset, repeat=rounds, number=number))
    return best / number * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.relay_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    arguments = parser.parse_args(argv)
    cases: list[tuple[str, Dialect, frozenset[str]]] = [
        ("legacy", Dialect.MODEL, frozenset()),
        ("native", Dialect.NATIVE, frozenset()),
    ]
    if DELIVERY is not None:
        cases.append(("delivery", Dialect.NATIVE, frozenset({DELIVERY})))
    for name, dialect, features in cases:
        send, reset = _room(dialect, features)
        cost = measure(send, reset, arguments.rounds, arguments.number)
        print(f"{name:9} {cost:6.2f} us per message, room of {ROOM_SIZE}")


if __name__ == "__main__":
    main()
