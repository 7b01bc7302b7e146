"""What a device model declares about its PCI function.

A device model describes itself with these values; the PCI function layer
(`emulator.pci.function`) turns them into config space, vfio-user regions and
interrupt tables. With `devmodel/base.py` this is the contract between device
models and the layer that hosts them: the transport imports both, device
models never import the transport (tests/test_layering.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class BarKind(Enum):
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(frozen=True)
class Bar:
    """One memory BAR.

    `shared` BARs are backed by a shared-memory file the client may mmap; the
    `mmap_areas` (page-aligned (offset, size) pairs) are the parts the guest
    touches without a trap. Everything else is trapped: each access becomes a
    REGION_READ/REGION_WRITE and reaches the model's `bar_read`/`bar_write`.
    """

    index: int
    size: int
    kind: BarKind = BarKind.MEM64
    prefetchable: bool = False
    shared: bool = False
    mmap_areas: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.size < 4096 or self.size & (self.size - 1):
            raise ValueError(f"BAR{self.index} size {self.size:#x} is not a power of two >= 4 KiB")
        if not 0 <= self.index <= 5 or (self.kind is BarKind.MEM64 and self.index == 5):
            raise ValueError(f"BAR index {self.index} cannot hold a {self.kind.value} BAR")


@dataclass(frozen=True)
class PciIdentity:
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int = 0
    subsystem_id: int = 0
    class_code: int = 0xFF0000  # base class, subclass, prog-if
    revision: int = 0


@dataclass(frozen=True)
class MsixLayout:
    """Where the MSI-X table and PBA live. The PCI function layer serves both
    ranges itself; they never reach the model's bar_read/bar_write."""

    vectors: int
    table_bar: int
    table_offset: int
    pba_bar: int
    pba_offset: int


@dataclass(frozen=True)
class PcieLink:
    """Link capability and status reported in the PCI Express capability."""

    speed: int = 3  # 1=2.5GT/s 2=5 3=8 (gen3)
    width: int = 16


@dataclass(frozen=True)
class PciLayout:
    identity: PciIdentity
    bars: tuple[Bar, ...]
    msix: MsixLayout | None = None
    pcie_link: PcieLink = field(default_factory=PcieLink)
    interrupt_pin: int = 1  # INTA
