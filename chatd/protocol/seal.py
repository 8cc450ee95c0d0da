"""
The cryptography of native UDP frames: sealing, opening, replay protection.

Pure, like chatd.protocol.wire: no sockets, no clock, no logging. Modelled on
WireGuard's transport data messages and Mumble's UDP crypt. Each native member
gets a fresh random key of KEY_BYTES bytes, and a key id naming it, over the
TLS control connection. Every native datagram in both directions is sealed
with ChaCha20-Poly1305 under that key, with a counter nonce that never
repeats. The member's token never appears on the wire.

Sealed frame, version 1 (all integers unsigned, big-endian):

| offset | size | field |
|---|---|---|
| 0 | 1 | marker 0x00 (never a valid legacy RoomNameSize) |
| 1 | 1 | version = 1 |
| 2 | 1 | flags = 0 (reserved; other flags are refused as UnsupportedVersionError) |
| 3 | 4 | key id: names the key (assigned by the server; not the member's identity) |
| 7 | 8 | counter: per key and direction, starts at 0, strictly increasing for the sender |
| 15 | n | ciphertext of (1 byte frame type + body) |
| 15+n | 16 | Poly1305 tag |

 - The 15 header bytes are the associated data: authenticated, not encrypted.
   A receiver can therefore read the key id before it decrypts.
 - The 12-byte nonce is the direction (u32: 0 client to server, 1 server to
   client) followed by the counter (u64). One key serves both directions, and
   no nonce is ever used twice.
 - The frame type travels inside the encryption, so an observer cannot tell
   messages from keepalives. It still sees the key id, the counter, the size
   and the timing of each datagram.

API:

 - KEY_BYTES, HEADER_SIZE, TAG_SIZE, OVERHEAD (bytes a sealed frame adds to
   its body), REKEY_AFTER, REJECT_AFTER, DEFAULT_WINDOW, and Direction.
 - new_key() -> bytes and new_key_id() -> int: for the server, when a member
   joins.
 - peek_header(datagram) -> SealedHeader: reads the clear header. Raises only
   MalformedFrameError or UnsupportedVersionError, whatever the bytes.
 - Sealer(key): one per key. Its seal(direction, key_id, counter, frame_type,
   body) returns the datagram. Its open(direction, datagram) returns
   (header, frame_type, body). open raises AuthenticationFailedError for a
   wrong key, the wrong direction, or any damaged or forged byte, and
   otherwise only what peek_header raises.
 - ReplayWindow(size=DEFAULT_WINDOW): check(counter) -> bool and
   accept(counter), one per key and direction on the receiving side.

Sending: keep one counter per key and direction. Start it at 0 and add 1 for
every datagram. Ask for a new key once it reaches REKEY_AFTER. seal() refuses
any counter at or beyond REJECT_AFTER.

Receiving, in this order, so that a forged datagram never moves the window:

    header = peek_header(datagram)            # find the key by header.key_id
    if not window.check(header.counter):      # cheap: before any decryption
        raise ReplayedError(...)
    header, frame_type, body = sealer.open(direction, datagram)
    window.accept(header.counter)             # only once it authenticated
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from chatd.protocol.errors import AuthenticationFailedError, MalformedFrameError, ReplayedError, UnsupportedVersionError

SEALED_MARKER: Final = 0x00
SEALED_VERSION: Final = 1
KEY_BYTES: Final = 32
HEADER_SIZE: Final = 15
TAG_SIZE: Final = 16
OVERHEAD: Final = HEADER_SIZE + 1 + TAG_SIZE
"""Header, frame type and tag: a sealed frame is exactly this much longer than its body."""

REKEY_AFTER: Final = 2**60
"""A sender whose counter reaches this should ask for a new key (WireGuard's figure)."""
REJECT_AFTER: Final = 2**64 - 1 - 2**13
"""
No counter at or beyond this is ever sent or accepted (WireGuard's figure). It
stays clear of the u64 limit, so a counter can never wrap around to a nonce
that was already used.
"""

MAX_KEY_ID: Final = 2**32 - 1
DEFAULT_WINDOW: Final = 1024
"""
How many counters a ReplayWindow remembers, the newest included: a datagram
overtaken by fewer than this many later ones is still accepted. RFC 4303
recommends at least 64; reordering on a busy path can exceed that.
"""

_HEADER: Final = struct.Struct("!BBBIQ")
"""marker, version, flags, key id, counter: the associated data."""
_NONCE: Final = struct.Struct("!IQ")
"""direction, counter: the 96-bit ChaCha20-Poly1305 nonce."""


class Direction(IntEnum):
    """Which way a frame travels: the first 4 bytes of its nonce."""

    TO_SERVER = 0
    TO_CLIENT = 1


@dataclass(frozen=True, slots=True)
class SealedHeader:
    """The clear part of a sealed frame. Until open() succeeds, nothing vouches for it."""

    key_id: int
    counter: int
    flags: int


def new_key() -> bytes:
    """A fresh random key, for one member: never reuse it, even for the same person."""
    return secrets.token_bytes(KEY_BYTES)


def new_key_id() -> int:
    """
    A random key id from 1 to 2**32 - 1. 0 is left out, so that a zeroed
    header never names a key. The caller must pick again if the id is in use.
    """
    return secrets.randbelow(MAX_KEY_ID) + 1


def peek_header(datagram: bytes) -> SealedHeader:
    """
    Read the clear header of a sealed frame, so that a receiver can find the
    key by key id before decrypting anything. Raises MalformedFrameError or
    UnsupportedVersionError, and nothing else, whatever the bytes.
    """
    # The fast path: one unpack for the valid frames that make up the traffic.
    if len(datagram) >= OVERHEAD:
        marker, version, flags, key_id, counter = _HEADER.unpack_from(datagram)
        if marker == SEALED_MARKER and version == SEALED_VERSION and flags == 0:
            return SealedHeader(key_id, counter, flags)
    _refuse(datagram)


def _refuse(datagram: bytes) -> NoReturn:
    """
    Say why peek_header refused a datagram. The version and flags are judged
    before the length: a later version, or a flag that extends version 1, may
    define shorter frames. Refusing those as unsupported_version rather than
    malformed keeps the drop counters truthful.
    """
    size = len(datagram)
    if size == 0 or datagram[0] != SEALED_MARKER:
        raise MalformedFrameError("not a sealed frame")
    if size < 2:
        raise MalformedFrameError("sealed frame shorter than its version")
    if datagram[1] != SEALED_VERSION:
        raise UnsupportedVersionError(f"sealed frame version {datagram[1]}")
    if size < 3:
        raise MalformedFrameError("sealed frame shorter than its flags")
    if datagram[2] != 0:
        raise UnsupportedVersionError(f"sealed frame flags {datagram[2]:#04x}")
    raise MalformedFrameError(f"sealed frame of {size} bytes is shorter than {OVERHEAD}")


class Sealer:
    """
    Seals and opens frames under one key. Build one per key and keep it: the
    cipher object is built once, because building it costs about half as much
    again as sealing a small frame (measured: 0.7 us against 1.1 us).

    A Sealer holds no counters. The caller keeps the sending counter, one per
    key and direction, and a ReplayWindow for receiving.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = ChaCha20Poly1305(key)

    def seal(self, direction: Direction, key_id: int, counter: int, frame_type: int, body: bytes) -> bytes:
        """
        The datagram carrying frame_type and body. Raises ValueError when an
        argument is out of range (counter at or beyond REJECT_AFTER, key id
        not a u32, frame type not a byte). That is a bug in the caller, not
        something a peer can cause.
        """
        if not 0 <= counter < REJECT_AFTER:
            raise ValueError(f"counter {counter} is outside [0, REJECT_AFTER): a new key is overdue")
        try:
            header = _HEADER.pack(SEALED_MARKER, SEALED_VERSION, 0, key_id, counter)
        except struct.error:
            raise ValueError(f"key id {key_id} is not a u32") from None
        # The frame type must be joined to the body: the AEAD takes one
        # contiguous plaintext. Measured: no faster with encrypt_into.
        plaintext = bytes((frame_type,)) + body
        return header + self._aead.encrypt(_NONCE.pack(direction, counter), plaintext, header)

    def open(self, direction: Direction, datagram: bytes) -> tuple[SealedHeader, int, bytes]:
        """
        The header, frame type and body of a datagram sealed under this key
        for this direction. Raises AuthenticationFailedError when the tag does
        not verify, and MalformedFrameError or UnsupportedVersionError as
        peek_header does. Replays are not caught here: see ReplayWindow.
        """
        header = peek_header(datagram)
        # Views, not slices: the AEAD reads the bytes where they are.
        view = memoryview(datagram)
        try:
            plaintext = self._aead.decrypt(
                _NONCE.pack(direction, header.counter), view[HEADER_SIZE:], view[:HEADER_SIZE]
            )
        except InvalidTag:
            raise AuthenticationFailedError("sealed frame did not authenticate") from None
        return header, plaintext[0], plaintext[1:]


class ReplayWindow:
    """
    The counters already received under one key in one direction, as a
    sliding window (RFC 6479, as WireGuard uses it).

    A counter is fresh when it is below REJECT_AFTER and either newer than
    every counter accepted so far, or within `size` of the newest and not seen
    yet. Memory is one int of at most `size` bits, however many counters pass.

    check() and accept() are separate so that the receiver can check a counter
    before decrypting and accept it only once the datagram has authenticated.
    A forged datagram can then never move the window.
    """

    __slots__ = ("_bitmap", "_mask", "_newest", "_size")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 1:
            raise ValueError(f"a replay window is at least 1 counter wide, not {size}")
        self._size = size
        self._mask = (1 << size) - 1
        self._newest = -1
        """The newest accepted counter; -1 until one is."""
        self._bitmap = 0
        """Bit i is set when counter (newest - i) was accepted."""

    @property
    def size(self) -> int:
        return self._size

    @property
    def newest(self) -> int:
        """The newest accepted counter, or -1 before any."""
        return self._newest

    def check(self, counter: int) -> bool:
        """Whether counter is fresh. Changes nothing."""
        newest = self._newest
        if counter > newest:
            return counter < REJECT_AFTER
        offset = newest - counter
        # counter < 0 is tested here, off the common in-order path: no bit
        # stands for a negative counter, so the bitmap alone would call one fresh.
        return offset < self._size and counter >= 0 and not (self._bitmap >> offset) & 1

    def accept(self, counter: int) -> None:
        """
        Remember counter as received, sliding the window forward when it is
        the newest. Raises ValueError when the counter is not fresh. Accepting
        without checking is a bug: it would let a replay through.
        """
        if not self.check(counter):
            raise ValueError(f"counter {counter} is not fresh")
        shift = counter - self._newest
        if shift > 0:
            # The mask drops the counters that fall out of the window; past a
            # whole window's jump, none of the old ones remain.
            self._bitmap = ((self._bitmap << shift) | 1) & self._mask if shift < self._size else 1
            self._newest = counter
        else:
            self._bitmap |= 1 << -shift


class Channel:
    """
    One side's state for one key: seals what it sends, with a counter that
    never repeats, and opens what it receives, refusing replays.

    The server keeps one per native member (sending TO_CLIENT); a client keeps
    one for its membership (sending TO_SERVER). A new key means a new Channel.
    """

    __slots__ = ("_receiving", "_sealer", "_sending", "_window", "key", "key_id", "rekey_after", "sent")

    def __init__(
        self,
        key: bytes,
        key_id: int,
        sending: Direction,
        rekey_after: int = REKEY_AFTER,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.key = key
        self.key_id = key_id
        self._sealer = Sealer(key)
        self._sending = sending
        self._receiving = Direction.TO_CLIENT if sending is Direction.TO_SERVER else Direction.TO_SERVER
        self._window = ReplayWindow(window)
        self.rekey_after = rekey_after
        self.sent = 0
        """The counter the next sealed frame will carry."""

    @property
    def needs_rekey(self) -> bool:
        """Time to ask for a new key: the counter is near the end of what the key may carry."""
        return self.sent >= self.rekey_after

    @property
    def newest_received(self) -> int:
        return self._window.newest

    def seal(self, frame_type: int, body: bytes) -> bytes:
        counter = self.sent
        self.sent = counter + 1
        return self._sealer.seal(self._sending, self.key_id, counter, frame_type, body)

    def open(self, datagram: bytes, header: SealedHeader | None = None) -> tuple[int, bytes]:
        """
        The frame type and body of a datagram for this channel. Raises
        ReplayedError, AuthenticationFailedError, or what peek_header raises.
        Only an authenticated datagram moves the replay window.
        """
        if header is None:
            header = peek_header(datagram)
        if header.key_id != self.key_id:
            raise AuthenticationFailedError("sealed frame under another key")
        if not self._window.check(header.counter):
            raise ReplayedError(f"counter {header.counter} was seen before or is too old")
        _, frame_type, body = self._sealer.open(self._receiving, datagram)
        self._window.accept(header.counter)
        return frame_type, body
