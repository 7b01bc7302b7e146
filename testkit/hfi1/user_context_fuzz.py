"""The user-context fuzz (tests/hfi1/test_user_context_fuzz.py runs it in the
unit tier): what a hostile user process -- or the guest kernel acting for it
-- can do to PSM2-style receive contexts, in random sequences, against one
model, with the invariants checked after every action.

A *sequence* is one or two actions of one user context's process (or of
the guest for it), each followed by the chip running every event it has
due and the checks; an action is one of:

- ASSIGN (hfi1_rcvctrl and friends: header queue, eager and expected
  RcvArray ranges, J_Key, TidFlow, NoDrop on or off, sometimes a geometry a
  broken kernel would write) and FREE (disable, invalidate its entries),
  also while packets wait in the context;
- RcvArray writes in the context's own slice: expected and eager entries
  pointing into its pages, outside guest memory, with sizes 0 and out of
  range, entries past its TID range, whole, split in two as QEMU splits a
  store, and torn (a lone upper half, a store cut short);
- RCV_TID_FLOW_TABLE writes (PSM2's set_entry and reset patterns, garbage);
- RCV_HDR_HEAD / RCV_EGR_INDEX_HEAD with good and bad indexes, writes to
  the read-only RCV_HDR_TAIL, and the process consuming what arrived;
- KDETH packets, one or a burst of 4-23 (which fills header queues): a
  well-behaved rendezvous (in-sequence PSNs, TIDs of the context's range,
  header suppression) and its damaged relatives (ICRC, PktLen, TIDs past
  the range, offsets past the buffer, wrong J_Keys, other generations and
  sequences, cut inside KDETH), eager packets that overflow the eager
  buffers, packets for contexts that are not enabled or do not exist.

Every user context owns an arena of guest memory (its tail word, header
queue, eager buffers and expected pages; the entries of its RcvArray slice
point only into it or outside guest memory). Invariants after each action:

- no exception escaped into the model's contained faults;
- the chip went idle within MAX_JOBS events;
- every DMA write the action caused lies inside the arena of the context
  the action concerned (none at all for a context that does not exist or
  was never enabled): never another context's memory;
- every packet is accounted for exactly once: delivered with an RHF,
  delivered with its header suppressed, held for room, or counted in a
  drop counter;
- a packet known to be bad gets an RHF error bit or a counted drop (never a
  suppressed, error-free delivery): counted per action, as many errors and
  drops as bad packets went through. For a packet that waited for room
  only the faults waiting cannot change (ICRC, PktLen, J_Key, truncation)
  are held against it, since the TID and TidFlow verdicts are made on
  delivery; a TidFlow mismatch is known bad only for a single packet, not
  for the later packets of a burst, which meet the entry the earlier ones
  left.

The seed is fixed (VFNIC_FUZZ_SEED overrides it) and printed with any
failure, with the sequence number and the action.
"""
from __future__ import annotations

import random
from collections import Counter, deque
from dataclasses import dataclass

from devmodel.fabric import Packet
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RCV_ARRAY_ENTRY, rcv_array_buffer_bytes
from devmodel.hfi1.rcv_context import (
    FLOW_SHIFT,
    TF_FLOW_VALID,
    TF_GEN_MISMATCH,
    TF_HDR_SUPP_EN,
    TF_KEEP_AFTER_SEQ_ERR,
    TF_KEEP_ON_GEN_ERR,
    TF_SEQ_MISMATCH,
)
from devmodel.wire import opa
from testkit.hfi1.datapath import pair
from testkit.host import GUEST_BASE, GUEST_SIZE, FakeMemory, Host

USER_CONTEXTS = tuple(range(3, 8))  # the small config's 16 contexts: 0-2 are the kernel's
NEVER_ENABLED = tuple(range(8, 16))
ARENA = 0x1000000  # offset of context 3's arena in guest memory; 2 MiB each
ARENA_BYTES = 0x200000
HDRQ_AT, EAGER_AT, PAGES_AT = 0x1000, 0x20000, 0x40000  # in an arena; the tail word is at 0
SLICE = 256  # RcvArray entries per user context, from 256 * (context - 2)
MAX_JOBS = 10_000  # chip events one action may cause before it counts as a runaway
RHF_ERRORS = 0xFFE0000000000000  # RHF bits 63:53 (common.h RHF_ERROR_SMASK)
ENTRY_DWORDS = {1: 2, 2: 16, 4: 32}
OUTSIDE = GUEST_BASE + GUEST_SIZE  # the first byte past guest memory
SEQUENCES_DEFAULT = 100_000
SEED_DEFAULT = 20261213


def arena(ctxt: int) -> int:
    return GUEST_BASE + ARENA + (ctxt - USER_CONTEXTS[0]) * ARENA_BYTES


def rcv_entry(size_code: int, address: int) -> int:
    """An RcvArray entry as hfi1_put_tid writes it (formats.RCV_ARRAY_ENTRY; size code 0: invalid)."""
    return (cr.RCV_ARRAY_RT_WRITE_ENABLE_SMASK | size_code << cr.RCV_ARRAY_RT_BUF_SIZE_SHIFT
            | (address >> 12 & cr.RCV_ARRAY_RT_ADDR_MASK) << cr.RCV_ARRAY_RT_ADDR_SHIFT)


class WatchedDma:
    """The device's view of guest memory, remembering what the current action wrote."""

    def __init__(self, memory: FakeMemory):
        self.memory = memory
        self.writes: list[tuple[int, int]] = []

    def read(self, addr: int, length: int) -> bytes:
        return self.memory.read(addr, length)

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)
        self.writes.append((addr, len(data)))


@dataclass
class Assignment:
    """What the driver gave a context at ASSIGN, as it wrote it."""

    hdr_addr: int
    entry_dw: int  # 0: a geometry the chip refuses
    entries: int
    egr_base: int
    egr_count: int
    egr_bytes: int
    tid_base: int
    tid_entries: int
    jkey: int | None
    ctrl: int
    # the well-behaved sender's rendezvous: flow, generation, next sequence
    flow: int = 0
    generation: int = 0
    seq: int = 0

    @property
    def usable(self) -> bool:
        return self.entry_dw > 0 and self.entries > 0


@dataclass
class Arriving:
    """A packet the fuzz sends, and what it knows of it."""

    ctxt: int
    packet: Packet
    bad: bool  # known bad: it must get an RHF error bit or a counted drop
    immutable: bool  # ... for a reason waiting for room cannot change (ICRC, PktLen, J_Key, ...)
    reaches: bool  # it gets as far as the context's queues (not dropped on arrival)
    why: tuple[str, ...] = ()  # what is known to be wrong with it


class Failure(AssertionError):
    """An invariant broken (the message names it, and the run names the seed and the action)."""


class UserContextFuzzer:
    """The actions (one user context at a time) and `act`, which runs one and checks the invariants."""

    def __init__(self, rng: random.Random, scheduler, node):
        self.rng, self.scheduler, self.node = rng, scheduler, node
        self.device, self.memory = node.device, node.memory
        self.rcv = node.device.rcv
        self.dma = WatchedDma(node.memory)
        node.device.attach(Host(self.dma, node.irq))
        self.assigned: dict[int, Assignment] = {}
        self.pending: dict[int, deque[bool]] = {c: deque() for c in range(len(self.rcv.contexts))}
        self.did: Counter[str] = Counter()  # what the fuzz did and saw, for its own checks and the report
        self.action = ""
        self.noise = rng.randbytes(64 << 10)  # payloads are slices of it

    # -- register access as the guest does it (no simulated time passes) ----------------------
    def write(self, offset: int, value: int, size: int = 8) -> None:
        self.device.bar_write(0, offset, size, value & ((1 << 8 * size) - 1))

    def read(self, offset: int) -> int:
        return self.device.bar_read(0, offset, 8)

    def kctxt(self, ctxt: int, offset: int, value: int) -> None:
        self.write(offset + 0x100 * ctxt, value)

    def uctxt(self, ctxt: int, offset: int, value: int) -> None:
        self.write(offset + 0x1000 * ctxt, value)

    # -- what the guest points the chip at ----------------------------------------------------
    def entry_value(self, ctxt: int, fits_pages: bool = True) -> int:
        """A RcvArray entry for `ctxt`: its own pages (at most 64 KiB with
        `fits_pages`, else up to 1 MiB), outside guest memory, invalid, or a
        size too big for its arena (outside guest memory then)."""
        rng = self.rng
        choice = rng.random()
        if choice < 0.1:
            return rcv_entry(0, 0)  # PT_INVALID
        if choice < 0.25:
            address = rng.choice([OUTSIDE + 0x1000 * rng.randrange(256), 1 << 44, 0])
            return rcv_entry(rng.randrange(16), address)
        code = rng.randrange(1, 6 if fits_pages else 10)
        size = rcv_array_buffer_bytes(code)
        room = ARENA_BYTES - EAGER_AT - size
        if room < 0:
            return rcv_entry(code, OUTSIDE)
        address = arena(ctxt) + EAGER_AT + 0x1000 * rng.randrange(room // 0x1000 + 1)
        return rcv_entry(code, address)

    def put_tid(self, index: int, value: int) -> None:
        self.write(cr.RCV_ARRAY + 8 * index, value)

    # -- actions --------------------------------------------------------------------------------
    def assign(self, ctxt: int) -> None:
        """The driver's ASSIGN_CTXT / user_init for `ctxt` (from scratch)."""
        rng = self.rng
        self.free(ctxt, reassign=True)
        base = arena(ctxt)
        broken = rng.random() < 0.08
        entries = rng.choice([32, 64, 128])
        ent_size = rng.choice([4, 4, 2, 1]) if not broken else rng.choice([0, 3, 5, 7, 4])
        hdr_addr = base + HDRQ_AT if not (broken and rng.random() < 0.5) else OUTSIDE + 0x10000
        egr_bytes = rng.choice([4096, 8192])
        egr_count = rng.choice([8, 16])
        slice_base = SLICE * (ctxt - 2)
        tid_entries = rng.choice([16, 32, 64])
        tid_base = slice_base + 64
        ctrl = (cr.RCV_CTXT_CTRL_ENABLE_SMASK | (egr_bytes // 4096).bit_length() << cr.RCV_CTXT_CTRL_EGR_BUF_SIZE_SHIFT)
        for bit, p in ((cr.RCV_CTXT_CTRL_DONT_DROP_RHQ_FULL_SMASK | cr.RCV_CTXT_CTRL_DONT_DROP_EGR_FULL_SMASK, 0.6),
                       (cr.RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK, 0.8), (cr.RCV_CTXT_CTRL_TAIL_UPD_SMASK, 0.3),
                       (cr.RCV_CTXT_CTRL_INTR_AVAIL_SMASK, 0.5),
                       (cr.RCV_CTXT_CTRL_ONE_PACKET_PER_EGR_BUFFER_SMASK, 0.2)):
            if rng.random() < p:
                ctrl |= bit
        jkey = rng.randrange(1 << 16) if rng.random() < 0.7 else None
        for i in range(egr_count):
            self.put_tid(slice_base + i, rcv_entry((egr_bytes // 4096).bit_length(), base + EAGER_AT + i * egr_bytes))
        for i in range(tid_entries):  # the pages TID_UPDATE pinned for the rendezvous: 4 or 8 KiB each
            self.put_tid(tid_base + i, rcv_entry(rng.choice([1, 2]), base + PAGES_AT + 0x4000 * i))
        self.memory.write(base + HDRQ_AT, bytes(entries * 32 * 4))  # the driver's zeroed queue
        self.kctxt(ctxt, cr.RCV_HDR_CNT, entries >> 5 if not (broken and rng.random() < 0.3) else 0)
        self.kctxt(ctxt, cr.RCV_HDR_ENT_SIZE, ent_size)
        self.kctxt(ctxt, cr.RCV_HDR_SIZE, 9)
        self.kctxt(ctxt, cr.RCV_HDR_ADDR, hdr_addr)
        self.kctxt(ctxt, cr.RCV_HDR_TAIL_ADDR, base if not (broken and rng.random() < 0.5) else OUTSIDE)
        self.kctxt(ctxt, cr.RCV_EGR_CTRL, (egr_count >> 3) << cr.RCV_EGR_CTRL_EGR_CNT_SHIFT | slice_base >> 3)
        self.kctxt(ctxt, cr.RCV_TID_CTRL, (tid_entries >> 3) << cr.RCV_TID_CTRL_TID_PAIR_CNT_SHIFT | tid_base >> 3)
        self.kctxt(ctxt, cr.RCV_KEY_CTRL, 0 if jkey is None else cr.RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK | jkey)
        self.uctxt(ctxt, cr.RCV_HDR_HEAD, 0)
        self.uctxt(ctxt, cr.RCV_EGR_INDEX_HEAD, 0)
        assignment = Assignment(hdr_addr, ENTRY_DWORDS.get(ent_size, 0) if hdr_addr < OUTSIDE else 0,
                                entries if self.read(cr.RCV_HDR_CNT + 0x100 * ctxt) else 0, slice_base, egr_count,
                                egr_bytes, tid_base, tid_entries, jkey, ctrl)
        for flow in range(32):  # PSM2's hfi_tidflow_reset of every flow at open
            self.write_flow(ctxt, flow, TF_FLOW_VALID | TF_KEEP_AFTER_SEQ_ERR | TF_SEQ_MISMATCH | TF_GEN_MISMATCH
                            | 0xFFFFF << 11 | 0x7FF)
        self.new_rendezvous(ctxt, assignment)
        self.kctxt(ctxt, cr.RCV_CTXT_CTRL, ctrl)
        self.assigned[ctxt] = assignment
        self.did["assign"] += 1
        self.did["assign of a broken geometry"] += broken

    def free(self, ctxt: int, reassign: bool = False) -> None:
        """Close: disable the context and invalidate its eager and expected
        entries (hfi1_clear_tids; what else of its slice the fuzz wrote stays,
        pointing into its arena or outside guest memory)."""
        self.kctxt(ctxt, cr.RCV_CTXT_CTRL, 0)
        a = self.assigned.pop(ctxt, None)
        if a is not None:
            invalid = rcv_entry(0, 0)
            for index in (*range(a.egr_base, a.egr_base + a.egr_count),
                          *range(a.tid_base, a.tid_base + a.tid_entries)):
                self.put_tid(index, invalid)
            self.did["reassign" if reassign else "free"] += 1

    def write_flow(self, ctxt: int, flow: int, value: int) -> None:
        self.uctxt(ctxt, cr.RCV_TID_FLOW_TABLE + 8 * flow, value)

    def new_rendezvous(self, ctxt: int, assignment: Assignment) -> None:
        """PSM2's hfi_tidflow_set_entry for a new transfer: a flow, a fresh generation, sequence 0."""
        assignment.flow = self.rng.randrange(32)
        assignment.generation = self.rng.randrange(0xFFFFF)
        assignment.seq = 0
        self.write_flow(ctxt, assignment.flow, TF_FLOW_VALID | TF_HDR_SUPP_EN | TF_KEEP_AFTER_SEQ_ERR
                        | TF_KEEP_ON_GEN_ERR | TF_SEQ_MISMATCH | TF_GEN_MISMATCH | assignment.generation << 11)

    def rcv_array_write(self, ctxt: int) -> None:
        rng = self.rng
        assignment = self.assigned.get(ctxt)
        slice_base = SLICE * (ctxt - 2)
        if assignment is not None and rng.random() < 0.7:  # mostly the entries in use
            index = rng.choice([assignment.egr_base + rng.randrange(assignment.egr_count),
                                assignment.tid_base + rng.randrange(assignment.tid_entries)])
        else:
            index = slice_base + rng.randrange(SLICE)
        value = self.entry_value(ctxt, fits_pages=rng.random() < 0.8)
        offset = cr.RCV_ARRAY + 8 * index
        how = rng.random()
        if how < 0.6:
            self.write(offset, value)
        elif how < 0.75:  # one store, as QEMU splits it
            self.write(offset, value & 0xFFFFFFFF, 4)
            self.write(offset + 4, value >> 32, 4)
        elif how < 0.85:  # a lone upper half
            self.write(offset + 4, value >> 32, 4)
            self.did["torn RcvArray write"] += 1
        elif how < 0.95:  # a store cut short
            self.write(offset, value & 0xFFFFFFFF, 4)
            self.write(cr.RCV_ARRAY + 8 * (slice_base + rng.randrange(SLICE)), self.entry_value(ctxt))
            self.did["torn RcvArray write"] += 1
        else:  # eight byte stores
            for byte in range(8):
                self.write(offset + byte, value >> 8 * byte, 1)
        self.did["RcvArray write"] += 1

    def tidflow_write(self, ctxt: int) -> None:
        rng = self.rng
        assignment = self.assigned.get(ctxt)
        choice = rng.random()
        if assignment is not None and choice < 0.3:
            self.new_rendezvous(ctxt, assignment)
        elif assignment is not None and choice < 0.5:  # PSM2 restarts the flow where the chip says it is
            entry = self.read(cr.RCV_TID_FLOW_TABLE + 0x1000 * ctxt + 8 * assignment.flow)
            assignment.seq = entry & 0x7FF
            self.write_flow(ctxt, assignment.flow, entry)
        else:
            self.write_flow(ctxt, rng.randrange(32), rng.getrandbits(39))
        self.did["TidFlow write"] += 1

    def head_write(self, ctxt: int) -> None:
        rng = self.rng
        choice = rng.random()
        if choice < 0.4:
            self.uctxt(ctxt, cr.RCV_HDR_HEAD, rng.getrandbits(40))
        elif choice < 0.7:
            self.uctxt(ctxt, cr.RCV_EGR_INDEX_HEAD, rng.getrandbits(rng.choice([4, 11, 64])))
        else:
            self.uctxt(ctxt, cr.RCV_HDR_TAIL, rng.getrandbits(64))  # read-only
        self.did["bad head write"] += 1

    def consume(self, ctxt: int) -> None:
        """The process takes everything that arrived: both heads to where the chip is."""
        context = self.rcv.contexts[ctxt]
        self.uctxt(ctxt, cr.RCV_HDR_HEAD, self.rng.choice([0, 1, 16]) << 32 | self.read(cr.RCV_HDR_TAIL + 0x1000 * ctxt))
        self.uctxt(ctxt, cr.RCV_EGR_INDEX_HEAD, context.egr_index)
        self.did["consume"] += 1

    # -- packets -----------------------------------------------------------------------------
    def packet(self, ctxt: int, judge_flow: bool = True) -> Arriving:
        """A KDETH packet for `ctxt`. `judge_flow`: count a TidFlow mismatch as bad
        (by the entry as it is now: not for the later packets of a burst,
        which meet the entry the earlier ones left)."""
        rng = self.rng
        assignment = self.assigned.get(ctxt)
        bad = set()
        if assignment is None:
            bad.add("not enabled" if ctxt < len(self.rcv.contexts) else "no such context")
        a = assignment or Assignment(0, 0, 0, 0, 0, 0, 0, 16, None, 0)
        eager = rng.random() < 0.2
        payload_bytes = 4 * rng.randrange(1, 512) if not eager else 4 * rng.randrange(0, 2560)
        flow, gen, seq = a.flow, a.generation, a.seq
        sh = int(rng.random() < 0.8)
        pair = rng.randrange(a.tid_entries // 2)
        tid_ctrl = 0 if eager else rng.choice([1, 2, 3])
        offset, om = 0, 0
        jkey = a.jkey if a.jkey is not None else rng.randrange(1 << 16)
        mutation = rng.random()
        if not eager and assignment is not None:
            sizes = [self.entry_bytes(a.tid_base + 2 * pair + half) for half in (0, 1) if tid_ctrl >> half & 1]
            room = sum(sizes) - payload_bytes
            if room >= 0 and all(sizes):
                offset = rng.randrange(min(room // 4, 0x7FFF) + 1)
            else:
                bad.add("TID buffer too small or invalid")
            if mutation < 0.04:
                pair = a.tid_entries // 2 + rng.randrange(512 - a.tid_entries // 2)
                bad.add("TID past the context's range")
            elif mutation < 0.08:
                om, offset = 1, min((sum(sizes) + 63) // 64 + rng.randrange(64), 0x7FFF)
                if 64 * offset + payload_bytes > sum(sizes):
                    bad.add("offset past the buffer")
        if mutation >= 0.08 and mutation < 0.14:
            flow, gen, seq = rng.randrange(32), rng.getrandbits(20), rng.getrandbits(11)
        elif mutation < 0.18:
            seq = (seq + rng.randrange(1, 2047)) & 0x7FF
        elif mutation < 0.20:
            gen = (gen + rng.randrange(1, 0xFFFFF)) & 0xFFFFF
        elif mutation < 0.23 and a.jkey is not None:
            jkey = (a.jkey + rng.randrange(1, 1 << 16)) & 0xFFFF
            bad.add("J_Key")
        if judge_flow and not eager and assignment is not None and a.ctrl & cr.RCV_CTXT_CTRL_TID_FLOW_ENABLE_SMASK:
            entry = self.read(cr.RCV_TID_FLOW_TABLE + 0x1000 * ctxt + 8 * flow)
            if mutation > 0.2 and flow == a.flow and rng.random() < 0.5:  # PSM2 restarts where the chip is
                seq = a.seq = entry & 0x7FF
            if entry & TF_FLOW_VALID and (gen != entry >> 11 & 0xFFFFF or seq != entry & 0x7FF):
                bad.add("TidFlow mismatch")
        dest_qp = opa.KDETH_QP_PREFIX << 16 | flow << FLOW_SHIFT | ctxt
        body = opa.BTH.build(opcode=0xC0, pkey=0xFFFF, dest_qp=dest_qp, psn=gen << 11 | seq) \
            + opa.KDETH0.build(kver=1, sh=sh, intr=0, tid_ctrl=tid_ctrl, tid=pair, om=om, offset=offset) \
            + opa.KDETH1.build(hcrc=0, jkey=jkey) + bytes(28) + self.payload(payload_bytes)
        pkt_len = (opa.LRH_BYTES + len(body) + opa.ICRC_BYTES) // 4
        damage = rng.random()
        immutable = set()
        if damage < 0.03:
            pkt_len += rng.choice([-1, 1, 7])
            immutable.add("PktLen")
        elif damage < 0.045:
            cut = rng.choice([4, 8, 12])
            body = body[:opa.BTH_BYTES + 8 - cut] if cut < 12 else body[:opa.BTH_BYTES - 4]
            pkt_len = (opa.LRH_BYTES + len(body) + opa.ICRC_BYTES) // 4
            immutable.add("cut inside its headers")
        data = opa.append_icrc(opa.LRH.build(sc=0, lnh=opa.LNH_BTH, dlid=self.node.lid, slid=1, pkt_len=pkt_len)
                               + body)
        if damage >= 0.045 and damage < 0.07:
            data = data[:-1] + bytes((data[-1] ^ 0xFF,))
            immutable.add("ICRC")
        if "J_Key" in bad:
            immutable.add("J_Key")
        if bad & {"not enabled", "no such context"}:
            immutable |= bad & {"not enabled", "no such context"}
        bad |= immutable
        if assignment is not None and not bad and not eager:
            a.seq = (a.seq + 1) & 0x7FF
        for reason in bad:
            self.did[f"bad packet: {reason}"] += 1
        self.did["eager packet" if eager else "expected packet"] += 1
        reaches = not immutable & {"cut inside its headers", "J_Key", "not enabled", "no such context"}
        return Arriving(ctxt, Packet(data, 0, sealed="ICRC" not in immutable), bool(bad), bool(immutable), reaches,
                        tuple(sorted(bad)))

    def payload(self, length: int) -> bytes:
        start = self.rng.randrange(len(self.noise) - length)
        return self.noise[start:start + length]

    def entry_bytes(self, index: int) -> int:
        entry = self.device.bar_read(0, cr.RCV_ARRAY + 8 * index, 8)
        return rcv_array_buffer_bytes(RCV_ARRAY_ENTRY.get(entry, "size_code"))

    # -- one action and its invariants -----------------------------------------------------------
    def account(self) -> list[tuple[int, int, int, int]]:
        """Per context: (delivered, suppressed, dropped, held); the RXE's own drops last."""
        rows = [(c.delivered, c.suppressed, sum(c.drops.values()), len(c.held)) for c in self.rcv.contexts]
        rows.append((0, 0, sum(self.rcv.dropped.values()), 0))
        return rows

    def act(self, target: int | None, what: str, fn, packets: list[Arriving] = ()) -> None:
        """Do `fn` and let `packets` (all for `target`) arrive, run the chip,
        check the invariants (the module docstring)."""
        self.action = what
        self.did["action"] += 1
        before = self.account()
        tails = [c.tail for c in self.rcv.contexts]
        self.dma.writes.clear()
        fn()
        for packet in packets:
            self.device.port.receive(packet.packet)
        self.scheduler.run()
        if self.device.faults:
            raise Failure(f"the model failed inside: {list(self.device.faults)}")
        lo, hi = (arena(target), arena(target) + ARENA_BYTES) if target in USER_CONTEXTS else (0, 0)
        for address, length in self.dma.writes:
            if not (lo <= address and address + length <= hi):
                raise Failure(f"a DMA write of {length} bytes at {address:#x}, outside the memory of context "
                              f"{target} ({lo:#x}-{hi:#x})")
        after = self.account()
        delta = {i: tuple(x - y for x, y in zip(row_after, row_before))
                 for i, (row_after, row_before) in enumerate(zip(after, before)) if row_after != row_before}
        accounted = sum(sum(row) for row in delta.values())
        if accounted != len(packets):
            raise Failure(f"{accounted} packets accounted for, {len(packets)} arrived: {delta}")
        rxe = len(after) - 1
        rxe_dropped = delta.pop(rxe, (0, 0, 0, 0))[2]
        if packets and target in range(rxe):
            delta.setdefault(target, (0, 0, 0, 0))
        for ctxt, (delivered, suppressed, dropped, held) in delta.items():
            if packets and ctxt == target:
                # in order: of the packets that reached the context's queues
                # the first ones went through (or were lost), the rest wait
                waiting = [p for p in packets if p.reaches][len([p for p in packets if p.reaches]) - held:]
                self.pending[ctxt].extend(p.immutable for p in waiting)
                bad = sum(p.bad for p in packets) - sum(p.bad for p in waiting)
                errors = (self.rhf_errors(ctxt, tails[ctxt], delivered) if delivered else 0) + dropped + rxe_dropped
                if bad > errors:
                    raise Failure(f"{bad} bad packets, {errors} RHF errors and drops for them ({delivered} "
                                  f"delivered, {suppressed} with their header suppressed): "
                                  f"{[(i, p.why) for i, p in enumerate(packets) if p.bad]}, RHFs "
                                  f"{[hex(r) for r in self.rhfs(ctxt, tails[ctxt], delivered)]}")
                self.did["held"] += held
                self.did["delivered"] += delivered
                self.did["suppressed"] += suppressed
            elif held < 0:
                released = [self.pending[ctxt].popleft() for _ in range(-held)]
                errors = self.rhf_errors(ctxt, tails[ctxt], delivered) if delivered else 0
                if sum(released) > errors + dropped:
                    raise Failure(f"{sum(released)} bad packets released from waiting, {errors} RHF errors and "
                                  f"{dropped} drops for them")
                self.did["released after waiting"] += -held
        if packets and (target is None or target >= len(self.rcv.contexts)) and rxe_dropped != len(packets):
            raise Failure("a packet for a context that does not exist was not counted as dropped")

    def rhf_errors(self, ctxt: int, tail: int, count: int) -> int:
        """RHFs with an error bit among the `count` entries written from `tail` (dwords) on."""
        return sum(bool(rhf & RHF_ERRORS) for rhf in self.rhfs(ctxt, tail, count))

    def rhfs(self, ctxt: int, tail: int, count: int) -> list[int]:
        a = self.assigned[ctxt]
        queue = a.entries * a.entry_dw
        return [int.from_bytes(self.memory.read(a.hdr_addr + 4 * ((tail + i * a.entry_dw) % queue)
                                                + 4 * (a.entry_dw - 2), 8), "little") for i in range(count)]

    def sequence(self) -> None:
        rng = self.rng
        ctxt = rng.choice(USER_CONTEXTS)
        for _ in range(rng.randrange(1, 3)):
            choice = rng.random()
            if choice < 0.55:
                target = rng.random()
                target = ctxt if target < 0.93 else rng.choice(NEVER_ENABLED) if target < 0.97 \
                    else rng.randrange(16, 256)
                self.act(target, f"a packet for context {target}", lambda: None, [self.packet(target)])
            elif choice < 0.6:
                burst = [self.packet(ctxt, judge_flow=False) for _ in range(rng.randrange(4, 24))]
                self.act(ctxt, f"a burst of {len(burst)} packets for context {ctxt}", lambda: None, burst)
            elif choice < 0.65:
                self.act(ctxt, f"consume context {ctxt}", lambda: self.consume(ctxt))
            elif choice < 0.75:
                self.act(ctxt, f"RcvArray write in context {ctxt}'s slice", lambda: self.rcv_array_write(ctxt))
            elif choice < 0.85:
                self.act(ctxt, f"TidFlow write in context {ctxt}", lambda: self.tidflow_write(ctxt))
            elif choice < 0.98:
                self.act(ctxt, f"head write in context {ctxt}", lambda: self.head_write(ctxt))
            elif choice < 0.9975:
                self.act(ctxt, f"ASSIGN context {ctxt}", lambda: self.assign(ctxt))
            else:
                self.act(ctxt, f"FREE context {ctxt}", lambda: self.free(ctxt))


def run_user_context_fuzz(sequences: int, seed: int = SEED_DEFAULT) -> dict:
    """The fuzz and its invariants (a Failure names the seed, the sequence
    and the action); what it did, for the report."""
    rng = random.Random(seed)
    with pair() as (scheduler, _a, b):
        # the probe walk's catch-all RSM rule 0 as the driver's verbs rule is: IB packets only
        b.device.bar_write(0, cr.RCV_RSM_CFG, 8, 1 | 2 << cr.RCV_RSM_CFG_PACKET_TYPE_SHIFT)
        scheduler.run()
        scheduler.max_jobs = MAX_JOBS
        fuzzer = UserContextFuzzer(rng, scheduler, b)
        n = -1
        try:
            for ctxt in USER_CONTEXTS:
                fuzzer.act(ctxt, f"ASSIGN context {ctxt}", lambda ctxt=ctxt: fuzzer.assign(ctxt))
            for n in range(sequences):
                fuzzer.sequence()
                if n % 1000 == 999:  # coalescing timers fall due; no DMA may come of it
                    fuzzer.act(None, "1 ms passes", lambda: scheduler.advance(0.001))
                    b.irq.triggered.clear()
            assert b.memory.refused, "the fuzz pointed the chip outside guest memory"
            counters = b.stats()["rcv"]["contexts"]
            totals = Counter()
            for ctxt in USER_CONTEXTS:
                totals.update({k: v for k, v in counters.get(ctxt, {}).items() if isinstance(v, int)})
            if sequences >= 10_000:  # what a run of this size must have gone through
                for seen in ("expected", "headers_suppressed", "tid_error", "flow_seq_errors", "flow_gen_errors",
                             "flow_dropped", "hdrq_full", "eager_full", "dma_error", "job_key", "disabled",
                             "held_overflow"):
                    assert totals[seen], f"the fuzz never caused {seen}: {dict(totals)}"
                for did in ("held", "released after waiting", "torn RcvArray write", "free",
                            "assign of a broken geometry", "bad packet: no such context"):
                    assert fuzzer.did[did], f"the fuzz never did {did}: {dict(fuzzer.did)}"
            # afterwards a context assigned afresh takes a good packet
            ctxt = USER_CONTEXTS[0]
            fuzzer.act(ctxt, "the last ASSIGN", lambda: fuzzer.assign(ctxt))
            a = fuzzer.assigned[ctxt]
            while not a.usable:
                fuzzer.act(ctxt, "the last ASSIGN", lambda: fuzzer.assign(ctxt))
                a = fuzzer.assigned[ctxt]
            delivered = b.device.rcv.contexts[ctxt].delivered
            dest_qp = opa.KDETH_QP_PREFIX << 16 | ctxt
            body = opa.BTH.build(opcode=0xC0, pkey=0xFFFF, dest_qp=dest_qp, psn=0) \
                + opa.KDETH0.build(kver=1, sh=0, intr=0, tid_ctrl=0, tid=0, om=0, offset=0) \
                + opa.KDETH1.build(hcrc=0, jkey=a.jkey or 0) + bytes(28) + b"still alive!"
            data = opa.append_icrc(opa.LRH.build(sc=0, lnh=opa.LNH_BTH, dlid=b.lid, slid=1,
                                                 pkt_len=(opa.LRH_BYTES + len(body) + opa.ICRC_BYTES) // 4) + body)
            fuzzer.act(ctxt, "a good packet at the end", lambda: None, [Arriving(ctxt, Packet(data, 0), False, False, True)])
            assert b.device.rcv.contexts[ctxt].delivered == delivered + 1, "a fresh context takes a packet"
        except Exception as err:  # an invariant, or a runaway (more than MAX_JOBS events) or a crash
            raise Failure(f"seed {seed}, sequence {n}, {fuzzer.action}: {type(err).__name__}: {err}") from err
        return {"sequences": sequences, "seed": seed, "actions": fuzzer.did["action"], "did": dict(fuzzer.did),
                "contexts": dict(totals), "refused_outside_guest_memory": b.memory.refused}
