"""Server CPU per packet in the hfi1 model, host-only (no guests, no QEMU).

Two small-config Hfi1Devices cabled back to back (testkit/hfi1/datapath.py
`pair`), brought up by the testkit driver to ports Active with kernel
contexts, engines running and B's kernel receive contexts interrupting, then:

  small  N UD SEND_ONLY packets with a 2-byte payload, one PIO block each,
         pio_copy'd into A's kernel send context (8 trapped stores through
         `bar_write`): launch -> egress checks -> link -> B's ingress ->
         receive context (RHF, header, eager) -> RcvAvail interrupt
  4k     N UD packets with a 4096-byte payload through an SDMA engine
         (descriptors in guest memory, the TAIL doorbell, HEAD_TO_HOST)

After each packet B's driver consumes it as hfi1's kernel receive path does
(a `RcvHdrHead` write with the interrupt count, which re-arms RcvAvail),
so every packet takes the whole path, interrupt included, the way a
ping-pong does.

Two ways of running the chip events, one after the other in one run:

  manual    the ManualScheduler, on this thread: every chip event of both
            devices in deadline order, nothing else; the model's own CPU,
            the same from run to run
  threaded  the same two devices moved onto one ThreadScheduler, as `vfnic
            serve` runs them: the engine thread wakes for the launch or the
            doorbell, the coalescing timer is a timed wait, and this thread
            (the guest's driver, doing what the socket thread would) sleeps
            until B's interrupt; the served path without the vfio-user
            transport

  wire      two more models, each served on a socket by the project's
            vfio-user server (emulator/server.py, a thread each), reached
            by the project's client as QEMU reaches it: stores posted, reads
            round trips, guest memory through DMA_MAP (emulator/dma.py),
            MSI-X as eventfds; chip events on the ManualScheduler as in
            `manual`. Printed apart: the two socket threads' CPU per packet
            (the transport and the BAR accesses it serves, what `vfnic
            serve`'s socket threads spend) and this thread's (the chip
            events, and the client, which is QEMU's work, not the server's)

The driver's own work (building frames, writing descriptors) is done once
ahead where it can be, and is included where it cannot (a few us).

  benchmarks/packet_cpu [--count N] [--rounds R] [--profile] [--modes manual,threaded,wire]

Prints, per kind: CPU us per packet (time.process_time, the median of R
rounds), packets/s (wall clock), chip events per packet, and with
`--profile` a cProfile top-20 (by internal time) of one more manual round.
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import threading
import time

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RHF
from devmodel.worker import ThreadScheduler
from testkit.hfi1.datapath import HDRQ_ENTRY_DWORDS, pair, pbc_for, ud_packet
from testkit.hfi1.guest import IS_RCVAVAIL_START

UD_QP = 0x12  # init_qpmap_table: QP 0x12 -> kernel receive context 2
RCV_CONTEXT = 2
SMALL_PAYLOAD = 2
LARGE_PAYLOAD = 4096
SOP_ALIAS = 0x1000000
PIO_SPACE = 0x2000000


class InterruptSignal:
    """B's MSI-X as the threaded mode sees it: the testkit's count, plus an
    event this thread sleeps on (a guest's interrupt handler runs when the
    vector fires)."""

    def __init__(self, msix):
        self.msix, self.fired = msix, threading.Event()

    def trigger(self, vector: int) -> None:
        self.msix.trigger(vector)
        self.fired.set()


class Bench:
    """One pair, up; `small(n)` and `large(n)` send n packets from A to B."""

    def __init__(self, scheduler, a, b, wire: bool = False):
        self.scheduler, self.a, self.b = scheduler, a, b
        self.wire = wire
        self.hw = a.kernel_contexts[0]
        packet = ud_packet(b.lid, a.lid, UD_QP, bytes(range(SMALL_PAYLOAD)))
        frame = pbc_for(packet).to_bytes(8, "little") + packet
        frame += bytes(-len(frame) % 64)
        assert len(frame) == 64, "the small packet is one PIO block"
        self.small_qwords = [int.from_bytes(frame[i:i + 8], "little") for i in range(0, 64, 8)]
        self.large_packet = ud_packet(b.lid, a.lid, UD_QP, bytes(LARGE_PAYLOAD))
        self.large_pbc = pbc_for(self.large_packet)
        self.delivered_before = self.delivered()
        self.egr_index = 0
        self.rcv_avail = IS_RCVAVAIL_START + RCV_CONTEXT  # the interrupt source
        self.interrupt: InterruptSignal | None = None  # threaded mode

    def go_threaded(self) -> ThreadScheduler:
        """Move both devices onto one ThreadScheduler (what `vfnic serve`
        runs); B's interrupts wake this thread from then on."""
        self.scheduler.run()  # what bring-up left due now (engine steps)
        if self.scheduler.pending():
            raise SystemExit(f"{self.scheduler.pending()} chip events still queued after bring-up")
        engines = ThreadScheduler("packet-cpu")
        for node in (self.a, self.b):
            node.device.worker = engines.worker(node.device.device_name)
        self.interrupt = InterruptSignal(self.b.irq)
        self.b.device.host.irq = self.interrupt
        self.scheduler = engines
        return engines

    def delivered(self) -> int:
        return self.b.stats()["rcv"]["contexts"].get(RCV_CONTEXT, {}).get("delivered", 0)

    def receive(self) -> None:
        """Let the chips run (the coalescing timer included) until B's
        interrupt, then B's driver handles it as hfi1's
        receive_context_interrupt does: consumes the entry (RcvHdrHead with
        the interrupt count, and RcvEgrIndexHead when the packet opened
        another eager buffer: the ones before it are free again), then
        clear_recv_intr (CCE_INT_CLEAR, read back) and check_packet_present
        (RcvHdrTail): two trapped writes and two reads, as on a guest."""
        if self.wire:
            self.wait_for_doorbell()
        if self.interrupt is None:
            self.scheduler.advance(20e-6)
        else:
            if not self.interrupt.fired.wait(5):
                raise SystemExit(f"no interrupt from B in 5 s: B {self.b.stats()}")
            self.interrupt.fired.clear()
        driver = self.b.driver
        entry = driver.hdrq_head[RCV_CONTEXT] // HDRQ_ENTRY_DWORDS
        egr_index = RHF.parse(driver.memory.read(driver.hdrq_address(RCV_CONTEXT) + 4 * HDRQ_ENTRY_DWORDS * entry
                                                 + 4 * (HDRQ_ENTRY_DWORDS - 2), 8))["egr_index"]
        driver.consume(RCV_CONTEXT, egr_head=egr_index if egr_index != self.egr_index else None)
        self.egr_index = egr_index
        clear = cr.CCE_INT_CLEAR + 8 * (self.rcv_avail // 64)
        driver.write_csr(clear, 1 << self.rcv_avail % 64)
        driver.read_csr(clear)
        if driver.read_uctxt_csr(RCV_CONTEXT, cr.RCV_HDR_TAIL) != driver.hdrq_head[RCV_CONTEXT]:
            raise SystemExit("a packet more than was sent arrived")

    def wait_for_doorbell(self) -> None:
        """Over the wire: the stores are posted; wait until A's socket thread
        has handled the last one (the launch or the SDMA step is queued)."""
        deadline = time.monotonic() + 5
        while not self.scheduler.pending():
            if time.monotonic() > deadline:
                raise SystemExit(f"A's chip queued nothing in 5 s: A {self.a.stats()}")
            time.sleep(20e-6)

    def small(self, n: int) -> None:
        a, hw = self.a, self.hw
        write = a.driver.dev.bar_write  # the model, or its vfio-user client (wire)
        credits = a.driver.pio_credits[hw]
        base = PIO_SPACE + (hw << 16)
        for _ in range(n):
            fill = a.driver.pio_fill[hw]
            block = base + SOP_ALIAS + 64 * fill
            for q, qword in enumerate(self.small_qwords):
                write(0, block + 8 * q, 8, qword)
            a.driver.pio_fill[hw] = (fill + 1) % credits
            self.receive()

    def large(self, n: int) -> None:
        driver = self.a.driver
        for _ in range(n):
            driver.sdma_send(0, self.large_pbc, self.large_packet)
            self.receive()

    def check(self, sent: int) -> None:
        got = self.delivered() - self.delivered_before
        if got != sent:
            raise SystemExit(f"B's context {RCV_CONTEXT} received {got} packets of {sent} sent: "
                             f"A {self.a.stats()}, B {self.b.stats()}")


def socket_threads_cpu() -> float:
    """CPU seconds of the vfio-user server threads (wire mode) so far."""
    return sum(time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
               for thread in threading.enumerate() if "serve_forever" in thread.name)


def measure(bench: Bench, fn, n: int) -> tuple[float, float, int, int, float]:
    """(CPU us per packet, packets per second, chip events run, B's MSI-X
    messages, the socket threads' CPU us per packet)."""
    jobs, irqs = bench.scheduler.jobs_run, bench.b.device.intr.delivered
    sockets = socket_threads_cpu()
    cpu, wall = time.process_time(), time.perf_counter()
    fn(n)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    sockets = socket_threads_cpu() - sockets
    return (cpu / n * 1e6, n / wall, bench.scheduler.jobs_run - jobs, bench.b.device.intr.delivered - irqs,
            sockets / n * 1e6)


def run_kinds(bench: Bench, mode: str, count: int, rounds: int) -> int:
    """Each kind: a warm-up, then `rounds` measured rounds; prints the medians. Returns the packets sent."""
    sent = 0
    for label, fn in (("small (2 B, PIO)", bench.small), ("4k (4 KiB, SDMA)", bench.large)):
        fn(50)
        sent += 50
        results = [measure(bench, fn, count) for _ in range(rounds)]
        sent += count * rounds
        cpu = statistics.median(r[0] for r in results)
        rate = statistics.median(r[1] for r in results)
        events, irqs = results[0][2] / count, results[0][3] / count
        print(f"{mode:8} {label:18} {cpu:7.1f} us CPU/packet {rate:7.0f} packets/s {events:4.1f} chip events "
              f"{irqs:4.2f} interrupts/packet"
              f"   (rounds: {', '.join(f'{r[0]:.1f}' for r in results)} us)", flush=True)
        if bench.wire:
            sockets = statistics.median(r[4] for r in results)
            print(f"{'':8} {'':18} {sockets:7.1f} us of it on the socket threads, {cpu - sockets:.1f} us on this "
                  f"thread (chip events and the client)", flush=True)
    return sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="packets per kind and round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per kind; the median is printed (default 3)")
    parser.add_argument("--profile", action="store_true", help="a cProfile top-20 of one more manual round per kind")
    parser.add_argument("--modes", default="manual,threaded,wire",
                        help="which of manual, threaded, wire to run (default all three)")
    args = parser.parse_args()
    modes = set(args.modes.split(","))
    if modes - {"manual", "threaded", "wire"}:
        parser.error(f"unknown modes: {', '.join(sorted(modes - {'manual', 'threaded', 'wire'}))}")

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{args.count} packets x {args.rounds} rounds per kind", flush=True)
    if modes & {"manual", "threaded"}:
        with pair() as (scheduler, a, b):
            bench = Bench(scheduler, a, b)
            sent = 0
            if "manual" in modes:
                sent += run_kinds(bench, "manual", args.count, args.rounds)
            if args.profile:
                for label, fn in (("small (2 B, PIO)", bench.small), ("4k (4 KiB, SDMA)", bench.large)):
                    profiler = cProfile.Profile()
                    profiler.runcall(fn, args.count)
                    sent += args.count
                    print(f"\n-- cProfile, manual, {label}, {args.count} packets, top 20 by internal time")
                    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)
            bench.check(sent)
            if "threaded" in modes:
                bench.go_threaded()
                sent += run_kinds(bench, "threaded", args.count, args.rounds)
                bench.check(sent)
            if a.memory.refused or b.memory.refused:
                raise SystemExit(f"DMA outside guest memory: A {a.memory.refused}, B {b.memory.refused}")
    if "wire" in modes:
        with pair(over_the_wire=True) as (scheduler, a, b):
            bench = Bench(scheduler, a, b, wire=True)
            bench.check(run_kinds(bench, "wire", args.count, args.rounds))
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
