"""The remote cable's stream: what two `vfnic serve` processes say to each
other over one TCP connection per cable (`devmodel/fabric/remote_cable.py`).

A stream is a sequence of frames; each side speaks first, with HELLO (or
REFUSED, and closes):

    frame   type u8 | flags u8 | length u16 (payload bytes) | payload      (big-endian)

    HELLO       magic "VFNICCBL" | version u16 | credits u16 | name: u8 length, UTF-8
                credits: the packets the sender takes before it returns credit
    POLLING     the sender's port polls: guid u64 | node type u8 | port u8 |
                device id u16 | device rev u8 | flags u8 ([0] FM security
                disabled, [1] mgmt allowed, [2] VerifyCap present) |
                VerifyCap PHY, fabric, link width: 3 x u32
    OFFLINE     the sender's port stopped polling: reason u8 (remote_cable.py `DOWN_REASONS`)
    TAKEN_DOWN  the sender's host took the cable down (`vfnic ctl link-down`) ...
    BROUGHT_UP  ... and brought it back (no payload)
    DOWN_SEEN   count u32: the sender has applied that many OFFLINE/TAKEN_DOWN
    MESSAGE     a link-layer message: kind u8 (remote_cable.py `MESSAGE_KINDS`) | data u64
    PACKET      flags [4:0] SC, [7] 16B; the payload is the packet, LRH through ICRC
    CREDIT      count u32: packets the sender has passed on since the last CREDIT
    HEARTBEAT   nothing to say (no payload); a silent stream is a broken one
    REFUSED     UTF-8 text: why the sender will not carry this cable; it closes

Every length is checked against its type's bounds (`PAYLOAD_BYTES`) as soon
as the four header bytes are in, so a hostile length never makes a reader
wait for, or buffer, more than one bounded frame. `FrameDecoder` cuts a
byte stream into frames and raises `CableProtocolError` at the first thing
that is not a frame.

Every frame is a construct value (`Frame`); the hot paths (a packet's
header, a count) use the `Fixed` codecs derived from the declarations.
"""
from __future__ import annotations

from enum import IntEnum

import construct as c

from common.fixed import Fixed

MAGIC = b"VFNICCBL"
VERSION = 1
HEADER_BYTES = 4
#: the largest packet a cable carries: a 9B packet's PktLen is 12 bits of dwords
MAX_PACKET_BYTES = 16384
MAX_NAME_BYTES = 64
MAX_REFUSAL_BYTES = 1024
PACKET_SC_MASK = 0x1F
PACKET_16B = 0x80
#: POLLING flags
IDENTITY_FM_SECURITY_DISABLED = 1 << 0
IDENTITY_MGMT_ALLOWED = 1 << 1
IDENTITY_VERIFY_CAP = 1 << 2


class FrameType(IntEnum):
    HELLO = 1
    POLLING = 2
    OFFLINE = 3
    TAKEN_DOWN = 4
    BROUGHT_UP = 5
    DOWN_SEEN = 6
    MESSAGE = 7
    PACKET = 8
    CREDIT = 9
    HEARTBEAT = 10
    REFUSED = 11


FrameHeader = c.Struct(
    "type" / c.Int8ub,
    "flags" / c.Int8ub,
    "length" / c.Int16ub,
)

Hello = c.Struct(
    "magic" / c.Const(MAGIC),
    "version" / c.Int16ub,
    "credits" / c.Int16ub,
    "name" / c.PascalString(c.Int8ub, "utf8"),
)

Identity = c.Struct(
    "guid" / c.Int64ub,
    "node_type" / c.Int8ub,
    "port_no" / c.Int8ub,
    "device_id" / c.Int16ub,
    "device_rev" / c.Int8ub,
    "flags" / c.Int8ub,
    "verify_cap_phy" / c.Int32ub,
    "verify_cap_fabric" / c.Int32ub,
    "verify_cap_link_width" / c.Int32ub,
)

Offline = c.Struct("reason" / c.Int8ub)
Count = c.Struct("count" / c.Int32ub)
Message = c.Struct("kind" / c.Int8ub, "data" / c.Int64ub)

#: a whole frame, payload by type
Frame = c.Struct(
    "type" / c.Int8ub,
    "flags" / c.Int8ub,
    "payload" / c.Prefixed(c.Int16ub, c.Switch(c.this.type, {
        FrameType.HELLO: Hello,
        FrameType.POLLING: Identity,
        FrameType.OFFLINE: Offline,
        FrameType.TAKEN_DOWN: c.Pass,
        FrameType.BROUGHT_UP: c.Pass,
        FrameType.DOWN_SEEN: Count,
        FrameType.MESSAGE: Message,
        FrameType.PACKET: c.GreedyBytes,
        FrameType.CREDIT: Count,
        FrameType.HEARTBEAT: c.Pass,
        FrameType.REFUSED: c.GreedyString("utf8"),
    })),
)

FRAME_HEADER = Fixed(FrameHeader)
IDENTITY = Fixed(Identity)
COUNT = Fixed(Count)
MESSAGE = Fixed(Message)
OFFLINE = Fixed(Offline)
_HELLO_FIXED = len(MAGIC) + 2 + 2 + 1

#: payload bytes each frame type may have: (least, most)
PAYLOAD_BYTES: dict[FrameType, tuple[int, int]] = {
    FrameType.HELLO: (_HELLO_FIXED, _HELLO_FIXED + MAX_NAME_BYTES),
    FrameType.POLLING: (IDENTITY.size, IDENTITY.size),
    FrameType.OFFLINE: (OFFLINE.size, OFFLINE.size),
    FrameType.TAKEN_DOWN: (0, 0),
    FrameType.BROUGHT_UP: (0, 0),
    FrameType.DOWN_SEEN: (COUNT.size, COUNT.size),
    FrameType.MESSAGE: (MESSAGE.size, MESSAGE.size),
    FrameType.PACKET: (1, MAX_PACKET_BYTES),
    FrameType.CREDIT: (COUNT.size, COUNT.size),
    FrameType.HEARTBEAT: (0, 0),
    FrameType.REFUSED: (0, MAX_REFUSAL_BYTES),
}
_BOUNDS = {int(kind): bounds for kind, bounds in PAYLOAD_BYTES.items()}


class CableProtocolError(ValueError):
    """The stream holds something that is not a well-formed frame."""


def frame(kind: FrameType, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame of `kind` around an encoded payload."""
    return FRAME_HEADER.pack(kind, flags, len(payload)) + payload


def hello(credits: int, name: str) -> bytes:
    return frame(FrameType.HELLO, Hello.build(dict(version=VERSION, credits=credits,
                                                   name=name.encode()[:MAX_NAME_BYTES].decode(errors="ignore"))))


def packet(data: bytes, sc: int, bypass: bool) -> bytes:
    return FRAME_HEADER.pack(FrameType.PACKET, sc & PACKET_SC_MASK | (PACKET_16B if bypass else 0), len(data)) + data


def count(kind: FrameType, value: int) -> bytes:
    return frame(kind, COUNT.pack(value))


def refused(text: str) -> bytes:
    return frame(FrameType.REFUSED, text.encode()[:MAX_REFUSAL_BYTES])


class FrameDecoder:
    """Cuts a byte stream into frames: `feed(data)` -> [(type, flags, payload)].

    It holds at most one incomplete frame (HEADER_BYTES + the largest
    payload its type allows), and checks the header the moment it is
    complete: an unknown type or an out-of-bounds length raises
    CableProtocolError, and the stream is not to be read any further."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.frames = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames = []
        pos, end = 0, len(buffer)
        unpack = FRAME_HEADER.unpack_from
        while end - pos >= HEADER_BYTES:
            kind, flags, length = unpack(buffer, pos)
            bounds = _BOUNDS.get(kind)
            if bounds is None:
                raise CableProtocolError(f"unknown frame type {kind:#04x} (frame {self.frames + 1})")
            if not bounds[0] <= length <= bounds[1]:
                raise CableProtocolError(f"a {FrameType(kind).name} frame of {length} bytes "
                                         f"(it has {bounds[0]}..{bounds[1]}; frame {self.frames + 1})")
            if end - pos < HEADER_BYTES + length:
                break
            start = pos + HEADER_BYTES
            frames.append((kind, flags, bytes(buffer[start:start + length])))
            pos = start + length
            self.frames += 1
        del buffer[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete."""
        return len(self._buffer)
