"""The data-path fuzz (tests/hfi1/test_datapath_fuzz.py runs it in CI,
benchmarks/soak at length): a guest programming garbage into two models on
one fabric, with the invariants test_datapath_fuzz's docstring lists."""
from __future__ import annotations

import random

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import PBC, RCV_ARRAY_ENTRY, SDMA_DESC0, SDMA_DESC1
from testkit.hfi1.datapath import (
    CREDIT_RETURN,
    EAGER,
    EAGER_BUFFER_BYTES,
    EAGER_BUFFERS,
    HDRQ_ENTRIES,
    HDRQ_ENTRY_DWORDS,
    HDRQS,
    PAYLOADS,
    RCV_TAIL_DMA,
    SDMA_HEAD_DMA,
    SDMA_RING,
    pair,
    pbc_for,
    settle,
    ud_packet,
)
from testkit.host import GUEST_BASE, GUEST_SIZE, FakeMemory, Host

SCRATCH = 0x1800000  # where garbage RcvArray entries may point (inside guest memory)
SCRATCH_SIZE = 0x400000


class WatchedDma:
    """The device's view of guest memory, remembering where it wrote."""

    def __init__(self, memory: FakeMemory):
        self.memory = memory
        self.writes: dict[int, int] = {}  # start offset -> longest length written there

    def read(self, addr: int, length: int) -> bytes:
        return self.memory.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)
        start = addr - self.memory.base
        self.writes[start] = max(self.writes.get(start, 0), len(data))


ALLOWED = [  # (start, end) offsets the driver gave the chip
    (CREDIT_RETURN, CREDIT_RETURN + 64 * 20),
    (SDMA_HEAD_DMA, SDMA_HEAD_DMA + 64 * 16),
    (RCV_TAIL_DMA, RCV_TAIL_DMA + 8),
    (HDRQS, HDRQS + 3 * HDRQ_ENTRIES * HDRQ_ENTRY_DWORDS * 4),
    (EAGER, EAGER + 3 * EAGER_BUFFERS * EAGER_BUFFER_BYTES),
    (SCRATCH, SCRATCH + SCRATCH_SIZE),
]


def stray_writes(dma: WatchedDma) -> list[tuple[int, int]]:
    return [(start, length) for start, length in dma.writes.items()
            if not any(lo <= start and start + length <= hi for lo, hi in ALLOWED)]


class Fuzzer:
    def __init__(self, rng: random.Random, scheduler, a, b):
        self.rng, self.scheduler, self.a, self.b = rng, scheduler, a, b
        self.engines = list(range(8))
        self.contexts = [a.kernel_contexts[0], a.vl15_context, a.ack_context]
        self.restarts = 0

    def address(self) -> int:
        """Mostly inside guest memory, sometimes not at all."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.6:
            return GUEST_BASE + PAYLOADS + rng.randrange(0x100000)
        if choice < 0.8:
            return rng.randrange(1 << 48)
        return GUEST_BASE + GUEST_SIZE - rng.randrange(1, 4096)  # runs off the end

    def pio(self) -> None:
        rng, a = self.rng, self.a
        hw = rng.choice(self.contexts + [rng.randrange(256)])
        window = 0x2000000 + ((hw & 0xFF) << 16)
        credits = a.driver.pio_credits.get(hw, 32)
        start = 64 * (a.driver.pio_fill.get(hw, 0) if rng.random() < 0.7 else rng.randrange(credits + 4))
        for q in range(rng.randrange(1, 25)):
            offset = start + 8 * q
            value = (PBC.encode(length_dws=rng.choice([rng.randrange(1 << 12), 20, 36, 8 * q + 2]),
                                vl=rng.randrange(16)) if q == 0 else rng.getrandbits(64))
            sop = q < 8 and rng.random() < 0.9
            size = rng.choice([8, 8, 8, 4, 2, 1])
            aligned = offset - offset % size
            a.device.bar_write(0, window + aligned + (0x1000000 if sop else 0), size, value & ((1 << 8 * size) - 1))

    def sdma(self) -> None:
        rng, a = self.rng, self.a
        engine = rng.choice(self.engines + [rng.randrange(16)])
        tail = a.driver.sdma_tail.get(engine, 0)
        ring = a.driver.sdma_ring(engine)
        count = rng.randrange(1, 5)
        for i in range(count):
            qw0 = SDMA_DESC0.encode(first=int(i == 0 or rng.random() < 0.1), last=int(i == count - 1 or
                                                                                    rng.random() < 0.1),
                                    byte_count=rng.randrange(1 << 14), address=self.address() & ((1 << 48) - 1))
            qw1 = SDMA_DESC1.encode(generation=(tail // SDMA_RING) & 3 if rng.random() < 0.9 else rng.randrange(4),
                                    int_req=rng.randrange(2), head_to_host=rng.randrange(2),
                                    ahg_mode=0 if rng.random() < 0.95 else rng.randrange(8))
            a.memory.write(ring + 16 * (tail % SDMA_RING), qw0.to_bytes(8, "little") + qw1.to_bytes(8, "little"))
            tail += 1
        a.driver.sdma_tail[engine] = tail
        new_tail = tail % SDMA_RING if rng.random() < 0.9 else rng.randrange(70000)
        a.driver.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, new_tail)

    def receive_garbage(self) -> None:
        rng, b = self.rng, self.b
        ctxt = rng.randrange(4)
        choice = rng.random()
        if choice < 0.4:
            b.driver.write_uctxt_csr(ctxt, cr.RCV_HDR_HEAD, rng.getrandbits(40))
        elif choice < 0.7:
            b.driver.write_uctxt_csr(ctxt, cr.RCV_EGR_INDEX_HEAD, rng.getrandbits(11))
        else:
            index = 64 * ctxt + rng.randrange(EAGER_BUFFERS)
            address = GUEST_BASE + SCRATCH + rng.randrange(SCRATCH_SIZE - (1 << 19)) if rng.random() < 0.5 \
                else rng.randrange(1 << 48)
            b.driver.dev.bar_write(0, cr.RCV_ARRAY + 8 * index, 8, RCV_ARRAY_ENTRY.encode(
                write_enable=1, size_code=rng.randrange(9), address_4k=(address >> 12) & ((1 << 36) - 1)))

    def good_packet(self) -> None:
        rng, a, b = self.rng, self.a, self.b
        packet = ud_packet(b.lid, a.lid, rng.choice([0x10, 0x12, 0x800002, 0]), bytes(rng.randrange(300)))
        if rng.random() < 0.5:
            hw = a.kernel_contexts[0]
            a.driver.pio_copy(hw, pbc_for(packet), packet)
        else:
            a.driver.sdma_send(rng.choice(self.engines), pbc_for(packet), packet)

    def restart(self) -> None:
        """What the driver does after halts and errors: restart contexts and
        engines, re-enable receive contexts, consume what arrived."""
        a, b = self.a, self.b
        for hw in self.contexts:
            a.driver.sc_disable(hw)
            a.driver.pio_fill[hw] = 0
            a.driver.sc_enable(hw)
        for engine in self.engines:
            a.driver.write_kctxt_csr(engine, cr.SEND_DMA_ENG_ERR_CLEAR, (1 << 64) - 1)
            a.driver.sdma_sendctrl(engine, halt=True)
        settle(a, b)
        for engine in self.engines:
            a.driver.sdma_sendctrl(engine, intenable=True, cleanup=True)
        settle(a, b)
        for engine in self.engines:
            a.driver.sdma_hw_start_up(engine)
            a.driver.sdma_running(engine)
        for ctxt in range(3):
            b.driver.write_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL, 0)
            b.driver.rcvctrl_enable(ctxt, dma_rtail=ctxt == 0, dont_drop=self.rng.random() < 0.5)

    def recover(self) -> None:
        """The driver's reaction to what just halted: sc_restart for a send
        context, the SDMA error recovery (halt wait, clean-up, start-up) for
        an engine."""
        a, b = self.a, self.b
        for hw in self.contexts:
            if a.device.pio.contexts[hw].halted:
                a.driver.sc_disable(hw)
                a.driver.pio_fill[hw] = 0
                a.driver.sc_enable(hw)
                self.restarts += 1
        halted = [e for e in self.engines if a.device.sdma.engines[e].state.value == "halted"]
        for engine in halted:
            a.driver.write_kctxt_csr(engine, cr.SEND_DMA_ENG_ERR_CLEAR, (1 << 64) - 1)
            a.driver.sdma_sendctrl(engine, intenable=True, cleanup=True)
        if halted:
            settle(a, b)
            for engine in halted:
                a.driver.sdma_hw_start_up(engine)
                a.driver.sdma_running(engine)
                self.restarts += 1

    def sequence(self) -> None:
        choice = self.rng.random()
        if choice < 0.35:
            self.pio()
        elif choice < 0.7:
            self.sdma()
        elif choice < 0.85:
            self.receive_garbage()
        else:
            self.good_packet()


def run_datapath_fuzz(sequences: int, seed: int = 20261130) -> dict:
    """The fuzz and its invariants (asserted); what it did, for the soak."""
    rng = random.Random(seed)
    with pair() as (scheduler, a, b):
        watched = {}
        for node in (a, b):
            watched[node.name] = WatchedDma(node.memory)
            node.device.attach(Host(watched[node.name], node.irq))
        fuzzer = Fuzzer(rng, scheduler, a, b)
        for n in range(sequences):
            fuzzer.sequence()
            scheduler.run()
            fuzzer.recover()
            if n % 500 == 499:
                scheduler.advance(0.001)
                assert not a.device.faults and not b.device.faults, (n, a.device.faults, b.device.faults)
            if n % 5000 == 4999:
                fuzzer.restart()
        assert not a.device.faults and not b.device.faults
        assert stray_writes(watched["a"]) == [] and stray_writes(watched["b"]) == []
        assert watched["a"].writes and watched["b"].writes
        refused = a.memory.refused + b.memory.refused
        assert refused > 0, "the fuzzer did point the chip outside guest memory"
        launched = a.stats()["pio"]["packets"] + sum(e["packets"] for e in a.stats()["sdma"].values())
        assert launched > sequences // 20 and b.stats()["rcv"]["delivered"] > sequences // 40, \
            "enough of the traffic got through to exercise the receive side"
        assert fuzzer.restarts > sequences // 20, "and the guest's mistakes did halt things"

        fuzzer.restart()
        settle(a, b)
        delivered_before = sum(c.delivered for c in b.device.rcv.contexts)
        b.driver.write_kctxt_csr(2, cr.RCV_CTXT_CTRL, 0)
        b.driver.rcvctrl_enable(2)
        packet = ud_packet(b.lid, a.lid, 0x12, b"still alive")
        a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
        a.driver.sdma_send(0, pbc_for(packet), packet)
        settle(a, b)
        assert sum(c.delivered for c in b.device.rcv.contexts) == delivered_before + 2
        rhf, header = b.driver.hdrq_entry(2, 1)
        assert b.driver.eager_bytes(2, rhf, 11) == b"still alive"
        return {"sequences": sequences, "launched": launched, "delivered": b.stats()["rcv"]["delivered"],
                "restarts": fuzzer.restarts, "refused_outside_guest_memory": refused,
                "stray_writes": 0, "internal_errors": 0}
