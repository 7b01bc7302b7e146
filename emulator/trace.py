"""A CSR-named trace of the guest's MMIO (`vfnic serve --trace FILE`).

One line per BAR access the device sees (after the transport split it into
naturally aligned pieces), in the order they were served:

    #   time_s device  op bar offset    size register                          value
    0.000123 hfi1_0    R  0   0x000008  8    CCE_REVISION2                     0x0000000000000003
    0.000530 hfi1_0    W  0   0x602028  8    DC_DC8051_CFG_HOST_CMD_0          0x0000000000000301

`register` is the model's name for the offset, one word: the kernel's CSR
name for hfi1 ("SEND_CTXT_CTRL[3]", "RcvArray[17]", "PIO_SEND_BUFFER_SOP[2]+0x40",
"undeclared:NEAREST+0x8" where the model declares nothing). Time is
seconds since the trace was opened. Thread-safe: the devices of one process
share one file.
"""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("vfnic.trace")


class MmioTrace:
    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._file = open(path, "w", buffering=1 << 16)  # open until close()
        self._file.write("# time_s device op bar offset size register value\n")

    def record(self, device: str, op: str, bar: int, offset: int, size: int, name: str, value: int) -> None:
        line = (f"{time.monotonic() - self._start:.6f} {device} {op} {bar} {offset:#08x} {size} {name} "
                f"{value:#0{2 + 2 * size}x}\n")
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line)
            except OSError as e:
                log.error("MMIO trace to %s stopped: %s", self.path, e)
                self._file = None
                return
            self.lines += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError as e:
                    log.error("closing MMIO trace %s: %s", self.path, e)
                self._file = None
