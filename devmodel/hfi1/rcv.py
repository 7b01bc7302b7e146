"""RXE: receive block configuration, receive contexts, and the RcvArray.

    RCV_CTRL            0x1000000 RW  [0] PORT_ENABLE [1] QP_MAP [2] PARTITION_KEY
                                      [4] BYPASS [5] RSM [6] EXTENDED_PSN,
                                      [9] RX_RBUF_INIT (self-clearing command)
    RCV_STATUS          0x1000008 RO  [0] PKT_IN_PROGRESS [6] RBUF_PKT_PENDING [9] RBUF_INIT_DONE
    RCV_CONTEXTS        0x1000010 RO  number of receive contexts
    RCV_ARRAY_CNT       0x1000018 RO  number of RcvArray entries
    RCV_BTH_QP/MULTICAST/BYPASS/VL15  RW
    RCV_ERR_INFO        0x1000050 W1C
    RCV_ERR_STATUS/MASK/CLEAR 0x1000060/68/70  second tier of source 1
    RCV_QP_MAP_TABLE[32], RCV_PARTITION_KEY[4], RCV_COUNTER_ARRAY32[24],
    RCV_COUNTER_ARRAY64[2], RCV_RSM_CFG/SELECT/MATCH[4], RCV_RSM_MAP_TABLE[32]  RW
    per context c, kernel page 0x1100000 + 0x100c:
      RCV_CTXT_CTRL, RCV_CTXT_STATUS (RO), RCV_EGR_CTRL, RCV_TID_CTRL, RCV_KEY_CTRL,
      RCV_HDR_ADDR/CNT/ENT_SIZE/SIZE/TAIL_ADDR, RCV_AVAIL_TIME_OUT, RCV_HDR_OVFL_CNT
    per context c, user page 0x1300000 + 0x1000c:
      RCV_HDR_TAIL (RO), RCV_HDR_HEAD, RCV_EGR_INDEX_HEAD, RCV_TID_FLOW_TABLE[32]
    RcvArray            0x1200000 + 8i  one 64-bit TID entry per index, written
                                        through the driver's write-combining map

No packets are received yet (no data path): context status reads 0 and the
header-queue tail stays where it is. The RcvArray is storage the receive path
will read.
"""
from __future__ import annotations

import numpy as np

from devmodel.regs import Access, Register

from .chip_registers import (
    RCV_ARRAY, RCV_CTRL_RX_RBUF_INIT_SMASK, RCV_STATUS, RCV_STATUS_RX_RBUF_INIT_DONE_SMASK, RCV_TID_FLOW_TABLE,
)
from .csr import KCTXT_STRIDE, UCTXT_STRIDE, Block, csr, csr_array, csrs
from .intr import RXE_ERR_INT, ErrorFlags

KERNEL_CONTEXT_CSRS = ("RCV_CTXT_CTRL", "RCV_EGR_CTRL", "RCV_TID_CTRL", "RCV_KEY_CTRL", "RCV_HDR_ADDR",
                       "RCV_HDR_CNT", "RCV_HDR_ENT_SIZE", "RCV_HDR_SIZE", "RCV_HDR_TAIL_ADDR",
                       "RCV_AVAIL_TIME_OUT", "RCV_HDR_OVFL_CNT")
RXE_NUM_TID_FLOWS = 32


class Receive(Block):
    name = "rcv"

    def declare(self) -> list[Register]:
        config = self.chip.config
        contexts = config.rcv_contexts
        self.errors = ErrorFlags(self.chip, RXE_ERR_INT, "RCV_ERR_STATUS", "RCV_ERR_CLEAR", "RCV_ERR_MASK")
        self.rcv_array = np.zeros(config.rcv_array_count, dtype=np.uint64)
        regs = [
            csr("RCV_CTRL", access=Access.SC, self_clearing=RCV_CTRL_RX_RBUF_INIT_SMASK, on_write=self._control),
            csr("RCV_STATUS", access=Access.RO),
            csr("RCV_CONTEXTS", access=Access.RO, reset=contexts),
            csr("RCV_ARRAY_CNT", access=Access.RO, reset=config.rcv_array_count),
            *csrs("RCV_BTH_QP", "RCV_MULTICAST", "RCV_BYPASS", "RCV_VL15"),
            csr("RCV_ERR_INFO", access=Access.W1C),
            *self.errors.declare(),
            *csr_array("RCV_QP_MAP_TABLE", 32),
            *csr_array("RCV_PARTITION_KEY", 4),
            *csr_array("RCV_COUNTER_ARRAY32", 24),
            *csr_array("RCV_COUNTER_ARRAY64", 2),
            *csr_array("RCV_RSM_CFG", 4),
            *csr_array("RCV_RSM_SELECT", 4),
            *csr_array("RCV_RSM_MATCH", 4),
            *csr_array("RCV_RSM_MAP_TABLE", 32),
            *csr_array("RCV_CTXT_STATUS", contexts, KCTXT_STRIDE, access=Access.RO),
            *csr_array("RCV_HDR_TAIL", contexts, UCTXT_STRIDE, access=Access.RO),
            *csr_array("RCV_HDR_HEAD", contexts, UCTXT_STRIDE),
            *csr_array("RCV_EGR_INDEX_HEAD", contexts, UCTXT_STRIDE),
        ]
        for name in KERNEL_CONTEXT_CSRS:
            regs += csr_array(name, contexts, KCTXT_STRIDE)
        for ctxt in range(contexts):
            regs += csr_array(f"RCV_TID_FLOW_TABLE[{ctxt}]", RXE_NUM_TID_FLOWS, 8,
                              base=RCV_TID_FLOW_TABLE + ctxt * UCTXT_STRIDE)
        return regs

    def reset(self) -> None:
        self.rcv_array[:] = 0

    def _control(self, _old: int, new: int) -> None:
        if new & RCV_CTRL_RX_RBUF_INIT_SMASK:
            self.log.info("RCV_CTRL: RX_RBUF_INIT")
            self.regs.set_bits(RCV_STATUS, RCV_STATUS_RX_RBUF_INIT_DONE_SMASK)

    # -- RcvArray ------------------------------------------------------------------
    def rcv_array_span(self) -> tuple[int, int]:
        return RCV_ARRAY, RCV_ARRAY + 8 * len(self.rcv_array)

    def rcv_array_read(self, offset: int, size: int) -> int:
        index, shift = divmod(offset - RCV_ARRAY, 8)
        return (int(self.rcv_array[index]) >> (8 * shift)) & ((1 << (8 * size)) - 1)

    def rcv_array_write(self, offset: int, size: int, value: int) -> None:
        index, shift = divmod(offset - RCV_ARRAY, 8)
        lanes = ((1 << (8 * size)) - 1) << (8 * shift)
        old = int(self.rcv_array[index])
        self.rcv_array[index] = (old & ~lanes) | ((value << (8 * shift)) & lanes)
