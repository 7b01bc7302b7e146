"""PIO send: send contexts, their rings of 64-byte blocks in PIO space, the
PIO init engine and credit return.

    SEND_PIO_INIT_CTXT   0x1800038 RW  [0] ALL_CTXT_INIT [1] SINGLE_CTXT_INIT
                                       [2] IN_PROGRESS (RO) [3] ERR (RO) [15:8] CTXT_NUM
    SEND_PIO_ERR_STATUS/MASK/CLEAR 0x1800040/48/50  second tier of source 4
    per hardware context h, 0x1900000 + 0x100h:
      SEND_CTXT_CTRL               RW  [0] ENABLE, [45:32] base block, [58:48] depth (credits)
      SEND_CTXT_STATUS             RO  [0] HALTED
      SEND_CTXT_CREDIT_CTRL        RW  [10:0] THRESHOLD [16] EARLY_RETURN [17] CREDIT_INTR
      SEND_CTXT_CREDIT_STATUS      RO  [10:0] last returned, [42:32] current free counter
      SEND_CTXT_CREDIT_RETURN_ADDR RW  [47:6] where credit returns are written (DMA)
      SEND_CTXT_CREDIT_FORCE       RW  [0] FORCE_RETURN: 0 -> 1 writes a credit return
      SEND_CTXT_ERR_STATUS/MASK/CLEAR  second tier of source 32 + h:
        [0] InconsistentSop [1] DisallowedPacket [2] WriteCrossesBoundary
        [3] WriteOverflow [4] WriteOutOfBounds
      SEND_CTXT_CHECK_{ENABLE,VL,JOB_KEY,PARTITION_KEY,SLID,OPCODE} RW  its integrity checks
                                   (integrity.py)
    PIO send space  0x2000000 + 0x10000h, its start-of-packet alias at 0x3000000 + 0x10000h

PIO has no doorbell (pio_copy.c). A context's ring is `depth` blocks of 64
bytes at the start of its 64 KiB window; the driver fills blocks in ring
order, the first block of a packet through the SOP alias with the PBC in its
first qword, every block with exactly 64 bytes (zero or garbage padding), and
wraps only at a block boundary. The chip launches a packet once every block
its PBC length covers has been written, in ring order:

    write (transport thread)     store the bytes, mark them written; a block
                                 just completed: queue the launcher
    launcher (chip event)        while the block at the launch point is complete:
                                 read its PBC, check the length, wait for the
                                 rest, copy the packet out, free the blocks,
                                 hand it to egress (send.py); then return credits

With `pio-launch=inline` (`Pio.set_launch_mode`; off by default,
docs/execution-model.md rule 1) the store that completes a packet of at most
INLINE_MAX_BLOCKS blocks at the launch point runs the launcher itself, for
that one packet, under the lock the access holds: the same checks, egress
and credit return, its packet and interrupts handed over by the access after
the lock as an event's are. It falls back to the chip event when a launch is
already queued, the packet is bigger, or the link has no room for it (the
launcher then waits for credits). A block completed behind an unfinished
packet queues nothing: the store that finishes the packet at the launch
point launches it (or queues the launcher, if it is big), and queues the
launcher for what is ready behind it, so packets leave in ring order.

Guest mistakes halt the context with the SEND_CTXT_ERR_STATUS bit silicon
uses and raise source 32 + h (the driver restarts kernel contexts itself):
a write beyond the ring (WriteOutOfBounds), a byte written twice before
launch (WriteOverflow), a packet whose first block did not come through the
SOP alias or a later block that did (InconsistentSop), a PBC length that is
too short, larger than the ring or beyond the maximum packet
(DisallowedPacket). So does a packet the context's integrity checks refuse
(SEND_CTXT_CHECK_*, integrity.py): DisallowedPacket, the failed checks in
SEND_EGRESS_ERR_INFO and the context in SEND_EGRESS_ERR_SOURCE (what the
driver's is_sendctxt_err_int reads); the packet and every one behind it
stay unsent. Writes to a disabled or halted context are dropped.

A context's state (`SendContextState`), changed only through `TRANSITIONS`:

    DISABLED --ENABLE--> RUNNING --HALT (an error, an SPC freeze)--> HALTED
    RUNNING --DISABLE--> DISABLED
    HALTED --DISABLE--> HALTED_DISABLED --ENABLE--> HALTED
    HALTED_DISABLED --INIT--> DISABLED        HALTED --INIT--> RUNNING

ENABLE and DISABLE are SEND_CTXT_CTRL.ENABLE going 1 and 0, INIT the PIO
init engine (SEND_PIO_INIT_CTXT). Only INIT clears a halt, with the ring and
counters: the driver's recovery, sc_restart (kernel contexts, from its
halt work) and the CTXT_RESET ioctl (user contexts, when PSM2 asks), is
STATUS.HALTED polled, ENABLE cleared (sc_disable), ERR_CLEAR, INIT, ENABLE
set (sc_enable), then a forced credit return. SEND_CTXT_STATUS.HALTED reads
1 in both halted states.

A credit return is one little-endian qword (formats.CREDIT_RETURN) written to
CREDIT_RETURN_ADDR + 8*(h & 7) after each batch of launches, on a forced
return and when the context halts (with Status); with CREDIT_CTRL.CREDIT_INTR
it also raises source 576 + h. The PIO init engine resets a context's ring,
counters and halt at once, so IN_PROGRESS and ERR read 0. An SPC freeze halts
every enabled context.

PIO space from shared memory (`vfnic serve --option mmap=pio`,
`ChipConfig.mapped`): both halves of the contexts' windows are sparse mmap
areas of BAR0 (device.py), so the guest's stores land in memory shared with
the server, untrapped (a TCG RAM store, nanoseconds, against a vfio-user
message each), and nothing tells the chip a store happened. A poller (a chip
event, `Pio._poll`) looks for completed packets instead, using sentinels:

    arm (INIT, enable, launch)   a random 64-bit sentinel (one per chip) into
                                 each free block's watched qwords: qword 0
                                 (the PBC) and qword 7 of its SOP alias, qword
                                 7 of its non-SOP half
    a packet starts              when the SOP alias's qword 0 of the block at
                                 the launch point is no longer the sentinel:
                                 that is its PBC, whose length gives the blocks
    it is complete               when its last block's qword 7 is no longer
                                 the sentinel (the SOP alias's for a one-block
                                 packet, else the non-SOP half's, the ring
                                 wrapping at `depth`): pio_copy and
                                 seg_pio_copy_* write every block to its end
                                 (zero fill), the first through the SOP alias,
                                 the rest through the non-SOP half, in
                                 ascending order
    then                         the launcher as above: length, integrity
                                 checks, egress, the blocks freed and re-armed
                                 before the credit return that lets the driver
                                 reuse them

The poll period adapts: POLL_FAST_S while packets come (and for POLL_HOLD_S
after the last), then doubling up to POLL_IDLE_S, so an idle chip costs a
few wake-ups a second; a trapped access (the driver's interrupt handler, a
doorbell) brings it back to fast (`nudge`). Each poll steps every running
context once, a bounded batch each.

It relies on store order: x86 (TSO), and TCG on an x86 host, make the
driver's stores visible in program order, so once the last qword changed,
the packet's other bytes are there. A PBC or data qword equal to the
sentinel (one chance in 2^64, or a guest that read the sentinel back) stalls
that context until its next INIT; a guest writing garbage can only stall or
garble its own context: every index is taken modulo its ring, a ring
reaches no further than its own 64 KiB window (blocks beyond it are never
complete, as when trapped), PBC lengths are checked as above, and a poll
does a bounded amount of work. What is lost against the trapped model:
WriteOverflow (a block written twice is just read), WriteOutOfBounds
(stores beyond the ring land in memory nobody reads), InconsistentSop but
for a packet whose later block came through the SOP alias, writes to a
disabled context being dropped only if INIT or enable follows, and exact
launch timing (a packet leaves at the next poll, not at its last store).

Collaborators: the interrupt controller (PIO errors, source 4; context
errors 32 + h; credit returns 576 + h), egress (`send.Send.egress`), the
port (room at the link partner, asked before each launch) and the chip's
services (guest memory for credit returns, events).
"""
from __future__ import annotations

import os
from enum import Enum

from common.ratelog import limited
from devmodel.base import DmaError
from devmodel.regs import Access, Register
from devmodel.wire import opa

from .chip_registers import (
    SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK,
    SEND_CTXT_CREDIT_CTRL_THRESHOLD_SMASK,
    SEND_CTXT_CREDIT_FORCE_FORCE_RETURN_SMASK,
    SEND_CTXT_CREDIT_RETURN_ADDR_ADDRESS_SMASK,
    SEND_CTXT_CREDIT_STATUS_CURRENT_FREE_COUNTER_SHIFT,
    SEND_CTXT_CTRL_CTXT_DEPTH_MASK,
    SEND_CTXT_CTRL_CTXT_DEPTH_SHIFT,
    SEND_CTXT_CTRL_CTXT_ENABLE_SMASK,
    SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK,
    SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK,
    SEND_CTXT_ERR_STATUS_PIO_WRITE_OUT_OF_BOUNDS_ERR_SMASK,
    SEND_CTXT_ERR_STATUS_PIO_WRITE_OVERFLOW_ERR_SMASK,
    SEND_CTXT_STATUS_CTXT_HALTED_SMASK,
    SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK,
    SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK,
    SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT,
    SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK,
    TXE,
    TXE_PIO_SEND_OFFSET,
)
from .csr import KCTXT_STRIDE, Block, csr, csr_array, field, kctxt
from .formats import CREDIT_RETURN, PBC, PBC_BYTES
from .integrity import IntegrityChecker, describe
from .intr import IS_SENDCREDIT_START, IS_SENDCTXT_ERR_START, PIO_ERR_INT, ErrorFlags, InterruptController
from .port import Hfi1Port
from .send import Send
from .services import ChipServices, cancel_jobs

TXE_PIO_SEND = TXE + TXE_PIO_SEND_OFFSET  # chip.h
TXE_PIO_SIZE = 32 << 20
SOP_DISTANCE = 16 << 20
PIO_CONTEXT_WINDOW = 1 << 16
PIO_BLOCK = 64
FULL_BLOCK = (1 << PIO_BLOCK) - 1  # one bit per byte
CR_COUNTER_MASK = CREDIT_RETURN.mask["counter"]
CR_STATUS = 1 << CREDIT_RETURN.shift["status"]
CR_DUE_TO_PBC = 1 << CREDIT_RETURN.shift["due_to_pbc"]
CR_DUE_TO_THRESHOLD = 1 << CREDIT_RETURN.shift["due_to_threshold"]
CR_DUE_TO_ERROR = 1 << CREDIT_RETURN.shift["due_to_error"]
CR_DUE_TO_FORCE = 1 << CREDIT_RETURN.shift["due_to_force"]
#: a packet is at least the PBC and a 9B LRH + BTH (dwords)
MIN_PACKET_DWS = (PBC_BYTES + opa.LRH_BYTES + opa.BTH_BYTES) // 4
#: the largest packet: a 10 KiB MTU plus the largest header, ICRC space and
#: PBC, in dwords (also what 12 bits of RHF.PktLen can describe)
MAX_PACKET_DWS = (10240 + 128) // 4
LAUNCH_BATCH = 64  # packets per launcher step
#: how the launcher runs (`vfnic serve --option pio-launch=...`): as a chip event
#: on the engine thread, or (`inline`) right on the thread of the store that
#: completed a small packet
LAUNCH_MODES = ("engine", "inline")
#: the largest packet launched inline, in blocks. Two (128 bytes, PBC
#: included) hold the packets a latency-bound exchange sends by PIO: an RC
#: ACK or a small verbs send is one block, one with a GRH or RETH and a few
#: bytes, or a PSM2 eager packet with a few dozen, two. A bigger packet is
#: bandwidth, not latency: copying, checking and ICRC-summing up to 10 KiB on
#: the socket thread would hold up the next messages from QEMU, where the
#: engine launches many in one step
INLINE_MAX_BLOCKS = 2
WINDOW_BLOCKS = PIO_CONTEXT_WINDOW // PIO_BLOCK  # the most blocks a context's ring can have in its window
QWORDS_PER_BLOCK = PIO_BLOCK // 8
#: the poller's period while packets come, how long it stays that fast after
#: the last one, and the most it backs off to when idle (module docstring)
POLL_FAST_S = 500e-6
POLL_HOLD_S = 0.02
POLL_IDLE_S = 0.02
CONTEXT_CSRS = ("SEND_CTXT_CREDIT_CTRL", "SEND_CTXT_CREDIT_RETURN_ADDR", "SEND_CTXT_CHECK_ENABLE",
                "SEND_CTXT_CHECK_VL", "SEND_CTXT_CHECK_JOB_KEY", "SEND_CTXT_CHECK_PARTITION_KEY",
                "SEND_CTXT_CHECK_SLID", "SEND_CTXT_CHECK_OPCODE")
_PBC_LENGTH_MASK = PBC.mask["length_dws"]
_PBC_CREDIT_RETURN = 1 << PBC.shift["credit_return"]


class SendContextState(Enum):
    DISABLED = "disabled"
    RUNNING = "running"
    HALTED = "halted"
    HALTED_DISABLED = "halted, disabled"


class SendContextEvent(Enum):
    ENABLE = "SEND_CTXT_CTRL.ENABLE set"
    DISABLE = "SEND_CTXT_CTRL.ENABLE cleared"
    HALT = "halt"
    INIT = "PIO init"


_S, _E = SendContextState, SendContextEvent
#: (state, event) -> next state; an event not listed leaves the state as it is
#: (a disabled context has nothing to halt, INIT of a running one only empties it)
TRANSITIONS = {
    (_S.DISABLED, _E.ENABLE): _S.RUNNING,
    (_S.RUNNING, _E.DISABLE): _S.DISABLED,
    (_S.RUNNING, _E.HALT): _S.HALTED,
    (_S.HALTED, _E.DISABLE): _S.HALTED_DISABLED,
    (_S.HALTED_DISABLED, _E.ENABLE): _S.HALTED,
    (_S.HALTED, _E.INIT): _S.RUNNING,
    (_S.HALTED_DISABLED, _E.INIT): _S.DISABLED,
}
_HALTED_STATES = (_S.HALTED, _S.HALTED_DISABLED)


class PioSendContext:
    """One hardware send context's ring, counters and state (see the module docstring)."""

    __slots__ = ("block", "hw", "state", "depth", "ring", "written", "sop", "launch_at", "free_counter",
                 "last_returned", "launch_posted", "packets", "bytes_written", "dropped_writes", "halts",
                 "refused", "window", "sop_qword")

    def __init__(self, block: "Pio", hw: int):
        self.block = block
        self.hw = hw
        self.free_counter = 0
        self.last_returned = 0
        self.packets = 0
        self.bytes_written = 0
        self.dropped_writes = 0
        self.halts = 0
        self.refused = 0  # packets its integrity checks refused
        self.launch_posted = False
        self.window = PIO_CONTEXT_WINDOW * hw  # its ring's offset in the PIO space (non-SOP half)
        self.sop_qword = (SOP_DISTANCE + self.window) // 8  # its ring's first qword in the SOP alias
        self._empty(0)
        self.state = SendContextState.DISABLED

    @property
    def enabled(self) -> bool:
        return self.state in (_S.RUNNING, _S.HALTED)

    @property
    def halted(self) -> bool:
        return self.state in _HALTED_STATES

    def event(self, event: SendContextEvent) -> SendContextState:
        new = TRANSITIONS.get((self.state, event), self.state)
        if new is not self.state:
            self.block.log.debug("SEND_CTXT_STATUS[%d]: %s -> %s (%s)", self.hw, self.state.value, new.value,
                                 event.value)
            old, self.state = self.state, new
            if self.block.qwords is not None:
                if old is _S.DISABLED and new is _S.RUNNING:
                    self.arm(range(self.depth))  # whatever was stored while disabled is dropped
                self.block.track(self)
        return new

    def _empty(self, depth: int) -> None:
        self.depth = depth
        self.ring = bytearray(PIO_BLOCK * depth)
        self.written = [0] * depth
        self.sop = [False] * depth
        self.launch_at = 0

    def init(self) -> None:
        """The PIO init engine: an empty ring, counters from 0, not halted."""
        regs = self.block.regs
        depth = field(regs.get(kctxt("SEND_CTXT_CTRL", self.hw)), SEND_CTXT_CTRL_CTXT_DEPTH_SHIFT,
                      SEND_CTXT_CTRL_CTXT_DEPTH_MASK)
        self._empty(depth)
        self.free_counter = self.last_returned = 0
        if self.block.qwords is not None:
            self.arm(range(depth))
        self.event(SendContextEvent.INIT)

    # -- the guest's stores (transport thread) -----------------------------------
    def write(self, offset: int, size: int, value: int, sop: bool) -> None:
        if self.state is not SendContextState.RUNNING:
            self.dropped_writes += 1
            return
        if offset + size > PIO_BLOCK * self.depth:
            self.halt(SEND_CTXT_ERR_STATUS_PIO_WRITE_OUT_OF_BOUNDS_ERR_SMASK,
                      f"write at {offset:#x} beyond its {self.depth} blocks")
            return
        index, within = divmod(offset, PIO_BLOCK)
        lanes = ((1 << size) - 1) << within
        if self.written[index] & lanes:
            self.halt(SEND_CTXT_ERR_STATUS_PIO_WRITE_OVERFLOW_ERR_SMASK,
                      f"block {index} byte {within} written twice before launch")
            return
        self.ring[offset:offset + size] = value.to_bytes(size, "little")
        self.bytes_written += size
        written = self.written[index] | lanes
        self.written[index] = written
        if sop:
            self.sop[index] = True
        if written == FULL_BLOCK:
            self._block_completed()

    def _block_completed(self) -> None:
        """A store completed a block: queue the launcher, or with
        `Pio.launch_inline` launch a small packet now, on the store's thread
        (see the module docstring)."""
        if not self.block.launch_inline or self.launch_posted:
            self._post_launch()
            return
        first = self.launch_at
        if self.written[first] != FULL_BLOCK:
            return  # the packet at the launch point is still being written: the store that ends it acts
        start = PIO_BLOCK * first
        length_dws = int.from_bytes(self.ring[start:start + PBC_BYTES], "little") & _PBC_LENGTH_MASK
        nblocks = -(-length_dws // 16)
        if nblocks > INLINE_MAX_BLOCKS:
            self._post_launch()
            return
        if any(self.written[(first + i) % self.depth] != FULL_BLOCK for i in range(nblocks)):
            return  # its last block is still being written
        if not self.block.port.peer_has_room():
            self._post_launch()  # the launcher waits for the link's credits
            return
        self.block.inline_launches += 1
        self.launch(batch=1)

    # -- the launcher (chip event) ---------------------------------------------------
    def launch(self, batch: int = LAUNCH_BATCH) -> None:
        """Send what the ring holds, in order, at most `batch` packets (see
        the module docstring); waits for link credits when the peer's
        buffer is full."""
        self.launch_posted = False
        if self.block.qwords is not None:
            self._launch_mapped()
            return
        launched = freed = 0
        due = 0
        port = self.block.port
        while self.state is SendContextState.RUNNING and launched < batch and self.launch_at < self.depth:
            first = self.launch_at
            if self.written[first] != FULL_BLOCK:
                break
            if not port.peer_has_room():
                port.wait_for_room(self._post_launch)  # the link's credits ran out: wait, drop nothing
                break
            if not self.sop[first]:
                self.halt(SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK,
                          f"block {first} starts a packet but was not written through the SOP alias")
                return
            start = PIO_BLOCK * first
            pbc = int.from_bytes(self.ring[start:start + PBC_BYTES], "little")
            blocks = self._packet_blocks(first, pbc)
            if blocks is None:
                return
            nblocks, length_dws = len(blocks), pbc & _PBC_LENGTH_MASK
            if any(self.written[b] != FULL_BLOCK for b in blocks):
                break  # the rest of the packet is still being written
            if any(self.sop[b] for b in blocks[1:]):
                self.halt(SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK,
                          f"PBC says {nblocks} blocks but a new packet starts inside them")
                return
            nbytes = 4 * length_dws
            end = start + nbytes
            if end <= len(self.ring):
                frame = bytes(self.ring[start:end])
            else:
                frame = bytes(self.ring[start:]) + bytes(self.ring[:end - len(self.ring)])
            if self._refuses(first, frame):
                return
            for b in blocks:
                self.written[b] = 0
                self.sop[b] = False
            due |= self._launched(first, nblocks, pbc, frame)
            freed += nblocks
            launched += 1
        self._after_launches(launched, freed, due, batch)

    def _packet_blocks(self, first: int, pbc: int) -> list[int] | None:
        """The ring blocks the packet starting at block `first` covers, by its
        PBC length; None, with the context halted, for a length no packet has."""
        length_dws = pbc & _PBC_LENGTH_MASK
        nblocks = -(-length_dws // 16)
        if length_dws < MIN_PACKET_DWS or length_dws > MAX_PACKET_DWS or nblocks > self.depth:
            self.halt(SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK,
                      f"PBC length {length_dws} dwords (ring of {self.depth} blocks)")
            return None
        return [(first + i) % self.depth for i in range(nblocks)]

    def _refuses(self, first: int, frame: bytes) -> bool:
        """Do the context's integrity checks refuse `frame`? Then it halts."""
        refused = self.block.integrity.refused(frame, self.hw)
        if refused:
            self.refused += 1
            self.block.send.refuse(refused, self.hw)
            self.halt(SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK,
                      f"block {first}: its integrity checks refuse the packet ({describe(refused)})")
        return bool(refused)

    def _launched(self, first: int, nblocks: int, pbc: int, frame: bytes) -> int:
        """The packet at `first`, its blocks freed, goes to egress; the
        credit-return reason it asks for (its PBC's CreditReturn), or 0."""
        self.launch_at = (first + nblocks) % self.depth
        self.free_counter += nblocks
        self.packets += 1
        self.block.send.egress(frame)
        return CR_DUE_TO_PBC if pbc & _PBC_CREDIT_RETURN else 0

    # -- PIO space in shared memory (module docstring) -------------------------------
    def arm(self, blocks) -> None:
        """Write the sentinel into the watched qwords of `blocks` (free ones)."""
        q, sentinel = self.block.qwords, self.block.sentinel
        base = self.window // 8
        for b in blocks:
            if b >= WINDOW_BLOCKS:
                continue  # beyond the window: another context's
            non_sop = base + QWORDS_PER_BLOCK * b
            sop = non_sop + SOP_DISTANCE // 8
            q[sop] = q[sop + 7] = q[non_sop + 7] = sentinel

    def _launch_mapped(self) -> None:
        """The launcher over shared memory: the packets the guest completed
        at the launch point, in order, at most LAUNCH_BATCH."""
        block = self.block
        q, space, sentinel, port = block.qwords, block.space, block.sentinel, block.port
        base = self.window // 8
        sop_base = base + SOP_DISTANCE // 8
        launched = freed = due = 0
        while self.state is SendContextState.RUNNING and launched < LAUNCH_BATCH:
            first = self.launch_at
            if first >= min(self.depth, WINDOW_BLOCKS):
                break  # an empty ring, or one beyond its window: never written (as trapped)
            sop = sop_base + QWORDS_PER_BLOCK * first
            pbc = q[sop]
            if pbc == sentinel:
                break  # no packet started here yet
            blocks = self._packet_blocks(first, pbc)
            if blocks is None:
                return
            nblocks, length_dws = len(blocks), pbc & _PBC_LENGTH_MASK
            if max(blocks) >= WINDOW_BLOCKS:
                break  # it reaches beyond the window: never complete (and never read from the next one)
            last = blocks[-1]
            done = q[sop + 7] if nblocks == 1 else q[base + QWORDS_PER_BLOCK * last + 7]
            if done == sentinel:
                break  # the rest of the packet is still being written
            if not port.peer_has_room():
                port.wait_for_room(self._post_launch)  # the link's credits ran out: wait, drop nothing
                break
            if any(q[sop_base + QWORDS_PER_BLOCK * b] != sentinel for b in blocks[1:]):
                self.halt(SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK,
                          f"PBC says {nblocks} blocks but a new packet starts inside them")
                return
            start = 8 * sop
            parts = [space[start:start + PIO_BLOCK]]
            for b in blocks[1:]:
                at = self.window + PIO_BLOCK * b
                parts.append(space[at:at + PIO_BLOCK])
            frame = b"".join(parts)[:4 * length_dws]
            if self._refuses(first, frame):
                return
            self.arm(blocks)
            self.bytes_written += 64 * nblocks
            due |= self._launched(first, nblocks, pbc, frame)
            freed += nblocks
            launched += 1
        self._after_launches(launched, freed, due)

    def _after_launches(self, launched: int, freed: int, due: int, batch: int = LAUNCH_BATCH) -> None:
        if freed:
            credit_ctrl = self.block.regs.get(kctxt("SEND_CTXT_CREDIT_CTRL", self.hw))
            threshold = credit_ctrl & SEND_CTXT_CREDIT_CTRL_THRESHOLD_SMASK
            if (self.free_counter - self.last_returned) & CR_COUNTER_MASK > threshold:
                due |= CR_DUE_TO_THRESHOLD
            self.return_credits(due)
        if launched == batch and self.state is SendContextState.RUNNING and (
                self.block.qwords is not None or self.written[self.launch_at] == FULL_BLOCK):
            self._post_launch()  # more is (or, mapped, may be) ready: the launcher goes on as a chip event

    def _post_launch(self) -> None:
        if not self.launch_posted:
            self.launch_posted = True
            self.block.services.post(self.launch)

    # -- errors, credit return ---------------------------------------------------------
    def halt(self, error: int, why: str) -> None:
        """Stop the context with a SEND_CTXT_ERR_STATUS error (source 32 + h)."""
        if self.state is not SendContextState.RUNNING:
            return
        self.event(SendContextEvent.HALT)
        self.halts += 1
        block = self.block
        limited(block, block.log, "send context halts").warning("SEND_CTXT_STATUS[%d]: halted: %s", self.hw, why)
        block.context_errors.set(error, self.hw)
        block.services.post(lambda: self.return_credits(CR_DUE_TO_ERROR))

    def return_credits(self, reason: int) -> None:
        block = self.block
        base = block.regs.get(kctxt("SEND_CTXT_CREDIT_RETURN_ADDR", self.hw)) & \
            SEND_CTXT_CREDIT_RETURN_ADDR_ADDRESS_SMASK
        counter = self.free_counter & CR_COUNTER_MASK
        value = counter | (CR_STATUS if self.halted else 0) | reason
        dma = block.services.dma
        if base == 0 or dma is None:
            limited(block, block.log, "credit returns dropped").warning(
                "SEND_CTXT_CREDIT_RETURN_ADDR[%d] not set: credit return dropped", self.hw)
            return
        try:
            dma.write(base + 8 * (self.hw & 7), value.to_bytes(8, "little"))
        except DmaError as err:
            limited(block, block.log, "credit returns failed").warning(
                "SEND_CTXT_CREDIT_RETURN_ADDR[%d]: credit return to %#x failed: %s", self.hw, base, err)
            return
        self.last_returned = counter
        if block.regs.get(kctxt("SEND_CTXT_CREDIT_CTRL", self.hw)) & SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK:
            block.intr.raise_source(IS_SENDCREDIT_START + self.hw)


class Pio(Block):
    name = "pio"

    def __init__(self, services: ChipServices, intr: InterruptController, send: Send, port: Hfi1Port):
        self.intr = intr
        self.send = send
        self.port = port
        #: launch small packets on the store's thread (`set_launch_mode`); a
        #: setting of the server, not chip state: a reset keeps it
        self.launch_inline = False
        #: the PIO space in shared memory (`map_space`): bytes and qwords; None while trapped
        self.space: memoryview | None = None
        self.qwords: memoryview | None = None
        self.sentinel = 0
        #: the poller: running contexts, its pending event, period, last packet seen, polls run
        self.polled: dict[int, PioSendContext] = {}
        self._poll_job = None
        self._poll_due = 0.0
        self._poll_period = POLL_FAST_S
        self._last_activity = 0.0
        self.polls = 0
        super().__init__(services)

    def set_launch_mode(self, mode: str) -> None:
        """`engine` (every launch a chip event) or `inline` (see the module docstring)."""
        if mode not in LAUNCH_MODES:
            raise ValueError(f"pio-launch takes {' or '.join(LAUNCH_MODES)}, not {mode!r}")
        self.launch_inline = mode == "inline"

    def declare(self) -> list[Register]:
        contexts = self.config.send_contexts
        self.errors = ErrorFlags(self.intr, PIO_ERR_INT, "SEND_PIO_ERR_STATUS", "SEND_PIO_ERR_CLEAR",
                                 "SEND_PIO_ERR_MASK")
        self.context_errors = ErrorFlags(self.intr, IS_SENDCTXT_ERR_START, "SEND_CTXT_ERR_STATUS",
                                         "SEND_CTXT_ERR_CLEAR", "SEND_CTXT_ERR_MASK",
                                         count=contexts, stride=KCTXT_STRIDE)
        self.contexts = [PioSendContext(self, h) for h in range(contexts)]
        self.integrity = IntegrityChecker(self.regs, "SEND_CTXT_CHECK", self.send.max_dwords)
        self.stray_writes = 0
        self.inline_launches = 0
        regs = [
            csr("SEND_PIO_INIT_CTXT", writable=SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK
                | SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK
                | SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK << SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT,
                on_write=self._init_engine),
            *self.errors.declare(),
            *self.context_errors.declare(),
            *csr_array("SEND_CTXT_CTRL", contexts, KCTXT_STRIDE,
                       per_index=lambda h: {"on_write": lambda old, new, h=h: self._ctrl(h, old, new)}),
            *csr_array("SEND_CTXT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO,
                       per_index=lambda h: {"on_read": lambda _v, h=h: self._status(h)}),
            *csr_array("SEND_CTXT_CREDIT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO,
                       per_index=lambda h: {"on_read": lambda _v, h=h: self._credit_status(h)}),
            *csr_array("SEND_CTXT_CREDIT_FORCE", contexts, KCTXT_STRIDE,
                       per_index=lambda h: {"on_write": lambda old, new, h=h: self._force(h, old, new)}),
        ]
        for name in CONTEXT_CSRS:
            regs += csr_array(name, contexts, KCTXT_STRIDE)
        return regs

    def reset(self) -> None:
        self.contexts = [PioSendContext(self, h) for h in range(len(self.contexts))]
        self.stray_writes = 0
        self.inline_launches = 0
        self.polled.clear()
        cancel_jobs(self._poll_job)  # (a device reset drops it anyway)
        self._poll_job = None

    def counters(self) -> dict:
        busy = {c.hw: {"packets": c.packets, "dropped_writes": c.dropped_writes, "halted": c.halted,
                       "halts": c.halts, "refused": c.refused}
                for c in self.contexts if c.packets or c.dropped_writes or c.halts or c.halted}
        counters = {"packets": sum(c.packets for c in self.contexts), "stray_writes": self.stray_writes,
                    "launch": "inline" if self.launch_inline else "engine", "inline_launches": self.inline_launches,
                    "contexts": busy}
        if self.qwords is not None:
            counters["mapped"] = {"polls": self.polls, "period_us": round(self._poll_period * 1e6),
                                  "polled_contexts": len(self.polled)}
        return counters

    # -- PIO space in shared memory (module docstring) -----------------------------------
    def map_space(self, memory: memoryview) -> None:
        """Serve the PIO space from `memory` (all of BAR0, shared with the guest)."""
        self.space = memory[TXE_PIO_SEND:TXE_PIO_SEND + TXE_PIO_SIZE]
        self.qwords = self.space.cast("Q")
        self.sentinel = int.from_bytes(os.urandom(8), "little") | 1  # never 0, what a zero fill writes
        for context in self.contexts:
            context.arm(range(context.depth))
            self.track(context)

    def unmap_space(self) -> None:
        cancel_jobs(self._poll_job)
        self._poll_job = None
        self.polled.clear()
        if self.qwords is not None:
            self.qwords.release()
            self.space.release()
        self.space = self.qwords = None

    def track(self, context: PioSendContext) -> None:
        """A context changed state: poll it while it runs."""
        if context.state is SendContextState.RUNNING:
            self.polled[context.hw] = context
            self.nudge()
        else:
            self.polled.pop(context.hw, None)

    def nudge(self) -> None:
        """Poll soon: a context started, or the guest touched a trapped
        register (it is active, packets may follow). Only packets hold the
        period at fast (POLL_HOLD_S): after a nudge alone it backs off at
        once, so a guest's periodic register accesses cost a few polls."""
        if self.qwords is None or not self.polled:
            return
        self._poll_period = POLL_FAST_S
        now = self.services.now()
        if self._poll_job is not None and not self._poll_job.cancelled and self._poll_due <= now + POLL_FAST_S:
            return
        cancel_jobs(self._poll_job)
        self._schedule_poll(now)

    def _schedule_poll(self, now: float) -> None:
        self._poll_due = now + self._poll_period
        self._poll_job = self.services.after(self._poll_period, self._poll)

    def _poll(self) -> None:
        self._poll_job = None
        if self.qwords is None or not self.polled:
            return
        self.polls += 1
        q, sentinel = self.qwords, self.sentinel
        active = False
        for context in list(self.polled.values()):
            first = context.launch_at
            if first < WINDOW_BLOCKS and q[context.sop_qword + QWORDS_PER_BLOCK * first] != sentinel:
                before = context.packets + context.halts
                context.launch()
                active = active or context.packets + context.halts != before
        now = self.services.now()
        if active:
            self._poll_period, self._last_activity = POLL_FAST_S, now
        elif now - self._last_activity > POLL_HOLD_S:
            self._poll_period = min(2 * self._poll_period, POLL_IDLE_S)
        if self.polled:
            self._schedule_poll(now)

    # -- contexts ------------------------------------------------------------------
    def _ctrl(self, ctxt: int, old: int, new: int) -> None:
        if (old ^ new) & SEND_CTXT_CTRL_CTXT_ENABLE_SMASK:
            context = self.contexts[ctxt]
            context.event(SendContextEvent.ENABLE if new & SEND_CTXT_CTRL_CTXT_ENABLE_SMASK
                          else SendContextEvent.DISABLE)
            self.log.debug("SEND_CTXT_CTRL[%d]: %s, %d blocks", ctxt, context.state.value, context.depth)

    def _status(self, ctxt: int) -> int:
        return SEND_CTXT_STATUS_CTXT_HALTED_SMASK if self.contexts[ctxt].halted else 0

    def _init_engine(self, _old: int, new: int) -> None:
        if new & SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK:
            targets = self.contexts
        elif new & SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK:
            ctxt = field(new, SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_SHIFT, SEND_PIO_INIT_CTXT_PIO_CTXT_NUM_MASK)
            targets = [self.contexts[ctxt]] if ctxt < len(self.contexts) else []
        else:
            return
        for context in targets:
            context.init()

    def freeze(self) -> None:
        """An SPC freeze halts every running context, with no error of its own."""
        for context in self.contexts:
            context.event(SendContextEvent.HALT)

    # -- credit return ---------------------------------------------------------------
    def _credit_status(self, ctxt: int) -> int:
        context = self.contexts[ctxt]
        return ((context.free_counter & CR_COUNTER_MASK) << SEND_CTXT_CREDIT_STATUS_CURRENT_FREE_COUNTER_SHIFT
                | context.last_returned)

    def _force(self, ctxt: int, old: int, new: int) -> None:
        if new & ~old & SEND_CTXT_CREDIT_FORCE_FORCE_RETURN_SMASK:
            context = self.contexts[ctxt]
            self.services.post(lambda: context.return_credits(CR_DUE_TO_FORCE))

    # -- PIO send space ----------------------------------------------------------------
    def space_write(self, offset: int, size: int, value: int) -> None:
        rel = offset - TXE_PIO_SEND
        sop = rel >= SOP_DISTANCE
        rel %= SOP_DISTANCE
        ctxt, within = rel >> 16, rel & (PIO_CONTEXT_WINDOW - 1)
        if ctxt >= len(self.contexts):
            self.stray_writes += 1
            if self.stray_writes == 1:
                self.log.warning("PIO write to send context %d, which does not exist: dropped", ctxt)
            return
        self.contexts[ctxt].write(within, size, value, sop)
