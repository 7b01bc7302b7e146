"""A fake host for device models driven in-process: guest memory the model
reaches by DMA, MSI-X vectors as the guest counts them, and the time the
guest's driver waits on.

    scheduler = ManualScheduler()
    model = Hfi1Device(config, worker=scheduler.worker("hfi1"))
    host = FakeHost(scheduler)      # 1 MiB at GUEST_BASE, Msix, SimulatedTime
    model.attach(host)              # the model's `host.dma` and `host.irq`

A driver's wait is simulated time passing: the scheduler runs the devices'
events that fall due, so a scenario runs the same way every time and a
negative check ("no interrupt") is a statement about a stated stretch of
simulated time, not about how busy the test machine was.
"""
from __future__ import annotations

import os
import select
import threading
import time

from devmodel.base import DmaError
from devmodel.worker import ManualScheduler

GUEST_BASE = 0x1_0000_0000
GUEST_SIZE = 32 << 20
READ_COST_S = 1e-6  # simulated time one MMIO read takes


class SimulatedTime:
    """The time a driver sees when its device runs on a ManualScheduler:
    waiting lets the devices' events run, and each MMIO read lets
    READ_COST_S pass, as a CPU's read of a device register takes time."""

    def __init__(self, scheduler: ManualScheduler):
        self.scheduler = scheduler

    def now(self) -> float:
        return self.scheduler.clock.now()

    def wait(self, seconds: float) -> None:
        self.scheduler.advance(seconds)

    def mmio_read_done(self) -> None:
        self.scheduler.advance(READ_COST_S)


class RealTime:
    """The host's monotonic clock, for a device on worker threads (served
    over vfio-user): waiting is sleeping."""

    def now(self) -> float:
        return time.monotonic()

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def mmio_read_done(self) -> None:
        pass


class FakeMemory:
    """Guest RAM: `size` bytes at bus address `base`. DMA outside it is
    refused, as an IOMMU would, and counted."""

    def __init__(self, base: int = GUEST_BASE, size: int = GUEST_SIZE):
        self.base, self.memory = base, bytearray(size)
        self._lock = threading.Lock()
        self.refused = 0

    def _span(self, addr: int, length: int) -> slice:
        start = addr - self.base
        if start < 0 or length < 0 or start + length > len(self.memory):
            self.refused += 1
            raise DmaError(f"DMA to {addr:#x}+{length} outside guest memory")
        return slice(start, start + length)

    def read(self, addr: int, length: int) -> bytes:
        with self._lock:
            return bytes(self.memory[self._span(addr, length)])

    def write(self, addr: int, data: bytes) -> None:
        with self._lock:
            self.memory[self._span(addr, len(data))] = data


class MemfdMemory:
    """The guest's view of memfd-backed RAM it mapped into a server (DMA_MAP)."""

    def __init__(self, guest_memory, base: int = GUEST_BASE):
        self.guest_memory, self.base = guest_memory, base

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.guest_memory.mem[addr - self.base:addr - self.base + length])

    def write(self, addr: int, data: bytes) -> None:
        self.guest_memory.mem[addr - self.base:addr - self.base + len(data)] = data


class Msix:
    """MSI-X vectors as the guest counts them: `trigger` from a model in
    this process, or the eventfds of a served one. `wait_for` lets simulated
    time pass (the scheduler runs) until the vector has fired `count` times."""

    def __init__(self, scheduler: ManualScheduler):
        self.scheduler = scheduler
        self.triggered: list[int] = []
        self._lock = threading.Lock()
        self.eventfds: dict[int, int] = {}

    def trigger(self, vector: int) -> None:  # the device's side (in-process)
        with self._lock:
            self.triggered.append(vector)

    def _collect(self) -> None:
        if not self.eventfds:
            return
        ready, _, _ = select.select(list(self.eventfds.values()), [], [], 0)
        for fd in ready:
            vector = next(v for v, f in self.eventfds.items() if f == fd)
            with self._lock:
                self.triggered += [vector] * os.eventfd_read(fd)

    def count(self, vector: int) -> int:
        self._collect()
        with self._lock:
            return self.triggered.count(vector)

    def wait_for(self, vector: int, count: int = 1, timeout: float = 2.0) -> None:
        deadline = self.scheduler.clock.now() + timeout
        while self.count(vector) < count:
            if self.scheduler.clock.now() >= deadline:
                raise TimeoutError(f"MSI-X vector {vector} raised {self.count(vector)} times, wanted {count} "
                                   f"(in {timeout} s of simulated time); all: {self.triggered}")
            self.scheduler.advance(1e-4)


class Host:
    """What a model is attached to (`device.attach(host)`: its `dma`, `irq`
    and `shared_memory(bar)`), and the time its driver waits on. `shared`:
    BAR index -> a bytearray standing for the memory behind a shared BAR
    (what the PCI function's memfd is); a test acts as the guest by writing
    into it, or through `MappedBar`."""

    def __init__(self, dma, irq, time=None, shared: dict[int, bytearray] | None = None):
        self.dma, self.irq, self.time = dma, irq, time
        self.shared = shared or {}

    def shared_memory(self, bar: int) -> memoryview | None:
        memory = self.shared.get(bar)
        return memoryview(memory) if memory is not None else None


class MappedBar:
    """A model's BARs as a guest with the shared BARs' mmap areas mapped
    sees them, in-process: an access inside an area is a plain load or store
    of the host's shared memory (no callback reaches the model, as with a
    real mapping), anything else goes to `model.bar_read`/`bar_write`."""

    def __init__(self, model, host: Host):
        self.model, self.host = model, host
        self.areas = [(bar.index, start, start + size) for bar in model.layout().bars if bar.shared
                      for start, size in bar.mmap_areas]

    def _mapped(self, bar: int, offset: int) -> bytearray | None:
        for index, start, end in self.areas:
            if index == bar and start <= offset < end:
                return self.host.shared[bar]
        return None

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        memory = self._mapped(bar, offset)
        if memory is None:
            return self.model.bar_read(bar, offset, size)
        return int.from_bytes(memory[offset:offset + size], "little")

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        memory = self._mapped(bar, offset)
        if memory is None:
            self.model.bar_write(bar, offset, size, value)
        else:
            memory[offset:offset + size] = value.to_bytes(size, "little")

    def __getattr__(self, name: str):  # everything else (settle, stats, ...) is the model's
        return getattr(self.model, name)


class FakeHost(Host):
    """Guest RAM at GUEST_BASE (1 MiB unless `memory` is given), MSI-X and
    simulated time, all on `scheduler`."""

    def __init__(self, scheduler: ManualScheduler, memory: FakeMemory | None = None):
        super().__init__(memory or FakeMemory(size=1 << 20), Msix(scheduler), SimulatedTime(scheduler))
