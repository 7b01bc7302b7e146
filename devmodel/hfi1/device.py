"""The HFI1 (WFR) PCI function: BAR0 decode, reset, worker, interrupts.

    BAR0 (64 MiB, 64-bit, non-prefetchable), as hfi1_pcie_ddinit maps it:
    0x0000000 ..          CSRs: CCE 0x0, ASIC 0x400000, MISC 0x500000, DC 0x600000,
                          RXE 0x1000000 (kernel per-context 0x1100000 + 0x100c)
      0x0100000 0x0100FFF MSI-X table (CCE_MSIX_TABLE_LOWER/UPPER), served by the PCI layer
      0x0110000 0x011001F MSI-X PBA (CCE_MSIX_PBA_OFFSET), served by the PCI layer
    0x1200000 ..          RcvArray, 8 bytes x RCV_ARRAY_CNT (write-combining in the driver)
    .. 0x1FFFFFF          CSRs: RXE user per-context 0x1300000 + 0x1000c, TXE 0x1800000,
                          send contexts 0x1900000 + 0x100h, SDMA engines 0x1A00000 + 0x100e
    0x2000000 0x2FFFFFF   PIO send buffers, 64 KiB per hardware context
    0x3000000 0x3FFFFFF   the same buffers, start-of-packet alias

With `ChipConfig.mapped` (`--option mmap=...`) BAR0 is a shared BAR whose
sparse mmap areas are the PIO send space of the contexts the chip has (both
halves) and/or the RcvArray, page-rounded (`mmap_areas`); the guest's stores
there never trap, the blocks read them from shared memory (pio.py, rcv.py).

Every CSR is declared by its kernel name in one `RegisterFile`; an access the
model does not declare is served as storage, logged once with the nearest
declared name, and counted in `stats()["undeclared_csr_accesses"]`.

Execution model (docs/execution-model.md):

* A BAR access (the transport's thread) only records what the guest did --
  a CSR value, a doorbell, a qword of PIO data -- and returns. Engines (PIO
  launch, SDMA, receive, timers) run as chip events on the model's worker, in
  bounded steps, each under the one model lock.
* What an access or event produces for the outside -- MSI-X vectors, packets
  for the link -- is collected under the lock and handed over after it is
  released: the interrupt layer and the link are never called with the lock
  held, and the link only queues work on the peer (`port.py`), so two HFIs
  sending to each other cannot deadlock.
* Time is the worker's clock: real with `Worker`, driven by the test with a
  `ManualScheduler`, so multi-device scenarios are deterministic.
* An exception inside the model never leaves it: the chip enters its error
  state (an SPC freeze with RcvFsmEncodingErr, from which the driver recovers
  as from any hardware freeze), with a log line naming the block.
* A reset bumps a generation number: delayed events scheduled before it are
  dropped when they fire.
"""
from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.ratelog import counts, flush, limited
from devmodel.base import DeviceHost, DeviceModel
from devmodel.fabric import Packet, cable
from devmodel.fabric.remote_cable import CableRole, RemoteCable, StreamOpener, cable_remote
from devmodel.fabric.topology import ServedHfis
from devmodel.pci_layout import Bar, BarKind, MsixLayout, PcieLink, PciIdentity, PciLayout
from devmodel.regs import RegisterFile
from devmodel.worker import Job, ManualScheduler, ScheduledWorker, ThreadScheduler, Worker

from .asic import Asic
from .cce import Cce
from .chip_registers import (
    CCE_MSIX_PBA_OFFSET,
    CCE_MSIX_TABLE_LOWER,
    DC_DC8051_STS_REMOTE_GUID,
    DCC_CFG_PORT_CONFIG1,
    RCV_ERR_STATUS_RX_RCV_FSM_ENCODING_ERR_SMASK,
)
from .config import (
    ICODES,
    MMAP_OPTIONS,
    PCI_CLASS_FABRIC_CONTROLLER,
    PCI_DEVICE_ID_INTEL0,
    PCI_REVISION_B1,
    PCI_SUBSYSTEM_ID_ADAPTER_X16,
    PCI_VENDOR_ID_INTEL,
    RCV_ARRAY_DEFAULT,
    ChipConfig,
    Neighbour,
    make_guid,
)
from .dc8051 import Dc8051
from .dcc import Dcc
from .eprom import Eprom
from .intr import InterruptController
from .lcb import Lcb
from .misc import Misc
from .pio import PIO_CONTEXT_WINDOW, SOP_DISTANCE, TXE_PIO_SEND, TXE_PIO_SIZE, Pio
from .port import Hfi1Port
from .qsfp import QsfpPort
from .rcv import Receive
from .sdma import Sdma
from .send import Send

BAR0_SIZE = TXE_PIO_SEND + TXE_PIO_SIZE  # 64 MiB: hfi1_pcie_ddinit refuses anything else
_ACCESS_SIZES = frozenset((1, 2, 4, 8))
PAGE = 4096
MAX_FAULTS = 32  # internal errors kept (and logged in full) per device


@dataclass(frozen=True)
class BarWindow:
    """A range of BAR0 and the block that serves it."""
    name: str
    start: int
    end: int
    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]


def _write_only(_offset: int, _size: int) -> int:
    return 0


class Hfi1Device(DeviceModel):
    name = "hfi1"

    @classmethod
    def from_options(cls, link_partner: str = "present", icode: str = "silicon",
                     rcv_array: str = str(RCV_ARRAY_DEFAULT), mmap: str = "none") -> "Hfi1Device":
        """Build from `vfnic serve --option` values (see devmodel/registry.py)."""
        neighbour = {"neighbour": None} if link_partner == "none" else {}
        return cls(ChipConfig(icode=ICODES[icode], rcv_array_count=int(rcv_array), mapped=MMAP_OPTIONS[mmap],
                              **neighbour))

    @classmethod
    def fabric(cls, count: int, link_partner: str = "present", icode: str = "silicon",
               rcv_array: str = str(RCV_ARRAY_DEFAULT), mmap: str = "none",
               scheduler: ThreadScheduler | ManualScheduler | None = None) -> list["Hfi1Device"]:
        """`count` HFIs for one `vfnic serve`: each with its own GUID (serial
        1, 2, ...), cabled back to back in pairs (1-2, 3-4, ...); an odd last
        one keeps its built-in link partner (or none). One engine thread runs
        all their chip events (devmodel/worker.py), or `scheduler` (a test's
        ManualScheduler)."""
        engines = scheduler or ThreadScheduler("hfi1-engines")
        devices = []
        for i in range(count):
            cabled = i + 1 < count or i % 2 == 1
            neighbour = None if cabled or link_partner == "none" else Neighbour(guid=make_guid(0x800000 | (i + 1)))
            config = ChipConfig(guid=make_guid(i + 1), neighbour=neighbour, icode=ICODES[icode],
                                rcv_array_count=int(rcv_array), mapped=MMAP_OPTIONS[mmap])
            name = f"hfi1_{i}" if count > 1 else "hfi1"
            devices.append(cls(config, worker=engines.worker(name), name=name))
        for a, b in zip(devices[0::2], devices[1::2]):
            name = f"{a.device_name}<->{b.device_name}"
            cable(a.port, b.port, name=name, timer=engines.timer(name).after)
        return devices

    @classmethod
    def served_on_fabric(cls, link_partner: str = "present", icode: str = "silicon",
                         rcv_array: str = str(RCV_ARRAY_DEFAULT), mmap: str = "none") -> ServedHfis:
        """How hfi1s are made for a fabric of switches (`vfnic serve --switch`,
        `--topology`, devmodel/fabric/topology.py): the k-th served HFI gets
        GUID serial k + 1 and no built-in partner (its cable is the
        topology's). `link_partner` does not apply: anything but the default
        is refused. With icode=simulator the switch ports facing them take
        NeighborNormal at Armed, as such an hfi1 does itself (docs/switch.md)."""
        if link_partner != "present":
            raise ValueError(f"link-partner={link_partner} does not apply on a switch: every HFI has its cable")

        def make(index: int, name: str, worker: ScheduledWorker) -> Hfi1Device:
            config = ChipConfig(guid=make_guid(index + 1), neighbour=None, icode=ICODES[icode],
                                rcv_array_count=int(rcv_array), mapped=MMAP_OPTIONS[mmap])
            return cls(config, worker=worker, name=name)
        return ServedHfis(make, neighbor_normal_at_armed=icode == "simulator")

    @classmethod
    def remote_cabled(cls, role: CableRole, address: tuple[str, int], opener: StreamOpener,
                      link_partner: str = "present", icode: str = "silicon",
                      rcv_array: str = str(RCV_ARRAY_DEFAULT), mmap: str = "none",
                      scheduler: ThreadScheduler | ManualScheduler | None = None
                      ) -> tuple[list["Hfi1Device"], list[RemoteCable]]:
        """One HFI whose port is cabled to an HFI of another `vfnic serve`
        (`--cable-listen`/`--cable-connect`; devmodel/fabric/remote_cable.py),
        over the stream `opener` keeps at `address`. The two sides are the
        HFIs of a back-to-back pair: the listening one has GUID serial 1, the
        connecting one serial 2. [The HFI], [its cable]. `link_partner` does not
        apply (the far HFI is the partner): anything but the default is refused."""
        if link_partner != "present":
            raise ValueError(f"link-partner={link_partner} does not apply to a remote cable: the far HFI is the "
                             f"partner")
        engines = scheduler or ThreadScheduler("hfi1-engines")
        serial = 1 if role is CableRole.LISTEN else 2
        config = ChipConfig(guid=make_guid(serial), neighbour=None, icode=ICODES[icode], rcv_array_count=int(rcv_array),
                            mapped=MMAP_OPTIONS[mmap])
        device = cls(config, worker=engines.worker("hfi1"), name="hfi1")
        try:
            cable = cable_remote(device.port, role, address, opener, engines.timer("hfi1<->remote"))
        except BaseException:
            device.close()
            raise
        return [device], [cable]

    def __init__(self, config: ChipConfig | None = None, worker: Worker | ScheduledWorker | None = None,
                 name: str = "hfi1"):
        self.config = config or ChipConfig()
        self.device_name = name
        self.log = logging.getLogger(f"vfnic.{name}")
        self.host: DeviceHost | None = None
        self._lock = threading.RLock()
        self._generation = 0
        self.worker = worker or Worker(name)
        #: packets for the link, handed over once the lock is released
        self.outbox: list[Packet] = []
        #: internal errors contained so far: (block, message), the latest MAX_FAULTS
        self.faults: deque[tuple[str, str]] = deque(maxlen=MAX_FAULTS)
        self.fault_count = 0
        self.regs = RegisterFile("hfi1.bar0", log=self.log)
        # Each block gets the chip's services (`ChipServices`: regs, config,
        # events, DMA, the outbox) and the sibling blocks it talks to; the two
        # pairs that need each other are wired once both exist, below.
        self.port = Hfi1Port(self, name)
        self.intr = InterruptController(self.regs)
        self.cce = Cce(self, self.intr, dc_reset=self.dc_reset)
        self.misc = Misc(self, self.intr)
        self.asic = Asic(self, self.misc)
        self.qsfp = (QsfpPort(self, self.intr, 1), QsfpPort(self, self.intr, 2))
        self.eprom = Eprom(self)
        self.dcc = Dcc(self, self.intr)
        self.dc8051 = Dc8051(self, self.intr, self.cce, self.misc, self.port, self.dcc)
        self.lcb = Lcb(self, self.intr, self.dc8051.link)
        self.rcv = Receive(self, self.intr, self.cce, self.dcc)
        self.send = Send(self, self.intr, self.dcc, self.dc8051.link)
        self.pio = Pio(self, self.intr, self.send, self.port)
        self.sdma = Sdma(self, self.intr, self.send, self.port)
        self.cce.connect_freeze(sdma=self.sdma, pio=self.pio, rcv=self.rcv)
        self.port.connect(self.dc8051.link, receive=self.rcv.receive_packet, status=self.port_status)
        self.blocks = (self.intr, self.cce, self.asic, *self.qsfp, self.eprom, self.misc, self.dcc, self.lcb,
                       self.dc8051, self.rcv, self.send, self.pio, self.sdma)
        for block in self.blocks:
            self.regs.declare(block.registers)
        rcv_array_start, rcv_array_end = self.rcv.rcv_array_span()
        #: BAR0 decode, first match wins (the module docstring draws the map)
        self.windows = (
            BarWindow("PIO send buffers", TXE_PIO_SEND, BAR0_SIZE, _write_only, self.pio.space_write),
            BarWindow("RcvArray", rcv_array_start, rcv_array_end, self.rcv.rcv_array_read, self.rcv.rcv_array_write),
            BarWindow("CSRs", 0, BAR0_SIZE, self.regs.read, self.regs.write),
        )
        for block in self.blocks:
            block.reset()
        if self.config.neighbour is not None:
            self.port.plug_partner(self.config.neighbour)

    # -- DeviceModel ---------------------------------------------------------------
    def layout(self) -> PciLayout:
        return PciLayout(
            identity=PciIdentity(
                vendor_id=PCI_VENDOR_ID_INTEL, device_id=PCI_DEVICE_ID_INTEL0,
                subsystem_vendor_id=PCI_VENDOR_ID_INTEL, subsystem_id=PCI_SUBSYSTEM_ID_ADAPTER_X16,
                class_code=PCI_CLASS_FABRIC_CONTROLLER, revision=PCI_REVISION_B1,
            ),
            bars=(Bar(0, BAR0_SIZE, BarKind.MEM64, prefetchable=False, shared=bool(self.config.mapped),
                      mmap_areas=self.mmap_areas()),),
            msix=MsixLayout(vectors=self.config.msix_vectors, table_bar=0, table_offset=CCE_MSIX_TABLE_LOWER,
                            pba_bar=0, pba_offset=CCE_MSIX_PBA_OFFSET),
            pcie_link=PcieLink(speed=3, width=16),
        )

    def mmap_areas(self) -> tuple[tuple[int, int], ...]:
        """The parts of BAR0 served from shared memory (`ChipConfig.mapped`):
        the PIO send space of the contexts the chip has, both halves, and the
        RcvArray rounded up to a page."""
        areas = []
        if "pio" in self.config.mapped:
            size = PIO_CONTEXT_WINDOW * self.config.send_contexts
            areas += [(TXE_PIO_SEND, size), (TXE_PIO_SEND + SOP_DISTANCE, size)]
        if "rcvarray" in self.config.mapped:
            start, end = self.rcv.rcv_array_span()
            areas.append((start, -(-(end - start) // PAGE) * PAGE))
        return tuple(sorted(areas))

    def attach(self, host: DeviceHost) -> None:
        """Also where BAR0's shared memory arrives: the PIO send space and the
        RcvArray are read from it when `ChipConfig.mapped` names them and the
        host has it (a host without it keeps them trapped)."""
        self.host = host
        if not self.config.mapped:
            return
        shared = getattr(host, "shared_memory", None)
        memory = shared(0) if shared is not None else None
        with self._lock:
            if memory is None:
                self.log.warning("BAR0: %s to be mapped but the host has no shared memory: served trapped",
                                 "/".join(self.config.mapped))
                return
            if len(memory) < BAR0_SIZE:
                raise ValueError(f"BAR0 shared memory of {len(memory):#x} bytes, not {BAR0_SIZE:#x}")
            if "pio" in self.config.mapped:
                self.pio.map_space(memory)
            if "rcvarray" in self.config.mapped:
                self.rcv.map_rcv_array(memory)
                self.log.warning("BAR0: the RcvArray in shared memory loses its WriteEnable rule: the driver's "
                                 "blank fill writes erase live TID entries (PSM2 rendezvous, TID RDMA break); "
                                 "for measurement only (devmodel/hfi1/rcv.py)")
            self.log.info("BAR0: %s served from shared memory (sparse mmap)", ", ".join(self.config.mapped))

    @property
    def dma(self):
        return self.host.dma if self.host is not None else None

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar or offset < 0 or offset + size > BAR0_SIZE or size not in _ACCESS_SIZES or offset % size:
            self._outside_bar0(bar, offset, size)
            return 0
        value = 0
        with self._lock:
            self.pio.nudge()
            try:
                value = self._window(offset).read(offset, size)
            except Exception as exc:
                self.internal_error(exc, f"read of {self.regs.nearest(offset)}")
            vectors = self.intr.take_pending()
            packets = self._take_outbox()
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("read %s (%d) -> %#x", self.regs.nearest(offset), size, value)
        if vectors or packets:
            self._deliver(vectors, packets)
        return value

    def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar or offset < 0 or offset + size > BAR0_SIZE or size not in _ACCESS_SIZES or offset % size:
            self._outside_bar0(bar, offset, size)
            return
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("write %s (%d) <- %#x", self.regs.nearest(offset), size, value)
        with self._lock:
            self.pio.nudge()
            try:
                self._window(offset).write(offset, size, value)
            except Exception as exc:
                self.internal_error(exc, f"write of {self.regs.nearest(offset)}")
            vectors = self.intr.take_pending()
            packets = self._take_outbox()
        if vectors or packets:  # most stores (PIO, head updates) produce neither
            self._deliver(vectors, packets)

    def reset(self) -> None:
        """FLR or device reset: every register back to its reset value, except the
        ASIC semaphores the two HFIs of a part share; the DC is held in reset
        (CCE_DC_CTRL resets to 1) until the driver releases it."""
        with self._lock:
            self._generation += 1
            self.worker.cancel_all()
            shared = self.asic.preserved()
            self.regs.reset()
            for offset, value in shared.items():
                self.regs.set(offset, value)
            for block in self.blocks:
                block.reset()
            self.outbox.clear()
            lost = self.port.discard_inbound()
        self.log.info("reset: registers at reset values, DC held in reset%s",
                      f", {lost} inbound packet(s) lost" if lost else "")

    def close(self) -> None:
        with self._lock:
            self._generation += 1
        self.worker.stop()
        with self._lock:  # drop the views of shared memory, so that the host can unmap it
            self.pio.unmap_space()
            self.rcv.unmap_rcv_array()
        self.port.unplug()
        self.regs.flush_log()
        flush(self, *self.blocks)

    def stats(self) -> dict:
        with self._lock:
            undeclared = dict(self.regs.undeclared)
            return {
                "undeclared_csr_accesses": sum(undeclared.values()),
                "undeclared_offsets": {f"{off:#x}": self.regs.nearest(off) for off in sorted(undeclared)},
                "declared_csrs": sum(len(block.registers) for block in self.blocks),
                "msix_raised": self.intr.delivered,
                "physical_state": self.dc8051.state_name(),
                "logical_state": self.dcc.logical_state.name,
                "dc8051_firmware": ".".join(map(str, self.dc8051.version)),
                "sdma_engines": [engine.state.value for engine in self.sdma.engines],
                "pio": self.pio.counters(),
                "send": self.send.counters(),
                "sdma": self.sdma.counters(),
                "rcv": self.rcv.counters(),
                "port": {"guid": f"{self.config.guid:#018x}", "sent": self.port.sent,
                         "dropped_link_down": self.port.dropped_link_down,
                         "link": self.port.link.counters() if self.port.link else None},
                "warnings": counts(self, *self.blocks),
                "internal_errors": [f"{block}: {message}" for block, message in self.faults],
                "internal_error_count": self.fault_count,
                "engine": {"jobs_run": self.worker.scheduler.jobs_run, "late_s": self.worker.scheduler.late_s},
            }

    def set_option(self, key: str, value: str) -> None:
        """The options that change while the device runs (devmodel/registry.py
        `runtime_options`): `pio-launch` (engine, inline; pio.py)."""
        if key != "pio-launch":
            super().set_option(key, value)
        with self._lock:
            self.pio.set_launch_mode(value)
        self.log.info("pio-launch=%s", value)

    def register_name(self, bar: int, offset: int) -> str:
        if bar != 0 or not 0 <= offset < BAR0_SIZE:
            return f"BAR{bar}+{offset:#x}"
        window = self._window(offset)
        if window.name == "CSRs":
            return self.regs.name_of(offset)
        if window.name == "RcvArray":
            return f"RcvArray[{(offset - window.start) // 8}]"
        context, within = divmod(offset - TXE_PIO_SEND, 1 << 16)
        sop = "_SOP" if context >= 256 else ""
        return f"PIO_SEND_BUFFER{sop}[{context % 256}]+{within:#x}"

    def ports(self) -> list[Hfi1Port]:
        return [self.port]

    def port_status(self) -> dict:
        """The port as `vfnic ctl query` shows it."""
        with self._lock:
            config1 = self.regs.get(DCC_CFG_PORT_CONFIG1)
            return {
                "name": self.port.name,
                "guid": f"{self.config.guid:#018x}",
                "physical_state": self.dc8051.state_name(),
                "logical_state": self.dcc.logical_state.name,
                "lid": config1 & 0xFFFF,
                "neighbour_guid": f"{self.regs.get(DC_DC8051_STS_REMOTE_GUID):#018x}" if self.dc8051.link_is_up else None,
                "link": self.port.link.name if self.port.link else None,
                "sent": self.port.sent,
                "dropped_link_down": self.port.dropped_link_down,
            }

    # -- services for the blocks (services.ChipServices) -----------------------------------
    def after(self, delay_s: float, fn: Callable[[], None]) -> Job:
        """Run `fn` as a chip event after `delay_s`, unless it was cancelled or
        a reset intervened."""
        generation = self._generation
        return self.worker.after(delay_s, lambda: self.hardware_event(fn, generation))

    def post(self, fn: Callable[[], None]) -> Job:
        """Run `fn` as a chip event soon (news from the link, a doorbell's
        work), unless a reset comes first."""
        generation = self._generation
        return self.worker.submit(lambda: self.hardware_event(fn, generation))

    def now(self) -> float:
        return self.worker.clock.now()

    def emit(self, packet: Packet) -> None:
        """A packet for the link: sent once the model lock is released."""
        self.outbox.append(packet)

    def hardware_event(self, fn: Callable[[], None], generation: int | None = None) -> None:
        """Run `fn` as the chip would on its own (an engine step, a link
        partner, a fault, a timer): under the model lock, then signal the
        MSI-X vectors it raised and send the packets it produced."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            try:
                fn()
            except Exception as exc:
                self.internal_error(exc, "a chip event")
            vectors = self.intr.take_pending()
            packets = self._take_outbox()
        if vectors or packets:
            self._deliver(vectors, packets)

    def internal_error(self, exc: BaseException, during: str) -> None:
        """A bug in the model (or a case it does not handle) met the guest's
        input. Contain it: log it naming the block, and put the chip in its
        error state -- an SPC freeze reported as an RXE state-machine error,
        which the driver handles as it would on silicon (freeze, unfreeze,
        restart contexts and engines). Never raises. Called under the lock."""
        block = _block_of(exc)
        message = f"{type(exc).__name__}: {exc}"
        self.faults.append((block, message))
        self.fault_count += 1
        if self.fault_count <= MAX_FAULTS or self.fault_count % 1000 == 0:
            self.log.error("internal error in block %s during %s: %s; the chip enters SPC freeze "
                           "(RCV_ERR_STATUS.RxRcvFsmEncodingErr) [%d so far]", block, during, message,
                           self.fault_count)
            self.log.debug("traceback:\n%s", "".join(traceback.format_exception(exc)))
        try:
            self.cce.hardware_freeze()
            self.rcv.errors.set(RCV_ERR_STATUS_RX_RCV_FSM_ENCODING_ERR_SMASK)
        except Exception:  # the error path itself must never raise
            self.log.exception("entering the error state failed too")

    def dc_reset(self, asserted: bool) -> None:
        """CCE_DC_CTRL.DC_RESET: hold or release the whole DC (DCC, LCB, 8051)."""
        if asserted:
            for block in (self.dcc, self.lcb, self.dc8051):
                block.reset_registers()
            self.dc8051.reset()
        else:
            self.dc8051.release()

    def settle(self, timeout_s: float = 1.0) -> bool:
        """Wait until every chip event due within `timeout_s` has happened (tests,
        tools); False if one is still outstanding at the deadline."""
        return self.worker.settle(within=timeout_s, timeout=timeout_s)

    def _take_outbox(self) -> Sequence[Packet]:
        if not self.outbox:
            return ()
        packets, self.outbox = self.outbox, []
        return packets

    def _deliver(self, vectors: Sequence[int], packets: Sequence[Packet] = ()) -> None:
        for packet in packets:
            self.port.transmit(packet)
        if not vectors:
            return
        if self.host is None:
            self.log.warning("MSI-X %s raised with no host attached", vectors)
            return
        for vector in vectors:
            if vector >= self.config.msix_vectors:
                limited(self, self.log, "interrupts to vectors beyond the table").warning(
                    "CCE_INT_MAP names MSI-X vector %d beyond the table", vector)
                continue
            self.host.irq.trigger(vector)

    def _window(self, offset: int) -> "BarWindow":
        for window in self.windows:
            if window.start <= offset < window.end:
                return window
        raise AssertionError(f"{offset:#x} is in no BAR0 window")  # bar_read/bar_write checked the range

    def _outside_bar0(self, bar: int, offset: int, size: int) -> None:
        """An access bar_read/bar_write refuse: not BAR0, beyond it, an odd size, unaligned."""
        limited(self, self.log, "accesses outside BAR0").warning(
            "BAR%d access at %#x size %d outside the model", bar, offset, size)


def _block_of(exc: BaseException) -> str:
    """The chip block whose code raised `exc`: the innermost frame in one of
    this package's modules (sdma, pio, rcv, ...)."""
    block = "device"
    for frame in traceback.extract_tb(exc.__traceback__):
        parts = frame.filename.replace("\\", "/").split("/")
        if parts[-3:-1] == ["devmodel", "hfi1"] and parts[-1].endswith(".py"):
            block = parts[-1][:-3]
    return block
