"""Registers as data.

A device block declares its registers as a table of `Register` values (name,
offset, reset value, access kind, optional hooks) and hands the table to a
`RegisterFile`, which implements the access semantics once for every block:

    access  read returns        a write of value v
    ------  ------------------  ---------------------------------------------
    RW      stored value        stores v (only the `writable` bits)
    RO      stored value        ignored (the model itself updates the value)
    W1C     stored value        clears the bits set in v
    W1S     stored value        sets the bits set in v
    SC      stored value        stores v, runs the hook, then the bits in
                                `self_clearing` drop back to 0
    WO      0                   stores v (for the hook)

A register of one kind may hold status fields of another: `w1c` names the
bits of an RW register that a write of 1 clears and a write of 0 leaves
alone (RCV_TID_FLOW_TABLE's SeqMismatch and GenMismatch, which software
clears in the same write that reprograms the flow's control fields).

Sub-word accesses (a 4-byte access to half of a 64-bit CSR) merge into the
register: only the bytes written are affected. Hooks: `on_write(old, new)`
runs after the value is stored; `on_read(stored) -> value` computes live
status. An access to an offset that no table declares is served as plain
storage, logged once with the nearest declared name (the first few offsets,
then a summary a minute: common/ratelog.py), and counted in `undeclared`, so
that gaps in a model are visible.
"""
from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum

from common.ratelog import RateLimitedLog

ALL_ONES = (1 << 64) - 1


def lanes(byte: int, size: int) -> int:
    """The bit mask of `size` bytes starting at byte `byte` of a word."""
    return ((1 << (8 * size)) - 1) << (8 * byte)


def extract_lanes(word: int, byte: int, size: int) -> int:
    """A sub-word access's value: `size` bytes of `word` from byte `byte`."""
    return (word >> (8 * byte)) & ((1 << (8 * size)) - 1)


def merge_lanes(word: int, byte: int, size: int, value: int, writable: int = ALL_ONES) -> int:
    """`word` with a sub-word write of `value` merged in: only the written
    bytes (and of those only the `writable` bits) change."""
    mask = lanes(byte, size) & writable
    return (word & ~mask) | ((value << (8 * byte)) & mask)


class Access(Enum):
    RW = "RW"
    RO = "RO"
    W1C = "W1C"
    W1S = "W1S"
    SC = "SC"
    WO = "WO"


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    reset: int = 0
    access: Access = Access.RW
    width: int = 8
    writable: int = ALL_ONES
    self_clearing: int = ALL_ONES
    #: status bits inside an RW/SC register that are write-1-to-clear
    w1c: int = 0
    on_write: Callable[[int, int], None] | None = None
    on_read: Callable[[int], int] | None = None
    doc: str = ""


def register_array(template: Register, count: int, stride: int,
                   per_index: Callable[[int], dict] | None = None) -> list[Register]:
    """`count` copies of `template` (per-context, per-engine CSRs), named
    NAME[i], at `offset + i * stride`. `per_index(i)` returns the fields
    (usually hooks bound to `i`) that differ between copies."""
    return [replace(template, name=f"{template.name}[{i}]", offset=template.offset + i * stride,
                    **(per_index(i) if per_index else {}))
            for i in range(count)]


class RegisterFile:
    """Storage and access semantics for one address space of registers."""

    def __init__(self, name: str, registers: Iterable[Register] = (), log: logging.Logger | None = None):
        self.name = name
        self.log = log or logging.getLogger(f"vfnic.{name}")
        self._regs: dict[int, Register] = {}
        self._values: dict[int, int] = {}
        self._sorted: list[int] = []
        self._covering: dict[int, Register] = {}  # every byte offset -> its register
        self._extra: dict[int, int] = {}  # undeclared storage, by 8-byte-aligned offset
        self.undeclared: Counter[int] = Counter()
        self._undeclared_log = RateLimitedLog(self.log, "undeclared offsets")
        self.declare(registers)

    # -- declaration -------------------------------------------------------
    def declare(self, registers: Iterable[Register]) -> None:
        for reg in registers:
            if reg.width not in (4, 8) or reg.offset % reg.width:
                raise ValueError(f"{reg.name}: width {reg.width} at offset {reg.offset:#x} is not natural")
            if reg.offset in self._regs:
                raise ValueError(f"{reg.name} and {self._regs[reg.offset].name} share offset {reg.offset:#x}")
            self._regs[reg.offset] = reg
            self._values[reg.offset] = reg.reset
            for byte in range(reg.offset, reg.offset + reg.width):
                self._covering[byte] = reg
        self._sorted = sorted(self._regs)

    def flush_log(self) -> None:
        """Write the summary of undeclared accesses held back (the device closes)."""
        self._undeclared_log.flush()

    def __contains__(self, name: str) -> bool:
        return any(r.name == name for r in self._regs.values())

    def register(self, name: str) -> Register:
        for reg in self._regs.values():
            if reg.name == name:
                return reg
        raise KeyError(name)

    # -- model-side access (no guest semantics) ----------------------------
    def get(self, offset: int) -> int:
        return self._values[offset]

    def set(self, offset: int, value: int) -> None:
        reg = self._regs[offset]
        self._values[offset] = value & ((1 << (8 * reg.width)) - 1)

    def add(self, offset: int, n: int) -> None:
        """A counter register counts `n` more, wrapping at its width."""
        self._values[offset] = (self._values[offset] + n) & ((1 << (8 * self._regs[offset].width)) - 1)

    def set_bits(self, offset: int, bits: int) -> None:
        self._values[offset] |= bits

    def clear_bits(self, offset: int, bits: int) -> None:
        self._values[offset] &= ~bits

    def reset(self) -> None:
        for off, reg in self._regs.items():
            self._values[off] = reg.reset
        self._extra.clear()

    # -- guest-side access ---------------------------------------------------
    def _find(self, offset: int, size: int) -> Register | None:
        reg = self._covering.get(offset)
        if reg is not None and offset + size <= reg.offset + reg.width:
            return reg
        return None

    def name_of(self, offset: int) -> str:
        """The kernel name of the register at `offset` ("NAME", "NAME+0x4"
        inside it), or "undeclared:NEAREST" when none is declared there."""
        i = bisect.bisect_right(self._sorted, offset) - 1
        if i >= 0:
            reg = self._regs[self._sorted[i]]
            if offset < reg.offset + 8:
                return reg.name if offset == reg.offset else f"{reg.name}+{offset - reg.offset:#x}"
        return f"undeclared:{self.nearest(offset).replace(' ', '_')}"

    def nearest(self, offset: int) -> str:
        if not self._sorted:
            return "nothing declared"
        i = bisect.bisect_right(self._sorted, offset) - 1
        if i < 0:
            reg = self._regs[self._sorted[0]]
            return f"{reg.offset - offset:#x} before {reg.name}"
        reg = self._regs[self._sorted[i]]
        return f"{reg.name}+{offset - reg.offset:#x}"

    def _note_undeclared(self, offset: int, kind: str) -> None:
        key = offset & ~7
        if key not in self.undeclared:
            self._undeclared_log.warning("%s: %s of undeclared offset %#x (%s)", self.name, kind, offset, self.nearest(offset))
        self.undeclared[key] += 1

    def read(self, offset: int, size: int) -> int:
        reg = self._covering.get(offset)
        if reg is None or offset + size > reg.offset + reg.width:
            self._note_undeclared(offset, "read")
            return extract_lanes(self._extra.get(offset & ~7, 0), offset & 7, size)
        value = self._values[reg.offset]
        if reg.on_read is not None:
            value = reg.on_read(value)
        elif reg.access is Access.WO:
            value = 0
        if size == 8:
            return value
        return extract_lanes(value, offset - reg.offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        reg = self._find(offset, size)
        if reg is None:
            self._note_undeclared(offset, "write")
            key = offset & ~7
            self._extra[key] = merge_lanes(self._extra.get(key, 0), offset & 7, size, value)
            return
        byte = offset - reg.offset
        old = self._values[reg.offset]
        access = reg.access
        if access is Access.RO:
            return
        if access is Access.W1C:
            new = old & ~merge_lanes(0, byte, size, value)
        elif access is Access.W1S:
            new = old | merge_lanes(0, byte, size, value, reg.writable)
        else:
            new = merge_lanes(old, byte, size, value, reg.writable & ~reg.w1c)
            if reg.w1c:
                new &= ~(merge_lanes(0, byte, size, value) & reg.w1c)
        self._values[reg.offset] = new
        if reg.on_write is not None:
            reg.on_write(old, new)
        if access is Access.SC:
            self._values[reg.offset] &= ~reg.self_clearing
