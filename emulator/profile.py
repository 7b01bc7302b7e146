"""Where a device's trapped accesses go, counted cheaply (`vfnic serve --profile`).

    guest store/load --QEMU--> socket thread: PciFunction._bar_read/_bar_write
                                 |  count and time (perf_counter_ns) per (op, BAR, offset)
    model raises a vector ---> InterruptLines.trigger: eventfd written
                                 |  interrupt_signalled(): remember when
                               the device's next trapped access: the guest's
                               handler has run (an upper bound on delivery)

A `--trace` line costs a JSON encoding per access, enough to change what is
measured; this costs two clock reads and a dict update, so a latency
benchmark (benchmarks/latency.py) can count per message what the guest
trapped, what serving it cost the server, and how long an interrupt took to
reach the guest's handler. `snapshot(name_of)` names the offsets once, when
asked (the model's register names, a PIO buffer's offset within its block
dropped), so the hot path never builds a string.

The interrupt delay is measured from the first eventfd write not yet
followed by an access to the next access of the same device, whatever that
access is: in a ping-pong the guest makes no trapped access while it polls
its completion queue in user space, so the next one is its interrupt
handler's. Accesses and interrupts come from different threads; the
counters are plain Python updates under the GIL, good enough for figures
over hundreds of messages, not for accounting.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable

_clock = time.perf_counter_ns
#: "PIO_SEND_BUFFER_SOP[2]+0x40" -> "PIO_SEND_BUFFER_SOP[2]": one row per buffer, not per qword
_WITHIN = re.compile(r"(?<=\])\+0x[0-9a-f]+$")


class AccessProfile:
    def __init__(self):
        #: (op, bar, offset) -> [accesses, nanoseconds serving them]
        self.accesses: dict[tuple[str, int, int], list[int]] = {}
        self.interrupts = 0
        #: interrupts followed by an access, and the nanoseconds from each eventfd write to that access
        self.delivered = 0
        self.delivery_ns = 0
        self._signalled_at = 0

    def record(self, op: str, bar: int, offset: int, started_ns: int) -> None:
        """An access served, which began at `started_ns` (`perf_counter_ns`)."""
        now = _clock()
        signalled = self._signalled_at
        if signalled:
            self._signalled_at = 0
            self.delivered += 1
            self.delivery_ns += started_ns - signalled
        entry = self.accesses.get((op, bar, offset))
        if entry is None:
            self.accesses[(op, bar, offset)] = [1, now - started_ns]
        else:
            entry[0] += 1
            entry[1] += now - started_ns

    def interrupt_signalled(self) -> None:
        self.interrupts += 1
        if not self._signalled_at:
            self._signalled_at = _clock()

    def snapshot(self, name_of: Callable[[int, int], str]) -> dict:
        """Totals so far, accesses by register name (`name_of(bar, offset)`)."""
        registers: dict[str, dict] = {}
        for (op, bar, offset), (count, ns) in list(self.accesses.items()):
            name = _WITHIN.sub("", name_of(bar, offset))
            row = registers.setdefault(f"{op} {name}", {"accesses": 0, "ns": 0})
            row["accesses"] += count
            row["ns"] += ns
        return {"registers": registers, "interrupts": self.interrupts,
                "interrupts_delivered": self.delivered, "interrupt_delivery_ns": self.delivery_ns}
