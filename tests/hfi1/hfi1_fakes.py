"""A fake host for device-model tests: guest memory and interrupt delivery."""
from __future__ import annotations

import threading
import time

from devmodel.base import DmaError
from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1.config import ICODE_FUNCTIONAL_SIMULATOR

#: silicon-like capacities, faster-than-silicon timings (still asynchronous)
FAST = dict(link_training_s=0.02, sdma_halt_s=0.0005, sdma_cleanup_s=0.0005, freeze_s=0.0005)
#: The control-plane scenarios walk the functional-simulator probe (no
#: firmware loads, the fake 8051); test_silicon passes icode=0 for silicon.
SIMULATOR = dict(icode=ICODE_FUNCTIONAL_SIMULATOR)


class FakeDma:
    """Guest RAM: `size` bytes at bus address `base`."""

    def __init__(self, size: int = 1 << 20, base: int = 0x1_0000_0000):
        self.base = base
        self.memory = bytearray(size)
        self._lock = threading.Lock()

    def _span(self, addr: int, length: int) -> slice:
        start = addr - self.base
        if start < 0 or start + length > len(self.memory):
            raise DmaError(f"DMA to {addr:#x}+{length} outside guest memory")
        return slice(start, start + length)

    def read(self, addr: int, length: int) -> bytes:
        with self._lock:
            return bytes(self.memory[self._span(addr, length)])

    def write(self, addr: int, data: bytes) -> None:
        with self._lock:
            self.memory[self._span(addr, len(data))] = data


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


class FakeHost:
    def __init__(self):
        self.dma = FakeDma()
        self.irq = FakeIrq()



def make_device(**overrides) -> tuple[Hfi1Device, FakeHost]:
    device = Hfi1Device(ChipConfig(**{**FAST, **SIMULATOR, **overrides}))
    host = FakeHost()
    device.attach(host)
    return device, host
