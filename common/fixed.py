"""Fast codecs for fixed-size structs of whole integers and byte strings,
derived from their construct declarations.

vfio-user messages and hfi1's little-endian words are declared once, as
construct values. Construct is too slow for the paths that run once per MMIO
access, so `Fixed(declaration)` derives a `struct.Struct` from the
declaration's fields and checks that the two agree on the size:

    REGION_ACCESS = Fixed(c.Struct("offset" / c.Int64ul, "region" / c.Int32ul, "count" / c.Int32ul))
    offset, region, count = REGION_ACCESS.unpack_from(payload)

Fields may be fixed integers (`c.Int32ul`, ...), fixed byte strings
(`c.Bytes(8)`), or either wrapped in `c.Rebuild` (the rebuild is the
declaration's business; the fast codec packs what it is given). All
multi-byte integers must share one byte order.
"""
from __future__ import annotations

import struct

import construct as c


def _format_of(name: str, field: c.Construct) -> tuple[str, str | None]:
    """(struct format, byte order "<" or ">", None where order does not matter)."""
    if isinstance(field, c.Rebuild):
        field = field.subcon
    if isinstance(field, c.FormatField):
        order, code = field.fmtstr[0], field.fmtstr[1:]
        return code, (">" if order in ">!" else "<") if field.sizeof() > 1 else None
    if isinstance(field, c.Bytes) and isinstance(field.length, int):
        return f"{field.length}s", None
    raise TypeError(f"{name} is neither a fixed integer nor a fixed byte string")


class Fixed:
    """A fixed-size construct Struct with a `struct.Struct` derived from it."""

    def __init__(self, declaration: c.Struct):
        formats, names, orders = [], [], set()
        for sub in declaration.subcons:
            code, order = _format_of(sub.name, sub.subcon)
            formats.append(code)
            names.append(sub.name)
            orders.discard(None)
            orders.add(order)
        orders.discard(None)
        if len(orders) > 1:
            raise TypeError(f"{names} mixes byte orders; one struct cannot hold them")
        self.declaration = declaration
        self.names = tuple(names)
        self.struct = struct.Struct((orders.pop() if orders else "<") + "".join(formats))
        self.size = self.struct.size
        if self.size != declaration.sizeof():
            raise AssertionError(f"derived layout of {names} disagrees with its declaration")
        self.unpack_from = self.struct.unpack_from
        self.iter_unpack = self.struct.iter_unpack
        self.pack = self.struct.pack

    def parse(self, data: bytes, offset: int = 0) -> dict:
        return dict(zip(self.names, self.struct.unpack_from(data, offset)))

    def build(self, **fields) -> bytes:
        return self.struct.pack(*(fields.get(n, 0) for n in self.names))
