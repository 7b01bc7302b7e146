"""SDMA engines: the halt -> clean-up handshake and the descriptor rings.

    SEND_DMA_ERR_STATUS/MASK/CLEAR 0x1800060/68/70  second tier of source 5
    per engine e, 0x1A00000 + 0x100e:
      SEND_DMA_CTRL        RW  [0] ENABLE [1] HALT [2] CLEANUP [3] INT_ENABLE
      SEND_DMA_STATUS      RO  [56] ENG_HALTED [57] ENG_CLEANED_UP
      SEND_DMA_BASE_ADDR   RW  the descriptor ring (16-byte descriptors, formats.SDMA_DESC0/1)
      SEND_DMA_LEN_GEN     RW  [17:6] ring length / 64, [18:16] generation: written 0 then 4,
                               which turns generation checking on at generation 0
      SEND_DMA_TAIL        RW  doorbell: index of the next free slot
      SEND_DMA_HEAD        RO  index of the next descriptor the engine will process
      SEND_DMA_HEAD_ADDR   RW  where HEAD_TO_HOST writes the head (u64)
      SEND_DMA_RELOAD_CNT  RW  idle time before the Idle interrupt, core clocks (0: none)
      SEND_DMA_DESC_CNT    RW  [15:0] descriptors per Progress interrupt (0: none); a write
                               restarts the count
      SEND_DMA_PRIORITY_THLD, MEMORY  RW (storage)
      SEND_DMA_CHECK_*     RW  the engine's integrity checks (integrity.py)
      SEND_DMA_IDLE_CNT, SEND_DMA_DESC_FETCHED_CNT  RO counters
      SEND_DMA_ENG_ERR_STATUS/MASK/CLEAR  second tier of source 16 + e

Start-up is a handshake the driver cannot leave without the device (sdma.c
state machine, s10 -> s15 -> s20/s99):

    driver: CTRL = HALT                       engine: HALTING
    engine (after sdma_halt_s): STATUS.ENG_HALTED, ENG_ERR_STATUS.SDMA_HALT_ERR,
            source 16+e (MSI-X through CCE_INT_MAP)   HALTED
    driver: ENG_ERR_CLEAR, polls ENG_HALTED, CTRL = INT_ENABLE | CLEANUP
    engine (after sdma_cleanup_s): head = 0, generation 0, STATUS.ENG_CLEANED_UP   CLEANED
    driver: LEN_GEN, TAIL = 0, CTRL = INT_ENABLE (idle) or ENABLE | INT_ENABLE   RUNNING

Running, a TAIL write (the transport thread) only records the tail and
queues the engine; the engine (a chip event) then, packet by packet, up to
ENGINE_BATCH packets a step:

    read descriptors head.. until LAST (waiting if the tail stops short of it),
    checking FIRST/LAST, the generation, the count and the total length;
    gather the data they point at; check the total against the PBC; egress;
    move the head past LAST; HEAD_TO_HOST: write the head to HEAD_ADDR;
    INT_REQ: source 192+e (SDma); every DESC_CNT descriptors: 208+e (Progress);
    drained and still idle RELOAD_CNT clocks later: 224+e (Idle)

(all three only with CTRL.INT_ENABLE). The head passes a packet only after all
its data was read, so the driver may free its buffers when it sees the head.

When the peer's receive buffer is full the engine waits for room (link
credits) before its next packet; nothing is dropped.

A packet the engine's integrity checks (SEND_DMA_CHECK_*) refuse is not
sent: SEND_EGRESS_ERR_STATUS.TxSdma<e>DisallowedPacketErr (source 6), the
failed checks in SEND_EGRESS_ERR_INFO, the engine in SEND_EGRESS_ERR_SOURCE.
The engine itself goes on, the head past the packet, with its completion
and interrupts as if it had been sent [inferred: the driver's handler,
handle_egress_err, only counts the discard; nothing in sdma.c restarts an
engine for it, so one that stopped would hang every QP behind it].

A bad descriptor halts the engine with its SEND_DMA_ENG_ERR_STATUS bit and
source 16+e, the head left at the packet that failed: a tail beyond the ring
(TailOutOfBounds), a ring or buffer address outside guest memory (MemRead), a
first descriptor without FIRST or a later one with it (FirstDesc), a stale
generation (GenMismatch), more than 64 descriptors (PacketDescOverflow), a
packet over 16383 bytes (TooLong), a total that disagrees with PBC.LengthDWs
(LengthMismatch), an AHG descriptor (HeaderSelect: automatic header
generation is not modelled; the driver uses it only when cap_mask asks). The
driver's own recovery (halt wait, software clean-up, CLEANUP, ENABLE) then
brings it back. An SPC freeze halts every engine and the unfreeze leaves it
cleaned up, with no error interrupt (sdma.c: "acts like a halt and a hardware
clean combined").

Collaborators: the interrupt controller (SDMA errors, source 5; engine errors
16 + e; SDma, Progress and Idle of each engine), egress (`send.Send.egress`),
the port (room at the link partner, asked before each packet) and the chip's
services (guest memory, events).
"""
from __future__ import annotations

from enum import Enum

from common.ratelog import limited
from devmodel.base import DmaError
from devmodel.regs import Access, Register

from .chip_registers import (
    SEND_DMA_CTRL_SDMA_CLEANUP_SMASK,
    SEND_DMA_CTRL_SDMA_ENABLE_SMASK,
    SEND_DMA_CTRL_SDMA_HALT_SMASK,
    SEND_DMA_CTRL_SDMA_INT_ENABLE_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_FIRST_DESC_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_GEN_MISMATCH_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_HEADER_SELECT_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_LENGTH_MISMATCH_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_MEM_READ_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_PACKET_DESC_OVERFLOW_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_TAIL_OUT_OF_BOUNDS_ERR_SMASK,
    SEND_DMA_ENG_ERR_STATUS_SDMA_TOO_LONG_ERR_SMASK,
    SEND_DMA_LEN_GEN_GENERATION_SHIFT,
    SEND_DMA_LEN_GEN_LENGTH_SHIFT,
    SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK,
    SEND_DMA_STATUS_ENG_HALTED_SMASK,
    SEND_EGRESS_ERR_STATUS_TX_SDMA0_DISALLOWED_PACKET_ERR_SMASK,
)
from .csr import KCTXT_STRIDE, Block, csr_array, kctxt
from .formats import PBC, PBC_BYTES, SDMA_DESC0, SDMA_DESC1, SDMA_DESCRIPTOR_BYTES
from .integrity import IntegrityChecker
from .intr import (
    IS_SDMA_IDLE_START,
    IS_SDMA_PROGRESS_START,
    IS_SDMA_START,
    IS_SDMAENG_ERR_START,
    SDMA_ERR_INT,
    ErrorFlags,
    InterruptController,
)
from .port import Hfi1Port
from .send import Send
from .services import ChipServices, cancel_jobs

ENGINE_CSRS = ("SEND_DMA_BASE_ADDR", "SEND_DMA_HEAD_ADDR", "SEND_DMA_PRIORITY_THLD",
               "SEND_DMA_RELOAD_CNT", "SEND_DMA_MEMORY", "SEND_DMA_CHECK_ENABLE",
               "SEND_DMA_CHECK_VL", "SEND_DMA_CHECK_JOB_KEY", "SEND_DMA_CHECK_PARTITION_KEY",
               "SEND_DMA_CHECK_SLID", "SEND_DMA_CHECK_OPCODE")
MAX_DESCRIPTORS_PER_PACKET = 64
MAX_SDMA_PACKET_BYTES = 16383  # sdma.h MAX_SDMA_PKT_SIZE, the 14-bit byte count
ENGINE_BATCH = 32  # packets per engine step
CCLOCK_S = 1.242e-9  # ASIC core clock (ASIC_CCLOCK_PS)
_ADDRESS_MASK = SDMA_DESC0.mask["address"]
_COUNT_SHIFT, _COUNT_MASK = SDMA_DESC0.shift["byte_count"], SDMA_DESC0.mask["byte_count"]
_FIRST, _LAST = 1 << SDMA_DESC0.shift["first"], 1 << SDMA_DESC0.shift["last"]
_GEN_SHIFT, _GEN_MASK = SDMA_DESC1.shift["generation"], SDMA_DESC1.mask["generation"]
_AHG_MODE = SDMA_DESC1.mask["ahg_mode"] << SDMA_DESC1.shift["ahg_mode"]
_HEAD_TO_HOST, _INT_REQ = 1 << SDMA_DESC1.shift["head_to_host"], 1 << SDMA_DESC1.shift["int_req"]
_GEN_CHECK = 4 << SEND_DMA_LEN_GEN_GENERATION_SHIFT
_PBC_LENGTH_MASK = PBC.mask["length_dws"]


class EngineState(Enum):
    DISABLED = "disabled"
    RUNNING = "running"
    HALTING = "halting"
    HALTED = "halted"
    CLEANING = "cleaning"
    CLEANED = "cleaned up"


class DescriptorError(Exception):
    """A descriptor the engine refuses; halts it with `error` (ENG_ERR_STATUS bit)."""

    def __init__(self, error: int, message: str):
        super().__init__(message)
        self.error = error


class SendDmaEngine:
    def __init__(self, block: "Sdma", index: int):
        self.block = block
        self.services = block.services
        self.config = block.config
        self.intr = block.intr
        self.regs = block.regs
        self.index = index
        self.state = EngineState.DISABLED
        self._pending = None
        self._idle_timer = None
        self.step_posted = False
        self.reset()

    def offset(self, name: str) -> int:
        return kctxt(name, self.index)

    def reset(self) -> None:
        self._cancel()
        self.state = EngineState.DISABLED
        self.head = 0
        self.tail = 0
        self.lap = 0  # ring wraps since the last clean-up: the descriptors' generation
        self.gen_check = False
        self.since_progress = 0
        self.tail_writes = 0
        self.packets = 0
        self.descriptors = 0
        self.errors = 0
        self.refused = 0  # packets its integrity checks refused
        self.step_posted = False

    def _cancel(self) -> None:
        cancel_jobs(self._pending, self._idle_timer)
        self._pending = self._idle_timer = None

    def _status(self, halted: bool, cleaned: bool) -> None:
        value = (SEND_DMA_STATUS_ENG_HALTED_SMASK if halted else 0) | (SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK
                                                                      if cleaned else 0)
        self.regs.set(self.offset("SEND_DMA_STATUS"), value)

    def _enter(self, state: EngineState) -> None:
        if state is not self.state:
            self.block.log.debug("SEND_DMA_CTRL[%d]: %s -> %s", self.index, self.state.value, state.value)
        self.state = state

    # -- the driver's requests (transport thread) -----------------------------------
    def control(self, old: int, new: int) -> None:
        rising = new & ~old
        services, config = self.services, self.config
        if rising & SEND_DMA_CTRL_SDMA_HALT_SMASK and self.state in (EngineState.DISABLED, EngineState.RUNNING):
            self._enter(EngineState.HALTING)
            self._pending = services.after(config.sdma_halt_s, self._halted)
        if rising & SEND_DMA_CTRL_SDMA_CLEANUP_SMASK:
            if self.state is EngineState.HALTED:
                self._enter(EngineState.CLEANING)
                self._pending = services.after(config.sdma_cleanup_s, self._cleaned)
            elif self.state is not EngineState.CLEANED:
                limited(self.block, self.block.log, "SDMA cleanups ignored").warning(
                    "SEND_DMA_CTRL[%d]: CLEANUP while %s ignored", self.index, self.state.value)
        if (rising & SEND_DMA_CTRL_SDMA_ENABLE_SMASK and not new & SEND_DMA_CTRL_SDMA_HALT_SMASK
                and self.state in (EngineState.DISABLED, EngineState.CLEANED, EngineState.HALTED)):
            self._enter(EngineState.RUNNING)
            self._status(halted=False, cleaned=False)
            self._post_step()
        elif old & ~new & SEND_DMA_CTRL_SDMA_ENABLE_SMASK and self.state is EngineState.RUNNING:
            self._enter(EngineState.DISABLED)

    def len_gen(self, old: int, new: int) -> None:
        """SEND_DMA_LEN_GEN: clear-then-set of the generation MSB turns generation
        checking on and loads generation 0."""
        if new & _GEN_CHECK and not old & _GEN_CHECK:
            self.gen_check = True
            self.lap = 0

    def desc_cnt(self, _old: int, _new: int) -> None:
        """SEND_DMA_DESC_CNT: the driver rewrites it in every engine interrupt;
        the count toward the next Progress interrupt starts again [inferred]."""
        self.since_progress = 0

    def tail_written(self, _old: int, new: int) -> None:
        self.tail_writes += 1
        self.tail = new & 0xFFFF
        if self.state is EngineState.RUNNING:
            self._post_step()

    def _post_step(self) -> None:
        if not self.step_posted:
            self.step_posted = True
            self.services.post(self.step)

    # -- what the engine does on its own ------------------------------------------------
    def _halted(self) -> None:
        self._pending = None
        if self.state is not EngineState.HALTING:
            return
        self._enter(EngineState.HALTED)
        self._status(halted=True, cleaned=False)
        self.block.engine_errors.set(SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK, self.index)

    def _cleaned(self) -> None:
        self._pending = None
        if self.state is not EngineState.CLEANING:
            return
        self.head = 0
        self.lap = 0
        self.since_progress = 0
        self._enter(EngineState.CLEANED)
        self._status(halted=True, cleaned=True)

    def freeze(self) -> None:
        self._cancel()
        self._enter(EngineState.HALTED)
        self._status(halted=True, cleaned=False)

    def unfreeze(self) -> None:
        self.head = 0
        self.lap = 0
        self._enter(EngineState.CLEANED)
        self._status(halted=True, cleaned=True)

    def _error(self, error: DescriptorError) -> None:
        self.errors += 1
        self.block.log.warning("SEND_DMA_ENG_ERR_STATUS[%d]: engine halted at descriptor %d: %s",
                               self.index, self.head, error)
        self._cancel()
        self._enter(EngineState.HALTED)
        self._status(halted=True, cleaned=False)
        self.block.engine_errors.set(error.error, self.index)

    # -- the descriptor ring (chip events) ------------------------------------------------
    def ring(self) -> tuple[int, int]:
        base = self.regs.get(self.offset("SEND_DMA_BASE_ADDR"))
        count = ((self.regs.get(self.offset("SEND_DMA_LEN_GEN")) >> SEND_DMA_LEN_GEN_LENGTH_SHIFT) & 0xFFF) * 64
        return base, count

    def step(self) -> None:
        self.step_posted = False
        if self.state is not EngineState.RUNNING or self.head == self.tail:
            return
        base, count = self.ring()
        port = self.block.port
        try:
            if self.tail >= count or self.head >= count:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_TAIL_OUT_OF_BOUNDS_ERR_SMASK,
                                      f"tail {self.tail} (head {self.head}) beyond a ring of {count}")
            for _ in range(ENGINE_BATCH):
                if self.head == self.tail:
                    break
                if not port.peer_has_room():
                    port.wait_for_room(self._post_step)  # the link's credits ran out: wait, drop nothing
                    return
                if not self._one_packet(base, count):
                    break
            else:
                if self.head != self.tail:  # a full batch that drained the ring still goes idle below
                    self._post_step()
                    return
        except DescriptorError as err:
            self._error(err)
            return
        if self.head == self.tail:
            self._drained()

    def _one_packet(self, base: int, count: int) -> bool:
        """Send the packet at the head; False if its LAST descriptor is not
        below the tail yet (the driver is still writing it)."""
        dma = self.services.dma
        index, lap, parts, total, flags1 = self.head, self.lap, [], 0, 0
        for n in range(MAX_DESCRIPTORS_PER_PACKET + 1):
            if index == self.tail:
                return False
            if n == MAX_DESCRIPTORS_PER_PACKET:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_PACKET_DESC_OVERFLOW_ERR_SMASK,
                                      f"more than {MAX_DESCRIPTORS_PER_PACKET} descriptors without LAST")
            try:
                raw = dma.read(base + SDMA_DESCRIPTOR_BYTES * index, SDMA_DESCRIPTOR_BYTES)
            except (DmaError, AttributeError) as err:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_MEM_READ_ERR_SMASK,
                                      f"descriptor ring at {base:#x}: {err}") from None
            qw0 = int.from_bytes(raw[:8], "little")
            qw1 = int.from_bytes(raw[8:], "little")
            if self.gen_check and (qw1 >> _GEN_SHIFT) & _GEN_MASK != lap & _GEN_MASK:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_GEN_MISMATCH_ERR_SMASK,
                                      f"descriptor {index} has generation {(qw1 >> _GEN_SHIFT) & _GEN_MASK}, "
                                      f"expected {lap & _GEN_MASK}")
            if bool(qw0 & _FIRST) != (n == 0):
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_FIRST_DESC_ERR_SMASK,
                                      f"descriptor {index}: FIRST {'missing' if n == 0 else 'inside a packet'}")
            if qw1 & _AHG_MODE:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_HEADER_SELECT_ERR_SMASK,
                                      f"descriptor {index} asks for AHG, which is not modelled")
            nbytes = (qw0 >> _COUNT_SHIFT) & _COUNT_MASK
            total += nbytes
            if total > MAX_SDMA_PACKET_BYTES:
                raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_TOO_LONG_ERR_SMASK,
                                      f"packet of more than {MAX_SDMA_PACKET_BYTES} bytes")
            if nbytes:
                address = qw0 & _ADDRESS_MASK
                try:
                    parts.append(dma.read(address, nbytes))
                except DmaError as err:
                    raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_MEM_READ_ERR_SMASK,
                                          f"descriptor {index}: {nbytes} bytes at {address:#x}: {err}") from None
            flags1 |= qw1
            index += 1
            if index == count:
                index, lap = 0, lap + 1
            if qw0 & _LAST:
                break
        frame = b"".join(parts)
        length = 4 * (int.from_bytes(frame[:PBC_BYTES], "little") & _PBC_LENGTH_MASK) if len(frame) >= PBC_BYTES else -1
        if length != len(frame):
            raise DescriptorError(SEND_DMA_ENG_ERR_STATUS_SDMA_LENGTH_MISMATCH_ERR_SMASK,
                                  f"descriptors carry {len(frame)} bytes, the PBC says {length}")
        refused = self.block.integrity.refused(frame, self.index)
        if refused:
            self.refused += 1
            self.block.send.refuse(refused, self.index,
                                   status=SEND_EGRESS_ERR_STATUS_TX_SDMA0_DISALLOWED_PACKET_ERR_SMASK << self.index)
        else:
            self.block.send.egress(frame)
        done = (index - self.head) % count or count
        self.head, self.lap = index, lap
        self.packets += 1
        self.descriptors += done
        interrupts = self.regs.get(self.offset("SEND_DMA_CTRL")) & SEND_DMA_CTRL_SDMA_INT_ENABLE_SMASK
        if flags1 & _HEAD_TO_HOST:
            self._head_to_host()
        if interrupts and flags1 & _INT_REQ:
            self._interrupt(IS_SDMA_START)
        period = self.regs.get(self.offset("SEND_DMA_DESC_CNT")) & 0xFFFF
        self.since_progress += done
        if period and self.since_progress >= period:
            self.since_progress = 0
            if interrupts:
                self._interrupt(IS_SDMA_PROGRESS_START)
        return True

    def _interrupt(self, first_source: int) -> None:
        """Raise one of the engine's three sources (SDma, Progress, Idle) --
        unless one of them is still pending: the driver's handler clears the
        pending bit and only then reads SEND_DMA_HEAD, so it will see this
        progress too, and a second MSI-X message would only find the status
        already cleared ("SDMA engine N interrupt, but no status bits set")."""
        intr = self.intr
        e = self.index
        if intr.outstanding(IS_SDMA_START + e) or intr.outstanding(IS_SDMA_PROGRESS_START + e) \
                or intr.outstanding(IS_SDMA_IDLE_START + e):
            return
        intr.raise_source(first_source + e)

    def _head_to_host(self) -> None:
        address = self.regs.get(self.offset("SEND_DMA_HEAD_ADDR"))
        try:
            self.services.dma.write(address, self.head.to_bytes(8, "little"))
        except DmaError as err:
            limited(self.block, self.block.log, "SDMA head writes failed").warning(
                "SEND_DMA_HEAD_ADDR[%d]: head write to %#x failed: %s", self.index, address, err)

    def _drained(self) -> None:
        reload = self.regs.get(self.offset("SEND_DMA_RELOAD_CNT")) & 0xFFFF
        if reload and self._idle_timer is None:
            self._idle_timer = self.services.after(reload * CCLOCK_S, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if (self.state is EngineState.RUNNING and self.head == self.tail
                and self.regs.get(self.offset("SEND_DMA_CTRL")) & SEND_DMA_CTRL_SDMA_INT_ENABLE_SMASK):
            self._interrupt(IS_SDMA_IDLE_START)


class Sdma(Block):
    name = "sdma"

    def __init__(self, services: ChipServices, intr: InterruptController, send: Send, port: Hfi1Port):
        self.intr = intr
        self.send = send
        self.port = port
        super().__init__(services)

    def declare(self) -> list[Register]:
        count = self.config.sdma_engines
        self.engines = [SendDmaEngine(self, e) for e in range(count)]
        self.integrity = IntegrityChecker(self.regs, "SEND_DMA_CHECK", self.send.max_dwords)
        self.errors = ErrorFlags(self.intr, SDMA_ERR_INT, "SEND_DMA_ERR_STATUS", "SEND_DMA_ERR_CLEAR",
                                 "SEND_DMA_ERR_MASK")
        self.engine_errors = ErrorFlags(self.intr, IS_SDMAENG_ERR_START, "SEND_DMA_ENG_ERR_STATUS",
                                        "SEND_DMA_ENG_ERR_CLEAR", "SEND_DMA_ENG_ERR_MASK",
                                        count=count, stride=KCTXT_STRIDE)

        def engine_hook(method: str):
            return lambda e: {"on_write": getattr(self.engines[e], method)}

        regs = [
            *self.errors.declare(),
            *self.engine_errors.declare(),
            *csr_array("SEND_DMA_CTRL", count, KCTXT_STRIDE, per_index=engine_hook("control")),
            *csr_array("SEND_DMA_TAIL", count, KCTXT_STRIDE, per_index=engine_hook("tail_written")),
            *csr_array("SEND_DMA_LEN_GEN", count, KCTXT_STRIDE, per_index=engine_hook("len_gen")),
            *csr_array("SEND_DMA_DESC_CNT", count, KCTXT_STRIDE, per_index=engine_hook("desc_cnt")),
            *csr_array("SEND_DMA_STATUS", count, KCTXT_STRIDE, access=Access.RO),
            *csr_array("SEND_DMA_HEAD", count, KCTXT_STRIDE, access=Access.RO,
                       per_index=lambda e: {"on_read": lambda _v, e=e: self.engines[e].head}),
            *csr_array("SEND_DMA_IDLE_CNT", count, KCTXT_STRIDE, access=Access.RO),
            *csr_array("SEND_DMA_DESC_FETCHED_CNT", count, KCTXT_STRIDE, access=Access.RO),
        ]
        for name in ENGINE_CSRS:
            regs += csr_array(name, count, KCTXT_STRIDE)
        return regs

    def reset(self) -> None:
        for engine in self.engines:
            engine.reset()

    def counters(self) -> dict:
        return {e.index: {"packets": e.packets, "descriptors": e.descriptors, "errors": e.errors,
                          "refused": e.refused}
                for e in self.engines if e.packets or e.errors or e.refused}

    def freeze(self) -> None:
        for engine in self.engines:
            engine.freeze()

    def unfreeze(self) -> None:
        for engine in self.engines:
            engine.unfreeze()
