"""TXE: send block globals, credit manager (CM) and egress.

    SEND_CTRL                0x1800000 RW  [0] SEND_ENABLE [1] VL_ARBITER_ENABLE
                                           [2] CM_RESET (self-clearing) [10:3] UNSUPPORTED_VL
    SEND_CONTEXTS            0x1800010 RO  number of PIO send contexts
    SEND_DMA_ENGINES         0x1800018 RO  number of SDMA engines
    SEND_PIO_MEM_SIZE        0x1800020 RO  PIO send buffer bytes
    SEND_DMA_MEM_SIZE        0x1800028 RO  SDMA buffer bytes
    SEND_HIGH_PRIORITY_LIMIT 0x1800030 RW
    SEND_EGRESS_ERR_STATUS/MASK/CLEAR 0x1800080/88/90  second tier of source 6
    SEND_BTH_QP, SEND_STATIC_RATE_CONTROL, SEND_SC2VLT0..3, SEND_LEN_CHECK0/1  RW
    SEND_ERR_STATUS/MASK/CLEAR 0x18000E0/E8/F0          second tier of source 7
    SEND_LOW/HIGH_PRIORITY_LIST[16], SEND_CONTEXT_SET_CTRL[contexts/8]  RW
    SEND_COUNTER_ARRAY32[7], SEND_COUNTER_ARRAY64[30]    RW
    SEND_CM_CTRL (reset 0x20), SEND_CM_GLOBAL_CREDIT (reset 0x0000094000030000),
    SEND_CM_TIMER_CTRL, SEND_CM_{LOCAL,REMOTE}_AU_TABLE*, SEND_CM_CREDIT_VL[8],
    SEND_CM_CREDIT_VL15      RW   link credit limits, read back by the SMA
    SEND_CM_CREDIT_USED_STATUS 0x1800510 RO  per-VL "credits outstanding": 0
    SEND_EGRESS_CTXT_STATUS[contexts]     0x1800800 RO  [13:0] packet occupancy: 0
    SEND_EGRESS_SEND_DMA_STATUS[engines]  0x1800E00 RO  packet occupancy: 0
    SEND_EGRESS_ERR_INFO     0x1800F00 W1C; SEND_EGRESS_ERR_SOURCE 0x1800F08 RO

`__cm_reset` sets CM_RESET and spins until it reads back clear, with no
timeout, on every link down: the bit clears as soon as the write lands. With no
packets in flight, egress occupancy and credits-in-use read 0, so disabling a
context or changing credit limits completes at once.
"""
from __future__ import annotations

from devmodel.regs import Access, Register

from .chip_registers import (
    SEND_CM_CTRL_RESETCSR, SEND_CM_GLOBAL_CREDIT_RESETCSR, SEND_CTRL_CM_RESET_SMASK,
)
from .csr import Block, csr, csr_array, csrs
from .intr import EGRESS_ERR_INT, TXE_ERR_INT, ErrorFlags

NUM_CONTEXTS_PER_SET = 8


class Send(Block):
    name = "send"

    def declare(self) -> list[Register]:
        config = self.chip.config
        self.egress_errors = ErrorFlags(self.chip, EGRESS_ERR_INT, "SEND_EGRESS_ERR_STATUS",
                                        "SEND_EGRESS_ERR_CLEAR", "SEND_EGRESS_ERR_MASK")
        self.errors = ErrorFlags(self.chip, TXE_ERR_INT, "SEND_ERR_STATUS", "SEND_ERR_CLEAR", "SEND_ERR_MASK")
        self.cm_resets = 0
        return [
            csr("SEND_CTRL", access=Access.SC, self_clearing=SEND_CTRL_CM_RESET_SMASK, on_write=self._control),
            csr("SEND_CONTEXTS", access=Access.RO, reset=config.send_contexts),
            csr("SEND_DMA_ENGINES", access=Access.RO, reset=config.sdma_engines),
            csr("SEND_PIO_MEM_SIZE", access=Access.RO, reset=config.pio_mem_size),
            csr("SEND_DMA_MEM_SIZE", access=Access.RO, reset=config.sdma_mem_size),
            csr("SEND_HIGH_PRIORITY_LIMIT"),
            *self.egress_errors.declare(),
            *self.errors.declare(),
            *csrs("SEND_BTH_QP", "SEND_STATIC_RATE_CONTROL", "SEND_SC2VLT0", "SEND_SC2VLT1", "SEND_SC2VLT2",
                  "SEND_SC2VLT3", "SEND_LEN_CHECK0", "SEND_LEN_CHECK1"),
            *csr_array("SEND_LOW_PRIORITY_LIST", 16),
            *csr_array("SEND_HIGH_PRIORITY_LIST", 16),
            *csr_array("SEND_CONTEXT_SET_CTRL", config.send_contexts // NUM_CONTEXTS_PER_SET),
            *csr_array("SEND_COUNTER_ARRAY32", 7),
            *csr_array("SEND_COUNTER_ARRAY64", 30),
            csr("SEND_CM_CTRL", reset=SEND_CM_CTRL_RESETCSR),
            csr("SEND_CM_GLOBAL_CREDIT", reset=SEND_CM_GLOBAL_CREDIT_RESETCSR),
            *csrs("SEND_CM_TIMER_CTRL", "SEND_CM_LOCAL_AU_TABLE0_TO3", "SEND_CM_LOCAL_AU_TABLE4_TO7",
                  "SEND_CM_REMOTE_AU_TABLE0_TO3", "SEND_CM_REMOTE_AU_TABLE4_TO7", "SEND_CM_CREDIT_VL15"),
            csr("SEND_CM_CREDIT_USED_STATUS", access=Access.RO),
            *csr_array("SEND_CM_CREDIT_VL", 8),
            *csr_array("SEND_EGRESS_CTXT_STATUS", config.send_contexts, access=Access.RO),
            *csr_array("SEND_EGRESS_SEND_DMA_STATUS", config.sdma_engines, access=Access.RO),
            csr("SEND_EGRESS_ERR_INFO", access=Access.W1C),
            csr("SEND_EGRESS_ERR_SOURCE", access=Access.RO),
        ]

    def reset(self) -> None:
        self.cm_resets = 0

    def _control(self, _old: int, new: int) -> None:
        if new & SEND_CTRL_CM_RESET_SMASK:
            self.cm_resets += 1
            self.log.info("SEND_CTRL: CM_RESET (credit manager reset)")
