"""What one emulated HFI is: identity, capacities, neighbour, timings.

Defaults describe a discrete WFR B1 part (8086:24f0, ChipRev 7.17, board id 1).
The implementation code (CCE_REVISION2) decides how much of the chip the
driver brings up: 0, "RTL silicon", runs the whole ASIC bring-up (signed
firmware for the fabric SerDes and the 8051, checked by the MISC block
against the fused key; SerDes tuning; link negotiation with VerifyCap; SMA
idle messages to the peer); 3, "functional simulator", makes the driver skip
firmware loads, treat the 8051 as always ready and skip VerifyCap (and
deadlocks the 6.12 driver on any link-down with the port up, docs/hfi1.md).
`vfnic serve --option icode=silicon|simulator` chooses. Capacities are the
real chip's where known (160 receive and send contexts, 16 SDMA engines); the
rest are chosen to satisfy the driver's arithmetic ([uncertain] on silicon):

* RcvArray: 8192 entries (8-byte each) by default, a quarter of the real
  chip's 32768 (`RCV_ARRAY_REAL_CHIP`; `vfnic serve --option rcv-array=32768`
  reports those; anything up to `8 * count <= 0x100000` fits below the
  user-context CSRs at 0x1300000). The driver writes every entry at probe and
  reads RCV_ARRAY_CNT before each write (chip.c init_chip:
  `for (i = 0; i < chip_rcv_array_count(dd); i++) hfi1_put_tid(...)`), so
  each entry costs a trapped read and a posted write. `benchmarks/probe
  --mode silicon`, two rounds on 2026-12-08 (load 1.5-3): 8192 entries 2.3,
  2.4, 2.4 s and 2.0, 2.0, 2.5 s; 32768 entries 3.3, 3.8 s and 3.6, 3.9,
  4.3 s. The 24576 more entries cost 0.9-1.9 s, 37-77 us an entry (the
  trace put the rcv block's accesses at 17-31 us each, moving with the load).
  What reporting 32768 again within issue 15's 3 s would take: the extra
  entries may cost what 3 s leaves, 0.6-1.0 s, so 24-41 us an entry (a read
  and a write) against 37-77 measured. The reads must trap -- RCV_ARRAY_CNT
  (RXE + 0x18) shares its 4 KiB page with RCV_CTRL, whose writes act -- so
  they cannot be mmapped. Nor can the writes, soundly: a mapped RcvArray
  (the model can read entries from shared memory, `ChipConfig.mapped`)
  cannot ignore the driver's blank fill writes without WriteEnable, which
  then erase live TID entries (devmodel/hfi1/rcv.py), so no option offers
  it; and with any area mapped QEMU turns off posted writes for the whole
  device, so the probe's ~8300 other trapped writes would become round
  trips (~20 us more each: ~0.17 s). Left is a cheaper trapped read: with
  the writes posted as now, 32768 entries in 3 s need a trapped read of
  RCV_ARRAY_CNT of about 20-35 us in the guest (the 24-41 us an entry may
  cost, less a posted write). `benchmarks/mmio` measured
  a trapped read from a TCG guest at 24-71 us the same day, moving 2x from
  run to run: only on a quiet machine would it fit. The server's part of a
  read is a few us of that (docs/vfio-user.md, "Cost of a trapped access");
  the rest is the vCPU's exit, QEMU's hand-off and the wake-ups on two
  shared cores. So 8192 stays the default. The driver splits the entries evenly
  among the contexts it uses and caps each at 4096 (2 x MAX_EAGER_ENTRIES);
  a small guest uses 5 to 8 contexts, so each still gets 1024 or more
  entries, a quarter of them eager buffers.
* PIO send memory: 256 KiB = 4095 blocks after the driver's `-1`, more than the
  486 fixed blocks (3 ACK x 32 + VL15 102 + 16 kernel x 18) plus user contexts.
* SDMA memory: 256 KiB, 256 blocks per engine.

Any capacity that keeps the arithmetic above true works (`ChipConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from devmodel.fabric import PortIdentity

from . import firmware_key

INTEL_OPA_OUI = 0x001175
PCI_VENDOR_ID_INTEL = 0x8086
PCI_DEVICE_ID_INTEL0 = 0x24F0  # discrete WFR (the driver's HFI0 id)
PCI_SUBSYSTEM_ID_ADAPTER_X16 = 0x2628  # "Omni-Path HFI Adapter 100 Series, 1 Port, PCIe x16"
PCI_CLASS_FABRIC_CONTROLLER = 0x020800
PCI_REVISION_B1 = 0x11

ICODE_RTL_SILICON = 0
ICODE_FUNCTIONAL_SIMULATOR = 3
#: `vfnic serve --option icode=...`
ICODES = {"silicon": ICODE_RTL_SILICON, "simulator": ICODE_FUNCTIONAL_SIMULATOR}
#: RcvArray entries (RCV_ARRAY_CNT): the real chip's, and ours unless `--option rcv-array=` says otherwise
RCV_ARRAY_REAL_CHIP = 32768
RCV_ARRAY_DEFAULT = 8192
#: what BAR0 can serve from shared memory (`ChipConfig.mapped`)
MAPPABLE = ("pio", "rcvarray")
#: `vfnic serve --option mmap=...` -> ChipConfig.mapped
#: (the RcvArray is mappable by the model, for the scenario that shows why no
#: option offers it: devmodel/hfi1/rcv.py)
MMAP_OPTIONS = {"none": (), "pio": ("pio",)}


class PortType(IntEnum):
    """platform.h port type encodings, as the platform config reports them."""

    UNKNOWN = 0
    DISCONNECTED = 1
    FIXED = 2
    VARIABLE = 3
    QSFP = 4


def make_guid(serial: int, hfi1_id: int = 0) -> int:
    """OUI in bits 63:40, HFI index in bit 39, serial in bits 23:0."""
    return (INTEL_OPA_OUI << 40) | (hfi1_id << 39) | (serial & 0xFFFFFF)


@dataclass(frozen=True)
class Neighbour(PortIdentity):
    """The built-in link partner a lone HFI trains with (its identity, as LNI
    reports it): another HFI, port 1."""

    guid: int = make_guid(0x000002)


@dataclass(frozen=True)
class ChipConfig:
    # identity
    chip_rev_major: int = 7
    chip_rev_minor: int = 0x11  # 0x1X = B-step; 0x0X would select the A0 workarounds
    sw_compat: int = 3
    board_id: int = 1
    icode: int = ICODE_RTL_SILICON
    impl_revision: int = 0
    hfi1_id: int = 0
    guid: int = make_guid(0x000001)
    device_id: int = PCI_DEVICE_ID_INTEL0
    device_rev: int = PCI_REVISION_B1
    # capacities
    rcv_contexts: int = 160
    rcv_array_count: int = RCV_ARRAY_DEFAULT
    send_contexts: int = 160
    sdma_engines: int = 16
    pio_mem_size: int = 0x40000
    sdma_mem_size: int = 0x40000
    # PCI
    msix_vectors: int = 256  # CCE_NUM_MSIX_VECTORS: all the WFR table holds
    #: parts of BAR0 served from shared memory the guest maps (sparse mmap)
    #: instead of trapped: "pio" (the PIO send space, pio.py), "rcvarray"
    #: (the RcvArray, rcv.py); `vfnic serve --option mmap=...` (MMAP_OPTIONS)
    mapped: tuple[str, ...] = ()
    # link: the built-in partner the port is cabled to until a fabric cables
    # it to another device; None: no cable (the port polls forever)
    neighbour: Neighbour | None = field(default_factory=Neighbour)
    port_type: PortType = PortType.FIXED
    # how long silicon takes, seconds
    link_training_s: float = 0.1
    sdma_halt_s: float = 50e-6
    sdma_cleanup_s: float = 50e-6
    freeze_s: float = 100e-6
    # silicon mode (icode 0)
    #: the firmware signing key's modulus fused into the chip (MISC RSA
    #: engine); None accepts any key
    fw_key_modulus: int | None = firmware_key.N
    fw_exponent: int = firmware_key.E
    #: from the 8051's reset release to "ready" (DC_DC8051_STS_CUR_STATE.FIRMWARE 0xA0)
    dc8051_boot_s: float = 0.005
    #: the 8051 firmware version when the code RAM names none
    dc8051_default_version: tuple[int, int, int] = (1, 27, 0)
    #: ConfigLT: from both ends agreeing to LinkUp to LinkUp
    link_up_handshake_s: float = 0.002
    #: what the thermal sensor reads (ASIC_STS_THERM), degrees C
    asic_temp_c: int = 45

    def __post_init__(self) -> None:
        if not 3 <= self.rcv_contexts <= 160 or not 12 <= self.send_contexts <= 160:
            raise ValueError("the driver needs 3..160 receive and 12..160 send contexts "
                             "(kernel contexts, one send context per VL, 160-entry tables)")
        if not 8 <= self.sdma_engines <= 16:
            raise ValueError("SEND_DMA_ENGINES must be 8..16 (per-VL engine map, interrupt ranges)")
        if self.rcv_array_count % 8 or not 0 < 8 * self.rcv_array_count <= 0x100000:
            raise ValueError("RcvArray must be a multiple of 8 entries and end before 0x1300000")
        if set(self.mapped) - set(MAPPABLE):
            raise ValueError(f"only {', '.join(MAPPABLE)} can be mapped, not {self.mapped}")
        if not 1 <= self.msix_vectors <= 256:
            raise ValueError("WFR has 256 MSI-X vectors")
        if self.icode not in ICODES.values():
            raise ValueError(f"implementation code {self.icode} is not modelled (0 RTL silicon, 3 functional simulator)")

    @property
    def silicon(self) -> bool:
        """Implementation code 0: the driver does the whole ASIC bring-up."""
        return self.icode == ICODE_RTL_SILICON

    @property
    def revision(self) -> int:
        """CCE_REVISION: minor [7:0], major [15:8], SW compat [31:24], board id [35:32]."""
        return (self.chip_rev_minor | self.chip_rev_major << 8 | self.sw_compat << 24
                | (self.board_id & 0xF) << 32)

    @property
    def revision2(self) -> int:
        """CCE_REVISION2: HFI id [0], implementation code [15:8], impl revision [31:16]."""
        return self.hfi1_id | self.icode << 8 | self.impl_revision << 16
