"""Faults a link injects into one direction of its traffic.

    link.set_fault("hfi1_0", Fault(FaultKind.DROP, rate=0.01, seed=7))
    link.set_fault("hfi1_1", Fault(FaultKind.CORRUPT, count=3))

A fault picks packets either at random (`rate`, a probability per packet) or
the next `count` packets; with both, it picks at `rate` until it has picked
`count`. Its random choices (which packets, which bit to flip) come from its
own `seed`, so a run repeats exactly for the same traffic.

    DROP       the packet never arrives
    CORRUPT    one bit flips (anywhere in the packet); the receiving chip
               finds the ICRC wrong and reports it as silicon does
    DELAY      the packet arrives `delay_ms` late (order is kept among the
               packets a DELAY fault holds back with the same delay)
    DUPLICATE  the packet arrives twice
    REORDER    the packet is held back `delay_ms` (default 1 ms), so the
               packets sent after it overtake it

Faults apply in the order they were set; a dropped packet meets no later
fault. Each fault counts what it did (`injected`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum

from .packet import Packet

REORDER_HOLD_MS = 1.0


class FaultKind(Enum):
    DROP = "drop"
    CORRUPT = "corrupt"
    DELAY = "delay"
    DUPLICATE = "duplicate"
    REORDER = "reorder"


class FaultError(ValueError):
    """A fault that cannot be set (a bad rate, count or delay)."""


@dataclass
class Fault:
    kind: FaultKind
    rate: float | None = None
    count: int | None = None
    seed: int = 0
    delay_ms: float = 0.0
    injected: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FaultKind):
            try:
                self.kind = FaultKind(self.kind)
            except ValueError:
                raise FaultError(f"unknown fault {self.kind!r} (one of: {', '.join(k.value for k in FaultKind)})") \
                    from None
        if self.rate is None and self.count is None:
            raise FaultError("a fault needs a rate or a count")
        if self.rate is not None and not 0.0 <= self.rate <= 1.0:
            raise FaultError(f"rate {self.rate} is not a probability between 0 and 1")
        if self.count is not None and (not isinstance(self.count, int) or self.count < 0):
            raise FaultError(f"count {self.count!r} is not a whole number of packets")
        if self.delay_ms < 0 or self.delay_ms > 60_000:
            raise FaultError(f"delay {self.delay_ms} ms is outside 0..60000")
        if self.kind is FaultKind.DELAY and self.delay_ms == 0:
            raise FaultError("a delay fault needs delay_ms")
        if self.kind is FaultKind.REORDER and self.delay_ms == 0:
            self.delay_ms = REORDER_HOLD_MS
        self._rng = random.Random(self.seed)

    def picks(self) -> bool:
        """Does this fault take the next packet?"""
        if self.count is not None and self.injected >= self.count:
            return False
        if self.rate is not None and self._rng.random() >= self.rate:
            return False
        self.injected += 1
        return True

    def corrupt(self, data: bytes) -> bytes:
        flipped = bytearray(data)
        bit = self._rng.randrange(8 * len(flipped))
        flipped[bit // 8] ^= 1 << (bit % 8)
        return bytes(flipped)

    def describe(self) -> dict:
        out = {"kind": self.kind.value, "seed": self.seed, "injected": self.injected}
        if self.rate is not None:
            out["rate"] = self.rate
        if self.count is not None:
            out["count"] = self.count
        if self.kind in (FaultKind.DELAY, FaultKind.REORDER):
            out["delay_ms"] = self.delay_ms
        return out


def apply_faults(faults: list[Fault], packet: Packet) -> list[tuple[float, Packet]]:
    """What arrives for one packet sent: (delay in seconds, packet) pairs,
    none if it was dropped."""
    delay = 0.0
    copies = 1
    for fault in faults:
        if not fault.picks():
            continue
        kind = fault.kind
        if kind is FaultKind.DROP:
            return []
        if kind is FaultKind.CORRUPT:
            packet = Packet(fault.corrupt(packet.data), packet.sc, packet.bypass, sealed=False)
        elif kind is FaultKind.DUPLICATE:
            copies += 1
        else:  # DELAY, REORDER
            delay += fault.delay_ms / 1000.0
    return [(delay, packet)] * copies
