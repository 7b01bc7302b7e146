"""Two HFIs on one fabric, and the driver's data-path sequences, for scenario tests.

    with pair() as (scheduler, a, b):           # models side by side, in-process
        a.pio_send(ud_packet(...))               # pio_copy into a kernel send context
        scheduler.run_until_idle()               # the chip events of both devices, in order
        entry = b.hdrq_entry(ctxt=1)             # what landed in B's guest memory

    with pair(over_the_wire=True) as ...:        # the same, through vfio-user clients
    with pair(remote=True) as ...:               # on a remote cable (testkit/remote_cable.py)

`Node` is one HFI as its guest sees it: the model, guest memory, MSI-X, and a
`DataPathDriver` that performs Linux 6.12 hfi1's CSR sequences for the data
path (chip.c hfi1_rcvctrl, hfi1_put_tid, init_qpmap_table, set_lidlmc,
set_link_state; pio.c sc_alloc/sc_enable; pio_copy.c pio_copy; sdma.c engine
start-up and descriptor submission) on top of the probe walk of
testkit/hfi1/probe.py.

Time is a ManualScheduler: nothing a device does on its own happens until the
test, or a driver read (each read lets 1 us pass, as a CPU's MMIO read
does), runs it. Both devices' events share that one queue, so a scenario runs
the same way every time.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

from devmodel.fabric import CableRole, cable, cable_remote
from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.config import ICODE_FUNCTIONAL_SIMULATOR, make_guid
from devmodel.hfi1.formats import PBC, RCV_ARRAY_ENTRY, RHF, SDMA_DESC0, SDMA_DESC1
from devmodel.wire import opa
from devmodel.worker import ManualScheduler
from emulator.pci.function import PciFunction
from emulator.server import Server
from testkit.client import Client, GuestMemory
from testkit.hfi1.guest import (
    IS_RCVAVAIL_START,
    IS_RCVURGENT_START,
    SC_ACK,
    SC_KERNEL,
    SC_USER,
    SC_VL15,
    GuestDriver,
)
from testkit.hfi1.over_vfio_user import DeviceOverTheWire
from testkit.hfi1.probe import N_KRCV_QUEUES, NUM_VLS, probe
from testkit.host import GUEST_BASE, GUEST_SIZE, FakeMemory, Host, MappedBar, MemfdMemory, Msix, SimulatedTime
from testkit.remote_cable import ManualNetwork

#: guest memory layout (offsets from GUEST_BASE)
CREDIT_RETURN = 0x0000  # 64 bytes per group of 8 send contexts
SDMA_HEAD_DMA = 0x0800  # 64 bytes per engine
DUMMY_TAIL = 0x4000
RCV_TAIL_DMA = 0x5000  # context 0's DMA_RTAIL word
SDMA_RINGS = 0x10000  # 32 KiB (2048 descriptors) per engine
HDRQS = 0x100000  # 256 KiB per kernel context
EAGER = 0x400000  # 512 KiB per kernel context (EAGER_BUFFERS x EAGER_BUFFER_BYTES)
PAYLOADS = 0x1000000  # SDMA payload buffers
HDRQ_ENTRIES = 2048
HDRQ_ENTRY_DWORDS = 32
EAGER_BUFFERS = 8
EAGER_BUFFER_BYTES = 64 << 10
SDMA_RING = 2048
FAST = dict(link_training_s=0.001, sdma_halt_s=2e-6, sdma_cleanup_s=2e-6, freeze_s=2e-6)


# -- the driver's data-path sequences ----------------------------------------------------------

class DataPathDriver(GuestDriver):
    """GuestDriver plus the data path (see the module docstring)."""

    def __init__(self, device, host, memory):
        super().__init__(device, host)
        self.memory = memory
        self.pio_fill: dict[int, int] = {}  # hw context -> fill_wrap (block index)
        self.pio_credits: dict[int, int] = {}
        self.sdma_tail: dict[int, int] = {}  # engine -> descq_tail (not wrapped)
        self.hdrq_head: dict[int, int] = {}  # context -> driver's head (dwords)
        self.rcv_seq: dict[int, int] = {}

    def read_uctxt_csr(self, ctxt: int, offset: int) -> int:
        return self.read_csr(offset + 0x1000 * ctxt)

    # -- receive (chip.c hfi1_rcvctrl, init.c) ------------------------------------------------
    def hfi1_put_tid(self, index: int, address: int, size: int) -> None:
        """Program one RcvArray entry through the write-combining map."""
        code = (size // 4096).bit_length() if size else 0
        value = RCV_ARRAY_ENTRY.encode(write_enable=1, size_code=code, address_4k=address >> 12) if size \
            else RCV_ARRAY_ENTRY.encode(write_enable=1)
        self.dev.bar_write(0, cr.RCV_ARRAY + 8 * index, 8, value)

    def eager_address(self, ctxt: int, index: int) -> int:
        return GUEST_BASE + EAGER + ctxt * EAGER_BUFFERS * EAGER_BUFFER_BYTES + index * EAGER_BUFFER_BYTES

    def hdrq_address(self, ctxt: int) -> int:
        return GUEST_BASE + HDRQS + ctxt * HDRQ_ENTRIES * HDRQ_ENTRY_DWORDS * 4

    def rcvctrl_enable(self, ctxt: int, dma_rtail: bool = False, dont_drop: bool = True,
                       hdrq_entries: int = HDRQ_ENTRIES, intr_avail: bool = True) -> None:
        """hfi1_rcvctrl(ENB | [INTRAVAIL_ENB] | [TAILUPD_ENB] | [NO_*_DROP_ENB])."""
        eager_base = 64 * ctxt
        for i in range(EAGER_BUFFERS):
            self.hfi1_put_tid(eager_base + i, self.eager_address(ctxt, i), EAGER_BUFFER_BYTES)
        self.write_kctxt_csr(ctxt, cr.RCV_HDR_CNT, hdrq_entries >> 5)
        self.write_kctxt_csr(ctxt, cr.RCV_HDR_ENT_SIZE, 4)  # 32 dwords
        self.write_kctxt_csr(ctxt, cr.RCV_HDR_SIZE, 9)
        self.write_kctxt_csr(ctxt, cr.RCV_HDR_TAIL_ADDR, GUEST_BASE + DUMMY_TAIL)
        ctrl = self.read_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL)
        self.write_kctxt_csr(ctxt, cr.RCV_HDR_ADDR, self.hdrq_address(ctxt))
        if dma_rtail:
            self.write_kctxt_csr(ctxt, cr.RCV_HDR_TAIL_ADDR, GUEST_BASE + RCV_TAIL_DMA)
        self.memory.write(self.hdrq_address(ctxt), bytes(hdrq_entries * HDRQ_ENTRY_DWORDS * 4))
        self.hdrq_head[ctxt], self.rcv_seq[ctxt] = 0, 1
        self.write_uctxt_csr(ctxt, cr.RCV_HDR_HEAD, 0)
        self.write_uctxt_csr(ctxt, cr.RCV_EGR_INDEX_HEAD, 0)
        self.write_kctxt_csr(ctxt, cr.RCV_EGR_CTRL, (EAGER_BUFFERS >> 3) << 32 | eager_base >> 3)
        self.write_kctxt_csr(ctxt, cr.RCV_TID_CTRL, 0)
        if ctxt == 0:
            self.write_csr(cr.RCV_VL15, 0)
        ctrl |= cr.RCV_CTXT_CTRL_ENABLE_SMASK | (cr.RCV_CTXT_CTRL_INTR_AVAIL_SMASK if intr_avail else 0)
        ctrl = (ctrl & ~cr.RCV_CTXT_CTRL_EGR_BUF_SIZE_SMASK) | 5 << cr.RCV_CTXT_CTRL_EGR_BUF_SIZE_SHIFT  # 64 KiB
        if dma_rtail:
            ctrl |= cr.RCV_CTXT_CTRL_TAIL_UPD_SMASK
        if dont_drop:
            ctrl |= cr.RCV_CTXT_CTRL_DONT_DROP_RHQ_FULL_SMASK | cr.RCV_CTXT_CTRL_DONT_DROP_EGR_FULL_SMASK
        self.set_intr_bits(IS_RCVAVAIL_START + ctxt, IS_RCVAVAIL_START + ctxt, intr_avail)
        self.write_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL, ctrl)
        assert self.read_kctxt_csr(ctxt, cr.RCV_CTXT_STATUS) == 0
        self.write_kctxt_csr(ctxt, cr.RCV_AVAIL_TIME_OUT, 10)
        self.write_uctxt_csr(ctxt, cr.RCV_HDR_HEAD, 16 << 32)

    def init_qpmap_table(self, first: int = 1, last: int = N_KRCV_QUEUES - 1) -> None:
        ctxt, reg = first, 0
        for i in range(256):
            reg |= ctxt << (8 * (i % 8))
            ctxt = first if ctxt == last else ctxt + 1
            if i % 8 == 7:
                self.write_csr(cr.RCV_QP_MAP_TABLE + i // 8 * 8, reg)
                reg = 0
        self.write_csr(cr.RCV_CTRL, self.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_QP_MAP_ENABLE_SMASK
                       | cr.RCV_CTRL_RCV_BYPASS_ENABLE_SMASK)

    def hdrq_entry(self, ctxt: int, index: int) -> tuple[dict, bytes]:
        """(RHF fields, header bytes) of entry `index` of a context's header queue."""
        entry = self.hdrq_address(ctxt) + 4 * HDRQ_ENTRY_DWORDS * index
        rhf = RHF.parse(self.memory.read(entry + 4 * (HDRQ_ENTRY_DWORDS - 2), 8))
        header = self.memory.read(entry + 4 * rhf["hdrq_offset"], 4 * (HDRQ_ENTRY_DWORDS - 2 - rhf["hdrq_offset"]))
        return rhf, header

    def eager_bytes(self, ctxt: int, rhf: dict, length: int) -> bytes:
        return self.memory.read(self.eager_address(ctxt, rhf["egr_index"]) + 64 * rhf["egr_offset"], length)

    def consume(self, ctxt: int, entries: int = 1, egr_head: int | None = None) -> None:
        """update_usrhead: the driver moves its head past `entries` entries."""
        self.hdrq_head[ctxt] = (self.hdrq_head[ctxt] + entries * HDRQ_ENTRY_DWORDS) % (HDRQ_ENTRIES * HDRQ_ENTRY_DWORDS)
        if egr_head is not None:
            self.write_uctxt_csr(ctxt, cr.RCV_EGR_INDEX_HEAD, egr_head)
        self.write_uctxt_csr(ctxt, cr.RCV_HDR_HEAD, 16 << 32 | self.hdrq_head[ctxt])

    # -- PIO (pio.c, pio_copy.c) -------------------------------------------------------------
    def sc_open(self, hw: int, credits: int, base: int, kind: str = SC_KERNEL) -> None:
        """sc_alloc + sc_enable (+ init_pervl_scs's CHECK_VL for VL15 and kernel contexts)."""
        self.sc_alloc(hw, credits, base, GUEST_BASE + CREDIT_RETURN + 64 * (hw // 8), kind)
        self.sc_enable(hw)
        if kind in (SC_KERNEL, SC_VL15):
            self.set_check_vl(hw, kind)
        self.pio_fill[hw], self.pio_credits[hw] = 0, credits

    def sc_enable(self, hw: int) -> None:
        """pio.c sc_enable: on a 0 -> 1 enable the software's fill starts again with the chip's ring."""
        was_enabled = self.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL) & cr.SEND_CTXT_CTRL_CTXT_ENABLE_SMASK
        super().sc_enable(hw)
        if not was_enabled and hw in self.pio_fill:
            self.pio_fill[hw] = 0

    # -- user contexts (file_ops.c) ------------------------------------------------------------
    def assign_ctxt(self, ctxt: int, hw: int, credits: int, base: int, jkey: int) -> None:
        """HFI1_IOCTL_ASSIGN_CTXT for receive context `ctxt`: allocate_ctxt's
        sc_alloc(SC_USER) + sc_enable on send context `hw`, setup_base_ctxt,
        user_init (J_Key on both sides, then ENB | URGENT_ENB; no IntrAvail
        until poll() asks)."""
        self.sc_open(hw, credits, base, SC_USER)
        self.hfi1_set_ctxt_jkey(hw, ctxt, jkey)
        self.rcvctrl_enable(ctxt, intr_avail=False)
        self.set_rcv_intr(ctxt, IS_RCVURGENT_START, True)

    def poll_next(self, ctxt: int) -> bool:
        """file_ops.c poll_next (HFI1_POLL_TYPE_ANYRCV): True if a packet waits;
        else the process sleeps with RcvAvail on."""
        if self.read_uctxt_csr(ctxt, cr.RCV_HDR_TAIL) != self.hdrq_head[ctxt]:
            return True
        self.user_waiting[ctxt] = "rcv"
        self.set_rcv_intr(ctxt, IS_RCVAVAIL_START, True)
        return False

    def poll_urgent(self, ctxt: int) -> None:
        """file_ops.c poll_urgent: the process sleeps until an urgent interrupt."""
        self.user_waiting[ctxt] = "urgent"

    def credit_return(self, hw: int) -> dict:
        from devmodel.hfi1.formats import CREDIT_RETURN as CR
        return CR.parse(self.memory.read(GUEST_BASE + CREDIT_RETURN + 64 * (hw // 8) + 8 * (hw & 7), 8))

    def pio_copy(self, hw: int, pbc: int, packet: bytes) -> None:
        """Write PBC + packet into the context's ring as pio_copy does: the
        first block through the SOP alias, 8-byte stores, zero padding to the
        block end, wrapping at the ring's end."""
        data = pbc.to_bytes(8, "little") + packet
        data += bytes(-len(data) % 64)
        credits, fill = self.pio_credits[hw], self.pio_fill[hw]
        base = 0x2000000 + (hw << 16)
        for block in range(len(data) // 64):
            offset = base + 64 * ((fill + block) % credits) + (0x1000000 if block == 0 else 0)
            for q in range(8):
                chunk = data[64 * block + 8 * q:64 * block + 8 * q + 8]
                self.dev.bar_write(0, offset + 8 * q, 8, int.from_bytes(chunk, "little"))
        self.pio_fill[hw] = (fill + len(data) // 64) % credits

    # -- SDMA (sdma.c) ---------------------------------------------------------------------
    def sdma_ring(self, engine: int) -> int:
        return GUEST_BASE + SDMA_RINGS + 0x8000 * engine

    def sdma_running(self, engine: int) -> None:
        """sdma_set_state(s99_running): ENABLE | INT_ENABLE (the engine is clean and idle)."""
        self.sdma_sendctrl(engine, enable=True, intenable=True)
        self.sdma_state[engine] = "s99_running"
        self.sdma_tail[engine] = 0

    def sdma_descriptors(self, engine: int, pieces: list[tuple[int, int]], flags1: int) -> None:
        """Write one packet's descriptors at the tail (generation = ring lap)."""
        tail = self.sdma_tail[engine]
        for i, (address, length) in enumerate(pieces):
            qw0 = SDMA_DESC0.encode(first=int(i == 0), last=int(i == len(pieces) - 1), byte_count=length,
                                    address=address)
            qw1 = SDMA_DESC1.encode(generation=(tail // SDMA_RING) & 3) | (flags1 if i == len(pieces) - 1 else 0)
            self.memory.write(self.sdma_ring(engine) + 16 * (tail % SDMA_RING),
                              qw0.to_bytes(8, "little") + qw1.to_bytes(8, "little"))
            tail += 1
        self.sdma_tail[engine] = tail

    def sdma_send(self, engine: int, pbc: int, packet: bytes, flags1: int = 1) -> None:
        """sdma_send_txreq for one packet: PBC + header in one buffer, payload
        in another (as verbs does), then the TAIL doorbell. flags1 default:
        HEAD_TO_HOST on the last descriptor (dd->default_desc1)."""
        buffers = GUEST_BASE + PAYLOADS + 0x10000 * engine
        frame = pbc.to_bytes(8, "little") + packet
        split = min(len(frame), 8 + 48)
        self.memory.write(buffers, frame[:split])
        pieces = [(buffers, split)]
        if len(frame) > split:
            self.memory.write(buffers + 0x1000, frame[split:])
            pieces.append((buffers + 0x1000, len(frame) - split))
        self.sdma_descriptors(engine, pieces, flags1)
        self.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, self.sdma_tail[engine] % SDMA_RING)

    def sdma_head(self, engine: int) -> int:
        return self.read_kctxt_csr(engine, cr.SEND_DMA_HEAD)

    # -- the link (chip.c set_link_state) ---------------------------------------------------
    def set_lidlmc(self, lid: int, lmc: int = 0) -> None:
        """The DC's DLID check, then every send context's and SDMA engine's SLID check."""
        mask = ~((1 << lmc) - 1) & 0xFFFF
        c1 = self.read_csr(cr.DCC_CFG_PORT_CONFIG1) & ~0xFFFFFFFF
        self.write_csr(cr.DCC_CFG_PORT_CONFIG1, c1 | mask << 16 | lid)
        slid_check = mask << cr.SEND_CTXT_CHECK_SLID_MASK_SHIFT | (lid & mask)
        for hw in range(self.chip_send_contexts()):
            self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_SLID, slid_check)
        for engine in range(self.chip_sdma_engines()):  # sdma_update_lmc
            self.write_kctxt_csr(engine, cr.SEND_DMA_CHECK_SLID, slid_check)

    def set_logical_state(self, state: int) -> None:
        port = self.read_csr(cr.DCC_CFG_PORT_CONFIG) & ~cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK
        self.write_csr(cr.DCC_CFG_PORT_CONFIG, port | state << cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT)
        self.poll(lambda: (self.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48) & 7 == state, 1.0,
             f"logical state did not change to {state}")


def pbc_for(packet: bytes, vl: int = 0, sc4: int = 0) -> int:
    """create_pbc as verbs does it: VL, DcInfo, no HCRC, length with the PBC, without the ICRC."""
    return PBC.encode(vl=vl, dc_info=sc4, insert_hcrc=2, length_dws=(len(packet) + 8) // 4)


def ud_packet(dlid: int, slid: int, dest_qp: int, payload: bytes, src_qp: int = 1, sc: int = 0,
              opcode: int = opa.Opcode.UD_SEND_ONLY, pkey: int = 0xFFFF, qkey: int = 0x80010000) -> bytes:
    """A 9B UD SEND_ONLY without its ICRC (what a driver builds)."""
    pad = -len(payload) % 4
    body = opa.BTH.build(opcode=opcode, pad=pad, pkey=pkey, dest_qp=dest_qp, psn=7) \
        + opa.DETH.build(qkey=qkey, src_qp=src_qp) + payload + bytes(pad)
    lrh = opa.LRH.build(sc=sc, lnh=opa.LNH_BTH, dlid=dlid, slid=slid, pkt_len=(8 + len(body)) // 4 + 1)
    return lrh + body


@dataclass
class Node:
    """One HFI as its guest sees it (see the module docstring)."""

    name: str
    device: Hfi1Device
    memory: object
    irq: Msix
    driver: DataPathDriver
    lid: int
    closers: list = field(default_factory=list)

    ack_context: int = 0  # send contexts (hw numbers) opened by bring_up
    vl15_context: int = 0
    kernel_contexts: tuple = ()

    @property
    def scheduler(self) -> ManualScheduler:
        return self.irq.scheduler

    def stats(self) -> dict:
        return self.device.stats()


def small_config(serial: int, mapped: tuple[str, ...] = ()) -> ChipConfig:
    """A WFR with smaller tables (a shorter probe) and fast timings, in
    functional-simulator mode (the data path is the same in both modes; the
    silicon bring-up has its own scenarios in test_silicon)."""
    return ChipConfig(guid=make_guid(serial), neighbour=None, rcv_contexts=16, rcv_array_count=2048,
                      send_contexts=160, icode=ICODE_FUNCTIONAL_SIMULATOR, mapped=mapped, **FAST)


def bring_up(nodes: list[Node]) -> None:
    """modprobe on both, interleaved (a link needs both ends polling): probe,
    kernel receive contexts in the layout above, the fixed send contexts,
    SDMA start-up, LinkUp, LIDs, Armed, Active, engines running."""
    learnt = {}
    for node in nodes:
        d = node.driver
        learnt[node.name] = info = probe(d)
        for ctxt in range(N_KRCV_QUEUES):
            d.rcvctrl_enable(ctxt, dma_rtail=ctxt == 0)
        d.init_qpmap_table()
        contexts = info["send_contexts"]
        node.ack_context = contexts - 1
        node.vl15_context = contexts - 1 - N_KRCV_QUEUES
        node.kernel_contexts = tuple(node.vl15_context - 1 - i for i in range(2 * NUM_VLS))
        base = 0
        for hw in range(contexts - N_KRCV_QUEUES, contexts):  # ACK contexts: opened by sc_alloc in probe
            d.sc_disable(hw)
        for hw, credits, kind in [(node.ack_context, 32, SC_ACK), (node.vl15_context, 102, SC_VL15),
                                  (node.kernel_contexts[0], 18, SC_KERNEL)]:
            d.sc_disable(hw)
            d.sc_open(hw, credits, base, kind)
            base += credits
        for e in range(NUM_VLS):
            d.write_kctxt_csr(e, cr.SEND_DMA_BASE_ADDR, d.sdma_ring(e))
            d.write_kctxt_csr(e, cr.SEND_DMA_HEAD_ADDR, GUEST_BASE + SDMA_HEAD_DMA + 64 * e)
        d.write_csr(cr.SEND_CTRL, d.read_csr(cr.SEND_CTRL) | cr.SEND_CTRL_SEND_ENABLE_SMASK)
        for first, last in ((0, 2), (4, 7), (32, 191), (240, 241), (248, 255), (576, 735)):
            d.set_intr_bits(first, last, True)
        d.write_csr(cr.RCV_CTRL, d.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_EXTENDED_PSN_ENABLE_SMASK)
        d.start_link()
        d.sdma_start()
    for node in nodes:
        d = node.driver
        d.service_interrupts(lambda d=d: all(s == "s20_idle" for s in d.sdma_state.values())
                             and d.host_messages & (1 << 7))
        d.handle_link_up()
        d.set_lidlmc(node.lid)
    for state in (3, 4):  # Armed, Active (the SM's Set(PortInfo) on each port)
        for node in nodes:
            node.driver.set_logical_state(state)
    for node in nodes:
        for e in range(NUM_VLS):
            node.driver.sdma_running(e)


def settle(*nodes: Node, horizon: float = 0.01) -> int:
    """Let the devices finish what the guests asked of them: a read from each
    guest first (its posted writes have landed), then the shared scheduler
    for `horizon` seconds of simulated time. Returns the jobs run."""
    for node in nodes:
        node.driver.dev.bar_read(0, cr.CCE_REVISION, 8)
    return nodes[0].scheduler.advance(horizon)


@contextlib.contextmanager
def pair(over_the_wire: bool = False, up: bool = True, remote: bool = False, mapped: tuple[str, ...] = ()):
    """Two small-config HFIs cabled back to back on one ManualScheduler (on a
    remote cable if `remote`, its stream a ManualNetwork's); `mapped`: the
    parts of BAR0 served from shared memory (ChipConfig.mapped), a bytearray
    per node (`Host.shared`) that the driver reaches through a `MappedBar`."""
    scheduler = ManualScheduler()
    nodes: list[Node] = []
    with contextlib.ExitStack() as stack:
        models = []
        for i, name in enumerate(("a", "b")):
            model = Hfi1Device(small_config(i + 1, mapped), worker=scheduler.worker(name), name=f"hfi1_{name}")
            stack.callback(model.close)
            models.append(model)
        if remote:
            network = ManualNetwork(scheduler)
            for model, role in zip(models, (CableRole.LISTEN, CableRole.CONNECT)):
                cable_remote(model.port, role, ("pair", 1), network.opener, scheduler.timer(f"{model.device_name}-cable"))
            scheduler.run()  # the hellos
        else:
            cable(models[0].port, models[1].port, timer=scheduler.timer("link").after)
        for i, (name, model) in enumerate(zip(("a", "b"), models)):
            irq = Msix(scheduler)
            if over_the_wire:
                access, memory = _serve(stack, model, irq, scheduler)
                host = Host(memory, irq, SimulatedTime(scheduler))
            else:
                memory = FakeMemory()
                shared = {0: bytearray(model.layout().bars[0].size)} if mapped else None
                host = Host(memory, irq, SimulatedTime(scheduler), shared)
                model.attach(host)
                access = MappedBar(model, host) if mapped else model
            driver = DataPathDriver(access, host, memory)
            nodes.append(Node(name, model, memory, irq, driver, lid=i + 1))
        if up:
            bring_up(nodes)
        yield scheduler, nodes[0], nodes[1]


def _serve(stack, model, irq, scheduler):
    """Serve `model` on a socket and reach it with the project's client."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="vfnic-pair-", dir="/tmp")
    function = PciFunction(model)
    server = Server(os.path.join(directory, "hfi1.sock"), function)
    server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = Client(server.path, timeout=10)
    client.connect()
    guest = GuestMemory(GUEST_SIZE)
    client.dma_map(guest, GUEST_BASE)
    for vector in range(24):
        irq.eventfds[vector] = client.enable_msix(vector)

    def close():
        for fd in irq.eventfds.values():
            os.close(fd)
        client.close()
        server.stop()
        thread.join(5)
        server.close()
        guest.close()
        os.rmdir(directory) if not os.listdir(directory) else None

    stack.callback(close)

    class WireAccess(DeviceOverTheWire):
        def settle(self, timeout_s: float = 1.0) -> bool:
            self.client.read(0, cr.CCE_REVISION, 8)
            return scheduler.run_until_idle(timeout_s) >= 0

    return WireAccess(client, model), MemfdMemory(guest)

