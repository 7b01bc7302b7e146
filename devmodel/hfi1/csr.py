"""Declaring HFI1 CSRs by their kernel names.

Every register in this model is named as `chip_registers.h` names it, and its
offset comes from the generated table, never from a literal: `csr("SEND_CTRL",
access=Access.SC, ...)`. Per-context and per-engine copies are `csr_array`s
with the stride the driver uses (`write_kctxt_csr` 0x100, `write_uctxt_csr`
0x1000, tables 8).

`Block` is the base of every chip block: it owns its register list (so a
block-level reset, such as the DC reset, can restore just its registers) and
its own model state beyond register values. It is built with the chip's
services (`services.ChipServices`: registers, configuration, events, DMA, the
link's outbox); a subclass takes the sibling blocks it talks to as further
constructor arguments, stored before `declare` runs.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from devmodel.regs import Register, register_array

from .chip_registers import CSR_OFFSETS
from .services import ChipServices

KCTXT_STRIDE = 0x100   # write_kctxt_csr: per send/receive context, per SDMA engine
UCTXT_STRIDE = 0x1000  # write_uctxt_csr: receive context "user" pages


def csr(name: str, **fields) -> Register:
    return Register(name, CSR_OFFSETS[name], **fields)


def csrs(*names: str, **fields) -> list[Register]:
    return [csr(name, **fields) for name in names]


def csr_array(name: str, count: int, stride: int = 8, base: int | None = None,
              per_index: Callable[[int], dict] | None = None, **fields) -> list[Register]:
    """`count` copies of `name`, `stride` bytes apart (`register_array`)."""
    start = CSR_OFFSETS[name] if base is None else base
    return register_array(Register(name, start, **fields), count, stride, per_index)


def kctxt(name: str, index: int) -> int:
    """The offset of context or engine `index`'s copy of a K-stride CSR
    (`write_kctxt_csr`)."""
    return CSR_OFFSETS[name] + KCTXT_STRIDE * index


def named(prefix: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every kernel CSR name starting with `prefix` (a block's plain registers)."""
    return [name for name in CSR_OFFSETS if name.startswith(prefix) and name not in exclude]


def field(value: int, shift: int, mask: int) -> int:
    return (value >> shift) & mask


class Block:
    """One chip block: declares its registers, keeps its own state."""

    name = ""

    def __init__(self, services: ChipServices):
        self.services = services
        self.regs = services.regs
        self.config = services.config
        self.log = logging.getLogger(f"vfnic.hfi1.{self.name}")
        self.registers: list[Register] = self.declare()

    def declare(self) -> list[Register]:
        raise NotImplementedError

    def reset(self) -> None:
        """Return model state (beyond register values) to power-on."""

    def reset_registers(self) -> None:
        for reg in self.registers:
            self.regs.set(reg.offset, reg.reset)
