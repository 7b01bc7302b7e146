"""PCI configuration space, built from capability objects.

    0x00 +-----------+-----------+      Type 0 header. Each byte has a write
         | device ID | vendor ID |      mask (bits the guest may change) and a
    0x04 |  status   |  command  |      write-1-to-clear mask; capabilities
    0x08 | class code      | rev |      add their own masks and a hook that
    0x0c | BIST|hdr|lat|cacheline|      runs after a write to their bytes.
    0x10 | BAR0 .. BAR5          |      BAR registers implement sizing: the
    0x2c | subsys ID | subsys vid|      writable bits are the address bits
    0x30 | expansion ROM (none)  |      above the BAR's size.
    0x34 |            | cap ptr  |
    0x3c | ...  | pin | line     |
    0x40 capabilities (PM -> PCIe -> MSI-X), 0x100 extended space (empty)

QEMU keeps its own copy of the BARs, the capability chain and the MSI/MSI-X
capabilities, but forwards every guest write here, so every field must accept
writes and behave like silicon; this is also what the project's own client
sees when tests talk to a function without QEMU in between.
"""
from __future__ import annotations

import struct
from collections.abc import Callable

from devmodel.pci_layout import Bar, BarKind, MsixLayout, PcieLink, PciIdentity

CONFIG_SIZE = 4096
CAP_START = 0x40

# header offsets
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_PROG, HEADER_TYPE = 0x08, 0x09, 0x0E
BAR0, SUBSYS_VENDOR_ID, SUBSYS_ID, ROM_ADDRESS = 0x10, 0x2C, 0x2E, 0x30
CAP_PTR, INTERRUPT_LINE, INTERRUPT_PIN = 0x34, 0x3C, 0x3D

COMMAND_WRITABLE = 0x0547  # IO, MEM, MASTER, PERR, SERR, INTx disable
STATUS_CAP_LIST = 0x0010
STATUS_W1C = 0xF900  # parity / abort / SERR error bits


class Capability:
    """One capability: its ID, size, initial bytes and masks. Subclasses fill
    `build()` and may react to writes in `written()`."""

    cap_id: int = 0
    size: int = 0

    def __init__(self) -> None:
        self.offset = 0

    def build(self, space: "ConfigSpace") -> None:
        raise NotImplementedError

    def written(self, space: "ConfigSpace", offset: int, size: int) -> None:
        """A guest write touched [offset, offset+size) inside this capability."""


class PowerManagement(Capability):
    """PM capability (ID 0x01), version 3, D0 and D3hot.

        +0 | PMC (version 3) | next | 0x01 |
        +4 | data | bridge | PMCSR: PowerState[1:0], NoSoftReset[3] |
    """

    cap_id, size = 0x01, 8

    def build(self, space):
        space.put16(self.offset + 2, 0x0003)
        space.put16(self.offset + 4, 0x0008)  # D0, NoSoftReset: D3hot->D0 keeps state
        space.writable(self.offset + 4, 2, 0x0003)
        space.clear_on_write(self.offset + 4, 2, 0x8000)


class PciExpress(Capability):
    """PCI Express capability (ID 0x10), version 2, endpoint.

        +0x00 | PCIe caps (v2, endpoint) | next | 0x10 |
        +0x04 | DevCap: MPS 512, FLR capable [28]          |
        +0x08 | DevSta (W1C) | DevCtl: Initiate FLR [15]   |
        +0x0c | LinkCap: max speed [3:0], max width [9:4]  |
        +0x10 | LinkSta: speed, width | LinkCtl            |
        +0x24 | DevCap2 | +0x28 DevCtl2 | +0x2c LinkCap2 (speeds vector) |
        +0x30 | LinkSta2 | LinkCtl2: target speed [3:0]    |

    Setting Initiate FLR runs the function's reset hook; the bit reads 0.
    """

    cap_id, size = 0x10, 0x3C
    DEVCTL_FLR = 1 << 15

    def __init__(self, link: PcieLink, on_flr: Callable[[], None]):
        super().__init__()
        self.link, self.on_flr = link, on_flr

    def build(self, space):
        o, link = self.offset, self.link
        space.put16(o + 2, 0x0002)  # version 2, device/port type 0 = endpoint
        space.put32(o + 4, (1 << 28) | 0x2 | (1 << 15))  # FLR, MPS 512, role-based error reporting
        space.put16(o + 8, 0x2810)  # MRRS 512, relaxed ordering, no snoop... defaults
        space.writable(o + 8, 2, 0x7FFF | self.DEVCTL_FLR)
        space.clear_on_write(o + 0x0A, 2, 0x000F)
        space.put32(o + 0x0C, link.speed | (link.width << 4) | (3 << 10))  # ASPM L0s+L1 support
        space.writable(o + 0x10, 2, 0x01C3)
        space.put16(o + 0x12, link.speed | (link.width << 4) | (1 << 12))  # slot clock
        space.put32(o + 0x24, 0x0000001F)  # completion timeout ranges
        space.writable(o + 0x28, 2, 0x041F)
        space.put32(o + 0x2C, ((1 << link.speed) - 1) << 1)  # supported link speeds vector
        space.put16(o + 0x30, link.speed)
        space.writable(o + 0x30, 2, 0x000F)

    def written(self, space, offset, size):
        devctl = self.offset + 8
        if offset <= devctl + 1 and offset + size > devctl + 1 and space.get16(devctl) & self.DEVCTL_FLR:
            space.put16(devctl, space.get16(devctl) & ~self.DEVCTL_FLR)
            self.on_flr()


class MsiX(Capability):
    """MSI-X capability (ID 0x11).

        +0 | Message Control: enable [15], mask [14], table size N-1 | next | 0x11 |
        +4 | table offset [31:3] | BIR [2:0] |
        +8 | PBA offset [31:3]   | BIR [2:0] |
    """

    cap_id, size = 0x11, 12

    def __init__(self, msix: MsixLayout):
        super().__init__()
        self.msix = msix

    def build(self, space):
        m = self.msix
        space.put16(self.offset + 2, m.vectors - 1)
        space.writable(self.offset + 2, 2, 0xC000)
        space.put32(self.offset + 4, m.table_offset | m.table_bar)
        space.put32(self.offset + 8, m.pba_offset | m.pba_bar)


class ConfigSpace:
    """4 KiB of PCIe config space: bytes, write masks, W1C masks, capabilities."""

    def __init__(self, identity: PciIdentity, bars: tuple[Bar, ...], capabilities: list[Capability], interrupt_pin: int = 1):
        self.identity, self.bars, self.capabilities = identity, bars, capabilities
        self.interrupt_pin = interrupt_pin
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self._owner: dict[int, Capability] = {}
        offset = CAP_START
        for cap in capabilities:
            cap.offset = offset
            for b in range(offset, offset + cap.size):
                self._owner[b] = cap
            offset += (cap.size + 3) & ~3
        if offset > 0x100:
            raise ValueError("capabilities do not fit in the first 256 bytes")
        self.reset()

    # -- byte helpers -----------------------------------------------------------
    def put16(self, off: int, v: int) -> None:
        struct.pack_into("<H", self.data, off, v & 0xFFFF)

    def put32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.data, off, v & 0xFFFFFFFF)

    def get16(self, off: int) -> int:
        return struct.unpack_from("<H", self.data, off)[0]

    def writable(self, off: int, size: int, mask: int) -> None:
        self.wmask[off:off + size] = mask.to_bytes(size, "little")

    def clear_on_write(self, off: int, size: int, mask: int) -> None:
        self.w1cmask[off:off + size] = mask.to_bytes(size, "little")

    # -- build / reset ------------------------------------------------------------
    def reset(self) -> None:
        self.data[:] = bytes(CONFIG_SIZE)
        self.wmask[:] = bytes(CONFIG_SIZE)
        self.w1cmask[:] = bytes(CONFIG_SIZE)
        ident = self.identity
        self.put16(VENDOR_ID, ident.vendor_id)
        self.put16(DEVICE_ID, ident.device_id)
        self.writable(COMMAND, 2, COMMAND_WRITABLE)
        self.put16(STATUS, STATUS_CAP_LIST if self.capabilities else 0)
        self.clear_on_write(STATUS, 2, STATUS_W1C)
        self.data[REVISION] = ident.revision
        self.data[CLASS_PROG:CLASS_PROG + 3] = ident.class_code.to_bytes(3, "little")
        self.writable(0x0C, 2, 0xFFFF)  # cache line size, latency timer
        self.put16(SUBSYS_VENDOR_ID, ident.subsystem_vendor_id)
        self.put16(SUBSYS_ID, ident.subsystem_id)
        for bar in self.bars:
            self._build_bar(bar)
        self.writable(INTERRUPT_LINE, 1, 0xFF)
        self.data[INTERRUPT_PIN] = self.interrupt_pin
        if self.capabilities:
            self.data[CAP_PTR] = self.capabilities[0].offset
        for i, cap in enumerate(self.capabilities):
            nxt = self.capabilities[i + 1].offset if i + 1 < len(self.capabilities) else 0
            self.data[cap.offset] = cap.cap_id
            self.data[cap.offset + 1] = nxt
            cap.build(self)

    def _build_bar(self, bar: Bar) -> None:
        off = BAR0 + 4 * bar.index
        low = (0x4 if bar.kind is BarKind.MEM64 else 0) | (0x8 if bar.prefetchable else 0)
        self.put32(off, low)
        self.writable(off, 4, ~(bar.size - 1) & 0xFFFFFFF0)
        if bar.kind is BarKind.MEM64:
            self.writable(off + 4, 4, (~(bar.size - 1) >> 32) & 0xFFFFFFFF)

    # -- guest access ---------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        touched: set[Capability] = set()
        for i, value in enumerate(data):
            off = offset + i
            old, wm, cm = self.data[off], self.wmask[off], self.w1cmask[off]
            self.data[off] = ((old & ~wm) | (value & wm)) & ~(value & cm) & 0xFF
            cap = self._owner.get(off)
            if cap is not None:
                touched.add(cap)
        for cap in touched:
            cap.written(self, offset, len(data))
