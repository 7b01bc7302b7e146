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

The ASIC block is shared by the two HFIs of a dual-port part, so scratch and
mutex are not reset by one function's FLR [inferred]. They power up 0: a
scratch resource bit set at power-up would make the driver wait 80 s for the
EPROM.

SBus: in fast mode every REQUEST write executes at once; otherwise a 0->1 of
EXECUTE runs the latched request and DONE drops when EXECUTE is cleared. A
READ returns the receiver's register, except the firmware-revision result
registers (SerDes 0x04, SBus master 0x08) which answer with the receiver's
firmware revision, as `dump_fw_version` expects.
"""
from __future__ import annotations

from devmodel.regs import Access, Register

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
    ASIC_STS_SBUS_COUNTERS,
    ASIC_STS_SBUS_COUNTERS_EXECUTE_CNT_SHIFT,
    ASIC_STS_SBUS_COUNTERS_RCV_DATA_VALID_CNT_SHIFT,
    ASIC_STS_SBUS_RESULT,
    ASIC_STS_SBUS_RESULT_DATA_OUT_SHIFT,
    ASIC_STS_SBUS_RESULT_DONE_SMASK,
    ASIC_STS_SBUS_RESULT_RCV_DATA_VALID_SMASK,
    ASIC_STS_SBUS_RESULT_RESULT_CODE_SHIFT,
    CSR_OFFSETS,
)
from .csr import Block, csr, csr_array, csrs, field

SBUS_MASTER_BROADCAST = 0xFD
RESET_SBUS_RECEIVER = 0x20
WRITE_SBUS_RECEIVER = 0x21
READ_SBUS_RECEIVER = 0x22
SBUS_WRITE_COMPLETE = 0x1  # [uncertain] only the read code is checked by the driver
SBUS_READ_COMPLETE = 0x4
SERDES_FW_REVISION_REG = 0x04
SBUS_MASTER_FW_REVISION_REG = 0x08
#: revisions reported by the emulated SPICOs (illustrative, no firmware is loaded)
SBUS_MASTER_FW_REVISION = 0x1022
SERDES_FW_REVISION = 0x2089
#: registers that survive an FLR (shared with the other HFI of the ASIC)
PRESERVED = ("ASIC_CFG_SCRATCH", "ASIC_CFG_SCRATCH_1", "ASIC_CFG_SCRATCH_2", "ASIC_CFG_SCRATCH_3",
             "ASIC_CFG_MUTEX")


class Asic(Block):
    name = "asic"

    def declare(self) -> list[Register]:
        self.sbus: dict[tuple[int, int], int] = {}
        return [
            csr("ASIC_CFG_SBUS_REQUEST", on_write=self._sbus_request),
            csr("ASIC_CFG_SBUS_EXECUTE", writable=ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK
                | ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK, on_write=self._sbus_execute),
            csr("ASIC_STS_SBUS_RESULT", access=Access.RO),
            csr("ASIC_STS_SBUS_COUNTERS", access=Access.RO),
            *csrs("ASIC_CFG_SCRATCH", "ASIC_CFG_SCRATCH_1", "ASIC_CFG_SCRATCH_2", "ASIC_CFG_SCRATCH_3"),
            csr("ASIC_CFG_MUTEX", on_write=self._mutex),
            *csrs("ASIC_CFG_DRV_STR", "ASIC_CFG_THERM_POLL_EN"),
            csr("ASIC_STS_THERM", access=Access.RO),
            *csrs("ASIC_PCIE_SD_HOST_CMD", "ASIC_PCIE_SD_INTRPT_DATA_CODE", "ASIC_PCIE_SD_INTRPT_ENABLE"),
            *csrs("ASIC_PCIE_SD_HOST_STATUS", "ASIC_PCIE_SD_INTRPT_STATUS", access=Access.RO),
            *csr_array("ASIC_PCIE_SD_INTRPT_LIST", 16),
            csr("ASIC_GPIO_IN", access=Access.RO),
            *csrs("ASIC_GPIO_OE", "ASIC_GPIO_OUT", "ASIC_GPIO_INVERT", "ASIC_GPIO_MASK"),
            *csrs("ASIC_GPIO_CLEAR", "ASIC_GPIO_FORCE", access=Access.WO),
        ]

    def reset(self) -> None:
        self.sbus.clear()

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
        if command == WRITE_SBUS_RECEIVER:
            self.sbus[(receiver, address)] = data_in
        elif command == READ_SBUS_RECEIVER:
            data_out, code = self._sbus_read(receiver, address), SBUS_READ_COMPLETE
        elif command == RESET_SBUS_RECEIVER:
            for key in [k for k in self.sbus if k[0] == receiver]:
                del self.sbus[key]
        else:
            self.log.warning("ASIC_CFG_SBUS_REQUEST: unknown command %#x to receiver %#x", command, receiver)
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

    def _sbus_read(self, receiver: int, address: int) -> int:
        if receiver == SBUS_MASTER_BROADCAST and address == SBUS_MASTER_FW_REVISION_REG:
            return SBUS_MASTER_FW_REVISION
        if receiver != SBUS_MASTER_BROADCAST and address == SERDES_FW_REVISION_REG:
            return SERDES_FW_REVISION
        return self.sbus.get((receiver, address), 0)
