"""A fake host for device models driven in-process: guest memory the model
reaches by DMA, and MSI-X vectors as the guest counts them.

    memory = FakeMemory()                        # 32 MiB at bus address GUEST_BASE
    model.attach(Host(memory, Msix(scheduler)))  # the model's `host.dma` and `host.irq`
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass

from devmodel.base import DmaError
from devmodel.worker import ManualScheduler

GUEST_BASE = 0x1_0000_0000
GUEST_SIZE = 32 << 20


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


class FakeIrq:
    """Records `trigger(vector)` calls; tests wait for them with a deadline."""

    def __init__(self):
        self.triggered: list[int] = []
        self._cv = threading.Condition()

    def trigger(self, vector: int) -> None:
        with self._cv:
            self.triggered.append(vector)
            self._cv.notify_all()

    def count(self, vector: int) -> int:
        with self._cv:
            return self.triggered.count(vector)

    def wait_for(self, vector: int, count: int = 1, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while self.triggered.count(vector) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"MSI-X vector {vector} raised {self.triggered.count(vector)} times, "
                                       f"wanted {count}; all: {self.triggered}")
                self._cv.wait(left)


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


@dataclass
class Host:
    """What a model is attached to (`device.attach(host)`)."""

    dma: object
    irq: object


class FakeHost(Host):
    """A megabyte of guest RAM at GUEST_BASE and recorded interrupts."""

    def __init__(self):
        super().__init__(FakeMemory(size=1 << 20), FakeIrq())
