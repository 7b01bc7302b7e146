"""MISC block: firmware authentication (RSA/SHA) and MISC errors.

    MISC_CFG_RSA_R2[32]        0x500000 RW
    MISC_CFG_RSA_SIGNATURE[32] 0x500200 RW
    MISC_CFG_RSA_MODULUS[32]   0x500400 RW
    MISC_CFG_SHA_PRELOAD       0x500A00 WO  streamed, "always reads 0"
    MISC_CFG_RSA_CMD           0x500A08 RW
    MISC_CFG_RSA_MU            0x500A10 RW
    MISC_CFG_FW_CTRL           0x501000 RW  [1] FW_8051_LOADED, [3:2] RSA_STATUS
    MISC_ERR_STATUS/MASK/CLEAR 0x502000/0x502008/0x502010  second tier of source 2

The RSA engine validates firmware images before the 8051 or the SerDes run
them. With implementation code 3 the driver loads no firmware and never starts
it, so these registers are storage; running the engine is not modelled.
"""
from __future__ import annotations

from devmodel.regs import Access, Register

from .csr import Block, csr, csr_array, csrs
from .intr import MISC_ERR_INT, ErrorFlags


class Misc(Block):
    name = "misc"

    def declare(self) -> list[Register]:
        self.errors = ErrorFlags(self.chip, MISC_ERR_INT, "MISC_ERR_STATUS", "MISC_ERR_CLEAR", "MISC_ERR_MASK")
        return [
            *csr_array("MISC_CFG_RSA_R2", 32),
            *csr_array("MISC_CFG_RSA_SIGNATURE", 32),
            *csr_array("MISC_CFG_RSA_MODULUS", 32),
            csr("MISC_CFG_SHA_PRELOAD", access=Access.WO),
            *csrs("MISC_CFG_RSA_CMD", "MISC_CFG_RSA_MU", "MISC_CFG_FW_CTRL"),
            *self.errors.declare(),
        ]
