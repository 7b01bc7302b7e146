"""Fast codecs for bit-field headers, derived from their construct declarations.

Every header and descriptor in vfnic is declared once, as a construct value.
Construct parses a 12-byte BTH in tens of microseconds, too slow for a
packet path that handles every packet in Python, so each fixed-size
bit-field declaration also yields a `BitFields` codec: the field positions are
computed from the declaration, never typed twice, and the codec is checked
against construct on a sample value when it is made.

    BTH = BitFields("BTH", c.BitStruct("opcode" / c.BitsInteger(8), ...), "big")
    word = BTH.word(packet, 8)          # the header as one int
    BTH.get(word, "dest_qp")            # a field
    BTH.shift["dest_qp"], BTH.mask[...] # for the hottest paths

Big-endian headers (the IB/OPA LRH, BTH, ...) are declared as a BitStruct in
wire order; little-endian words (PBC, RHF, SDMA descriptors) as
`c.ByteSwapped(c.BitStruct(...))`, fields listed from the top bit down.
"""
from __future__ import annotations

import random

import construct as c


def _inner_struct(declaration: c.Construct) -> c.Struct:
    node = declaration
    while not isinstance(node, c.Struct):
        node = getattr(node, "subcon", None)
        if node is None:
            raise TypeError(f"{declaration} does not wrap a BitStruct")
    return node


class BitFields:
    """Field positions of a fixed-size bit-field declaration."""

    def __init__(self, name: str, declaration: c.Construct, byteorder: str):
        if byteorder not in ("big", "little"):
            raise ValueError("byteorder is 'big' or 'little'")
        self.name = name
        self.declaration = declaration
        self.byteorder = byteorder
        self.size = declaration.sizeof()
        self.shift: dict[str, int] = {}
        self.mask: dict[str, int] = {}
        self.width: dict[str, int] = {}
        struct = _inner_struct(declaration)
        total = sum(sub.sizeof() for sub in struct.subcons)
        if total != 8 * self.size:
            raise AssertionError(f"{name}: fields cover {total} bits of {8 * self.size}")
        position = 0
        for sub in struct.subcons:
            width = sub.sizeof()
            if sub.name is not None:
                self.shift[sub.name] = total - position - width
                self.mask[sub.name] = (1 << width) - 1
                self.width[sub.name] = width
            position += width
        self.fields = tuple(self.shift)
        self._check()

    def _check(self) -> None:
        """The derived positions must agree with construct, field by field."""
        rng = random.Random(self.name)
        value = {name: rng.getrandbits(self.width[name]) for name in self.fields}
        built = self.declaration.build(value)
        if self.build(**value) != built:
            raise AssertionError(f"{self.name}: derived layout builds {self.build(**value).hex()}, "
                                 f"construct builds {built.hex()}")
        if self.parse(built) != value:
            raise AssertionError(f"{self.name}: derived layout disagrees with its declaration")

    # -- ints -------------------------------------------------------------
    def word(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        return int.from_bytes(data[offset:offset + self.size], self.byteorder)

    def get(self, word: int, name: str) -> int:
        return (word >> self.shift[name]) & self.mask[name]

    def put(self, word: int, name: str, value: int) -> int:
        shift, mask = self.shift[name], self.mask[name]
        return (word & ~(mask << shift)) | ((value & mask) << shift)

    def encode(self, **values: int) -> int:
        word = 0
        for name, value in values.items():
            mask = self.mask[name]
            if value & ~mask:
                raise ValueError(f"{self.name}.{name} = {value:#x} does not fit in {self.width[name]} bits")
            word |= value << self.shift[name]
        return word

    def decode(self, word: int) -> dict[str, int]:
        return {name: (word >> self.shift[name]) & self.mask[name] for name in self.fields}

    # -- bytes ------------------------------------------------------------
    def build(self, **values: int) -> bytes:
        return self.encode(**values).to_bytes(self.size, self.byteorder)

    def parse(self, data: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, int]:
        if len(data) - offset < self.size:
            raise ValueError(f"{self.name}: {len(data) - offset} bytes, need {self.size}")
        return self.decode(self.word(data, offset))

