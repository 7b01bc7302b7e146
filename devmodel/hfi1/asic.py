"""ASIC block: scratch, hardware mutex, SBus master, thermal, GPIO, PCIe SerDes.

    ASIC_CFG_SBUS_REQUEST   0x400000 RW  [7:0] receiver, [15:8] data address,
                                         [23:16] command, [63:32] data in
    ASIC_CFG_SBUS_EXECUTE   0x400008 RW  [0] EXECUTE, [1] FAST_MODE
    ASIC_STS_SBUS_RESULT    0x400010 RO  [0] DONE, [1] RCV_DATA_VALID,
                                         [4:2] RESULT_CODE, [63:32] DATA_OUT
    ASIC_STS_SBUS_COUNTERS  0x400018 RO  [15:0] EXECUTE_CNT, [31:16] RCV_DATA_VALID_CNT
    ASIC_CFG_SCRATCH{,_1,_2,_3} 0x400020.. RW  chip-resource semaphore bits (scratch 0)
    ASIC_CFG_MUTEX          0x400040 RW  [7:0] owner mask: a write takes a free
                                         mutex, 0 releases (or breaks) it
    ASIC_CFG_DRV_STR        0x400048 RW
    ASIC_CFG_THERM_POLL_EN  0x400050 RW
    ASIC_STS_THERM          0x400058 RO
    ASIC_PCIE_SD_*          0x400100.. RW (PCIe SerDes; used on RTL silicon only)
    ASIC_GPIO_*             0x400200.. GPIO pins (IN reads 0)

The ASIC block is shared by the two HFIs of a dual-port part, so scratch,
mutex and the thermal sensor's polling are not reset by one function's FLR
[inferred]. They power up 0: a
scratch resource bit set at power-up would make the driver wait 80 s for the
EPROM.

SBus: in fast mode every REQUEST write executes at once; otherwise a 0->1 of
EXECUTE runs the latched request and DONE drops when EXECUTE is cleared. A
READ returns the receiver's register, except the firmware-revision result
registers (SerDes 0x04, SBus master 0x08) which answer with the receiver's
firmware revision, as `dump_fw_version` expects.

    SBus receivers (firmware.c)          data addresses the model acts on
    0x01-0x04  fabric SerDes, HFI 0      0x07 SPICO control: 0x11 reset (SPICO off),
    0x28-0x2b  fabric SerDes, HFI 1           0x02 SPICO on; 0x0a firmware download word;
    0x08-0x27  PCIe SerDes/PCS, HFI 0         0xfd broadcast groups: [0] IGNORE_BROADCAST,
    0xe0-0xe5  broadcast groups               [11:4] group 1, [23:16] group 2
    0xfd       SBus master                0x14 SBus master download, 0x04 PCIe download
    0x4f       thermal sensor                 (receiver 0xfd)

A WRITE to a broadcast group address reaches every SerDes that joined the
group (register 0xfd) and does not ignore broadcasts. Firmware download
words (0x0a to a fabric SerDes or group; 0x14 and 0x04 to the SBus master)
also go to the MISC block's hasher (`misc.capture`), which authenticates the
download (`misc.py`). A fabric SerDes whose SPICO is switched on after an
authenticated download runs that image: its revision register reports the
image's revision (`firmware.serdes_revision`); before, and after a SPICO
reset, the ROM's.

Thermal: while ASIC_CFG_THERM_POLL_EN is set, ASIC_STS_THERM reads the
sensor -- CURR_TEMP [12:2] and the LO/HI/CRIT limits, in 0.25 degree units
(`hfi1_tempsense_rd`); no trigger ever fires.

Collaborators: the MISC block (download capture, the authenticated fabric
image); the temperature comes from the chip's configuration.
"""
from __future__ import annotations

from collections.abc import Callable

from common.ratelog import limited
from devmodel.regs import Access, Register

from . import firmware
from .chip_registers import (
    ASIC_CFG_MUTEX,
    ASIC_CFG_SBUS_EXECUTE,
    ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK,
    ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK,
    ASIC_CFG_SBUS_REQUEST,
    ASIC_CFG_SBUS_REQUEST_COMMAND_SHIFT,
    ASIC_CFG_SBUS_REQUEST_DATA_ADDR_SHIFT,
    ASIC_CFG_SBUS_REQUEST_DATA_IN_SHIFT,
    ASIC_CFG_SBUS_REQUEST_RECEIVER_ADDR_SHIFT,
    ASIC_CFG_THERM_POLL_EN,
    ASIC_STS_SBUS_COUNTERS,
    ASIC_STS_SBUS_COUNTERS_EXECUTE_CNT_SHIFT,
    ASIC_STS_SBUS_COUNTERS_RCV_DATA_VALID_CNT_SHIFT,
    ASIC_STS_SBUS_RESULT,
    ASIC_STS_SBUS_RESULT_DATA_OUT_SHIFT,
    ASIC_STS_SBUS_RESULT_DONE_SMASK,
    ASIC_STS_SBUS_RESULT_RCV_DATA_VALID_SMASK,
    ASIC_STS_SBUS_RESULT_RESULT_CODE_SHIFT,
    ASIC_STS_THERM_CRIT_TEMP_SHIFT,
    ASIC_STS_THERM_CURR_TEMP_SHIFT,
    ASIC_STS_THERM_HI_TEMP_SHIFT,
    ASIC_STS_THERM_LO_TEMP_SHIFT,
    CSR_OFFSETS,
)
from .csr import Block, csr, csr_array, csrs, field
from .misc import Download, Misc
from .services import ChipServices

SBUS_MASTER_BROADCAST = 0xFD
RESET_SBUS_RECEIVER = 0x20
WRITE_SBUS_RECEIVER = 0x21
READ_SBUS_RECEIVER = 0x22
SBUS_WRITE_COMPLETE = 0x1  # [uncertain] only the read code is checked by the driver
SBUS_READ_COMPLETE = 0x4
SERDES_FW_REVISION_REG = 0x04
SBUS_MASTER_FW_REVISION_REG = 0x08
SPICO_CONTROL_REG = 0x07
SPICO_RESET = 0x11  # SerDes in reset, SPICO off
SPICO_ENABLE = 0x02
SERDES_DOWNLOAD_REG = 0x0A
SBUS_MASTER_DOWNLOAD_REG = 0x14
PCIE_DOWNLOAD_REG = 0x04  # to the SBus master: PCIe SerDes firmware into its XDMEM
BROADCAST_REG = 0xFD
BROADCAST_GROUPS = range(0xE0, 0xE6)
IGNORE_BROADCAST = 0x1
BROADCAST_DEFAULT = 0xFF << 4 | 0xFF << 16  # no group
#: fabric SerDes (both HFIs) and their broadcast groups (all fabric, HFI 0, HFI 1)
FABRIC_SERDES = frozenset((0x01, 0x02, 0x03, 0x04, 0x28, 0x29, 0x2A, 0x2B))
FABRIC_BROADCAST = frozenset((0xE1, 0xE4, 0xE5))
#: revisions reported by the emulated SPICOs' ROMs (illustrative): what runs
#: until an authenticated image is loaded
SBUS_MASTER_FW_REVISION = 0x1022
SERDES_FW_REVISION = 0x2089
THERMAL_UNITS_PER_C = 4  # ASIC_STS_THERM counts 0.25 degrees
THERM_LO_C, THERM_HI_C, THERM_CRIT_C = 0, 105, 110
#: registers that survive an FLR (shared with the other HFI of the ASIC); the
#: thermal sensor's polling too, since the driver initialises it once per
#: power-on (the CR_THERM_INIT scratch bit) [inferred]
PRESERVED = ("ASIC_CFG_SCRATCH", "ASIC_CFG_SCRATCH_1", "ASIC_CFG_SCRATCH_2", "ASIC_CFG_SCRATCH_3",
             "ASIC_CFG_MUTEX", "ASIC_CFG_THERM_POLL_EN")
#: (SBus receiver, register) -> the firmware download its data words feed
#: (firmware.c load_fabric_serdes_firmware, load_sbus_firmware,
#: load_pcie_serdes_firmware), hashed by the MISC RSA engine
DOWNLOADS = {
    **{(receiver, SERDES_DOWNLOAD_REG): Download.FABRIC for receiver in (*FABRIC_SERDES, *FABRIC_BROADCAST)},
    (SBUS_MASTER_BROADCAST, SBUS_MASTER_DOWNLOAD_REG): Download.SBUS_MASTER,
    (SBUS_MASTER_BROADCAST, PCIE_DOWNLOAD_REG): Download.PCIE,
}


class Asic(Block):
    name = "asic"

    def __init__(self, services: ChipServices, misc: Misc):
        self.misc = misc
        super().__init__(services)

    def declare(self) -> list[Register]:
        self.sbus: dict[tuple[int, int], int] = {}
        #: fabric SerDes running an authenticated image: receiver -> its revision
        self.serdes_firmware: dict[int, int] = {}
        #: SerDes register 0xfd (broadcast groups), by receiver
        self.broadcast: dict[int, int] = {}
        return [
            csr("ASIC_CFG_SBUS_REQUEST", on_write=self._sbus_request),
            csr("ASIC_CFG_SBUS_EXECUTE", writable=ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK
                | ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK, on_write=self._sbus_execute),
            csr("ASIC_STS_SBUS_RESULT", access=Access.RO),
            csr("ASIC_STS_SBUS_COUNTERS", access=Access.RO),
            *csrs("ASIC_CFG_SCRATCH", "ASIC_CFG_SCRATCH_1", "ASIC_CFG_SCRATCH_2", "ASIC_CFG_SCRATCH_3"),
            csr("ASIC_CFG_MUTEX", on_write=self._mutex),
            *csrs("ASIC_CFG_DRV_STR", "ASIC_CFG_THERM_POLL_EN"),
            csr("ASIC_STS_THERM", access=Access.RO, on_read=lambda _v: self._thermal()),
            *csrs("ASIC_PCIE_SD_HOST_CMD", "ASIC_PCIE_SD_INTRPT_DATA_CODE", "ASIC_PCIE_SD_INTRPT_ENABLE"),
            *csrs("ASIC_PCIE_SD_HOST_STATUS", "ASIC_PCIE_SD_INTRPT_STATUS", access=Access.RO),
            *csr_array("ASIC_PCIE_SD_INTRPT_LIST", 16),
            csr("ASIC_GPIO_IN", access=Access.RO),
            *csrs("ASIC_GPIO_OE", "ASIC_GPIO_OUT", "ASIC_GPIO_INVERT", "ASIC_GPIO_MASK"),
            *csrs("ASIC_GPIO_CLEAR", "ASIC_GPIO_FORCE", access=Access.WO),
        ]

    def reset(self) -> None:
        self.sbus.clear()
        self.serdes_firmware.clear()
        self.broadcast.clear()

    def preserved(self) -> dict[int, int]:
        return {CSR_OFFSETS[name]: self.regs.get(CSR_OFFSETS[name]) for name in PRESERVED}

    # -- hardware mutex ------------------------------------------------------
    def _mutex(self, old: int, new: int) -> None:
        owner = old & 0xFF
        wanted = new & 0xFF
        if wanted == 0:
            self.regs.set(ASIC_CFG_MUTEX, 0)
        elif owner == 0:
            self.regs.set(ASIC_CFG_MUTEX, wanted)
        else:
            self.regs.set(ASIC_CFG_MUTEX, owner)  # held by someone else: write ignored
            if owner != wanted:
                self.log.info("ASIC_CFG_MUTEX: %#x wanted, held by %#x", wanted, owner)

    # -- SBus ------------------------------------------------------------------
    def _sbus_request(self, _old: int, new: int) -> None:
        if self.regs.get(ASIC_CFG_SBUS_EXECUTE) & ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK:
            self._sbus_run(new)

    def _sbus_execute(self, old: int, new: int) -> None:
        went_up = new & ~old & ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK
        if went_up:
            self._sbus_run(self.regs.get(ASIC_CFG_SBUS_REQUEST))
        elif not new & ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK:
            self.regs.clear_bits(ASIC_STS_SBUS_RESULT, ASIC_STS_SBUS_RESULT_DONE_SMASK)

    def _sbus_run(self, request: int) -> None:
        receiver = field(request, ASIC_CFG_SBUS_REQUEST_RECEIVER_ADDR_SHIFT, 0xFF)
        address = field(request, ASIC_CFG_SBUS_REQUEST_DATA_ADDR_SHIFT, 0xFF)
        command = field(request, ASIC_CFG_SBUS_REQUEST_COMMAND_SHIFT, 0xFF)
        data_in = field(request, ASIC_CFG_SBUS_REQUEST_DATA_IN_SHIFT, 0xFFFFFFFF)
        data_out, code = 0, SBUS_WRITE_COMPLETE
        run = SBUS_COMMANDS.get(command)
        if run is not None:
            data_out, code = run(self, receiver, address, data_in)
        else:
            limited(self, self.log, "unknown SBus commands").warning(
                "ASIC_CFG_SBUS_REQUEST: unknown command %#x to receiver %#x", command, receiver)
        self.log.debug("ASIC_CFG_SBUS_REQUEST: receiver %#x addr %#x cmd %#x in %#x -> %#x",
                       receiver, address, command, data_in, data_out)
        self.regs.set(ASIC_STS_SBUS_RESULT,
                      ASIC_STS_SBUS_RESULT_DONE_SMASK | ASIC_STS_SBUS_RESULT_RCV_DATA_VALID_SMASK
                      | code << ASIC_STS_SBUS_RESULT_RESULT_CODE_SHIFT
                      | data_out << ASIC_STS_SBUS_RESULT_DATA_OUT_SHIFT)
        counters = self.regs.get(ASIC_STS_SBUS_COUNTERS)
        executed = (field(counters, ASIC_STS_SBUS_COUNTERS_EXECUTE_CNT_SHIFT, 0xFFFF) + 1) & 0xFFFF
        valid = (field(counters, ASIC_STS_SBUS_COUNTERS_RCV_DATA_VALID_CNT_SHIFT, 0xFFFF) + 1) & 0xFFFF
        self.regs.set(ASIC_STS_SBUS_COUNTERS, executed << ASIC_STS_SBUS_COUNTERS_EXECUTE_CNT_SHIFT
                      | valid << ASIC_STS_SBUS_COUNTERS_RCV_DATA_VALID_CNT_SHIFT)

    # Each SBus command: (receiver, data address, data in) -> (data out, result code).
    def _sbus_write_command(self, receiver: int, address: int, data_in: int) -> tuple[int, int]:
        self._capture_download(receiver, address, data_in)
        for target in self._write_targets(receiver):
            self._sbus_write(target, address, data_in)
        return 0, SBUS_WRITE_COMPLETE

    def _sbus_read_command(self, receiver: int, address: int, _data_in: int) -> tuple[int, int]:
        return self._sbus_read(receiver, address), SBUS_READ_COMPLETE

    def _sbus_reset_command(self, receiver: int, _address: int, _data_in: int) -> tuple[int, int]:
        for key in [k for k in self.sbus if k[0] == receiver]:
            del self.sbus[key]
        self.broadcast.pop(receiver, None)
        self.serdes_firmware.pop(receiver, None)
        return 0, SBUS_WRITE_COMPLETE

    def _write_targets(self, receiver: int) -> list[int]:
        """The receiver itself, and for a broadcast group address every
        SerDes that joined it and listens to broadcasts."""
        targets = [receiver]
        if receiver in BROADCAST_GROUPS:
            for member, config in self.broadcast.items():
                if not config & IGNORE_BROADCAST and receiver in (field(config, 4, 0xFF), field(config, 16, 0xFF)):
                    targets.append(member)
        return targets

    def _sbus_write(self, receiver: int, address: int, data: int) -> None:
        self.sbus[(receiver, address)] = data
        if address == BROADCAST_REG and receiver not in BROADCAST_GROUPS:
            self.broadcast[receiver] = data
        if receiver in FABRIC_SERDES and address == SPICO_CONTROL_REG and data in SPICO_CONTROL:
            SPICO_CONTROL[data](self, receiver)

    # SPICO control writes to a fabric SerDes
    def _spico_reset(self, receiver: int) -> None:
        self.serdes_firmware.pop(receiver, None)

    def _spico_enable(self, receiver: int) -> None:
        """The SPICO runs the authenticated fabric image, if there is one."""
        if self.misc.fabric_image is not None:
            revision = firmware.serdes_revision(firmware.Image.FABRIC, self.misc.fabric_image)
            self.serdes_firmware[receiver] = SERDES_FW_REVISION if revision is None else revision

    def _capture_download(self, receiver: int, address: int, data: int) -> None:
        download = DOWNLOADS.get((receiver, address))
        if download is not None:
            self.misc.capture(download, data.to_bytes(4, "little"))

    def _sbus_read(self, receiver: int, address: int) -> int:
        if receiver == SBUS_MASTER_BROADCAST and address == SBUS_MASTER_FW_REVISION_REG:
            return SBUS_MASTER_FW_REVISION
        if receiver != SBUS_MASTER_BROADCAST and address == SERDES_FW_REVISION_REG:
            return self.serdes_firmware.get(receiver, SERDES_FW_REVISION)
        return self.sbus.get((receiver, address), BROADCAST_DEFAULT if address == BROADCAST_REG else 0)

    # -- thermal sensor --------------------------------------------------------------
    def _thermal(self) -> int:
        if not self.regs.get(ASIC_CFG_THERM_POLL_EN) & 1:
            return 0
        units = THERMAL_UNITS_PER_C
        return (units * self.config.asic_temp_c << ASIC_STS_THERM_CURR_TEMP_SHIFT
                | units * THERM_LO_C << ASIC_STS_THERM_LO_TEMP_SHIFT
                | units * THERM_HI_C << ASIC_STS_THERM_HI_TEMP_SHIFT
                | units * THERM_CRIT_C << ASIC_STS_THERM_CRIT_TEMP_SHIFT)


#: ASIC_CFG_SBUS_REQUEST.COMMAND -> what the SBus master does
SBUS_COMMANDS: dict[int, Callable[[Asic, int, int, int], tuple[int, int]]] = {
    WRITE_SBUS_RECEIVER: Asic._sbus_write_command,
    READ_SBUS_RECEIVER: Asic._sbus_read_command,
    RESET_SBUS_RECEIVER: Asic._sbus_reset_command,
}
#: a fabric SerDes's SPICO control register (0x07): value -> what the SPICO does
SPICO_CONTROL: dict[int, Callable[[Asic, int], None]] = {
    SPICO_RESET: Asic._spico_reset,
    SPICO_ENABLE: Asic._spico_enable,
}
