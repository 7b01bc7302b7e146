"""The contract between a device model and the PCI function that hosts it
(with `devmodel/pci_layout.py`; the transport imports these, device models
never import the transport).

The hosting layer calls `attach(host)` once before any access, then the
bar_read/bar_write callbacks for trapped BAR accesses (naturally aligned, 1, 2,
4 or 8 bytes, little-endian values), `reset()` on device reset or FLR, and
`close()` when the server stops. Callbacks run on the transport's thread and
must return quickly: long work (DMA engines, timers) runs on the model's own
worker.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from devmodel.pci_layout import PciLayout


class DmaError(Exception):
    """The device touched guest memory that is not mapped (or not writable)."""


class Dma(Protocol):
    """Guest memory as the device sees it. Thread-safe. Every access is
    bounds-checked against the client's DMA maps; a bad address raises
    DmaError, never a host crash."""

    def read(self, addr: int, length: int) -> bytes: ...
    def write(self, addr: int, data: bytes) -> None: ...


class Interrupts(Protocol):
    """Interrupt delivery. `trigger(vector)` signals an MSI-X vector when the
    guest enabled MSI-X (latching the PBA bit when the vector is masked or has
    no eventfd), else MSI, else asserts INTx. Thread-safe."""

    def trigger(self, vector: int) -> None: ...


class DeviceHost(Protocol):
    """What hosts a model. `shared_memory(bar)` is the memory behind a
    `shared` BAR (`pci_layout.Bar`), the whole BAR from offset 0, which the
    guest reads and writes directly in the BAR's `mmap_areas` (no trap, no
    callback): the model polls it. None when the BAR is not shared or the
    host has none (a model then serves the BAR trapped). A unit test may
    hand a plain bytearray's memoryview and act as the guest by writing
    into it."""

    dma: Dma
    irq: Interrupts

    def shared_memory(self, bar: int) -> memoryview | None: ...


class DeviceModel(ABC):
    """A PCI device model."""

    #: short name used by `vfnic serve --device NAME`
    name: str = ""

    @abstractmethod
    def layout(self) -> PciLayout:
        """IDs, BARs, MSI-X placement, PCIe link."""

    def attach(self, host: DeviceHost) -> None:
        self.host = host

    @abstractmethod
    def bar_read(self, bar: int, offset: int, size: int) -> int: ...

    @abstractmethod
    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None: ...

    @abstractmethod
    def reset(self) -> None:
        """Return every register to its reset value (device reset, FLR)."""

    def close(self) -> None:  # noqa: B027 -- optional: a model without workers has nothing to stop
        """Stop workers; called once when the server stops."""

    def stats(self) -> dict:
        """Counters worth showing (e.g. undeclared register accesses)."""
        return {}

    def register_name(self, bar: int, offset: int) -> str:
        """What the driver calls the register at `offset` of `bar` (for traces)."""
        return f"BAR{bar}+{offset:#x}"

    def set_option(self, key: str, value: str) -> None:
        """Change a device option that may change while the device runs (the
        registry's `runtime_options`: `vfnic serve --option`, the control
        socket's `tune`); ValueError for an unknown key or value."""
        raise ValueError(f"{self.name or type(self).__name__} has no option {key!r} that changes while it runs")

    def ports(self) -> list:
        """The device's fabric ports (devmodel/fabric): objects with a `name`,
        the `link` they are cabled to (or None) and `status() -> dict`."""
        return []
