"""QSFP cage pins, one block per port (ASIC_QSFP1_* for HFI 0, ASIC_QSFP2_* for HFI 1).

    ASIC_QSFPn_IN      RO  pin levels
    ASIC_QSFPn_OE      RW  1 drives the pin low (open drain)
    ASIC_QSFPn_INVERT  RW  1 makes a low level the "asserted" one
    ASIC_QSFPn_OUT     RW  output latch (RESET_N)
    ASIC_QSFPn_MASK    RW  interrupt enables        } second tier of
    ASIC_QSFPn_STATUS  RO  latched pin events       } source 242 (QSFP1)
    ASIC_QSFPn_CLEAR   WO  1 clears a STATUS bit    } or 243 (QSFP2)
    ASIC_QSFPn_FORCE   WO  1 sets a STATUS bit      }
      pin bits: [0] I2CCLK [1] I2CDAT [2] RESET_N [3] INT_N [4] MODPRST_N

No module is plugged in: INT_N and MODPRST_N float high (the driver reads
MODPRST_N = 1 as "no module"), and the I2C lines read high unless the host
drives them low through OE. A STATUS bit latches when its pin becomes asserted
((IN ^ INVERT) goes 0 -> 1) [inferred]: edge, not level, which is what lets the
driver clear STATUS before it programs INVERT without a spurious interrupt.

Collaborators: the interrupt controller (its pin events are a second tier).
"""
from __future__ import annotations

from devmodel.regs import Access, Register

from .chip_registers import CSR_OFFSETS
from .csr import Block, csr
from .intr import QSFP1_INT, ErrorFlags, InterruptController
from .services import ChipServices

QSFP_I2CCLK = 1 << 0
QSFP_I2CDAT = 1 << 1
QSFP_RESET_N = 1 << 2
QSFP_INT_N = 1 << 3
QSFP_MODPRST_N = 1 << 4
QSFP_PINS = 0x1F


class QsfpPort(Block):
    def __init__(self, services: ChipServices, intr: InterruptController, number: int):
        self.intr = intr
        self.number = number
        self.name = f"qsfp{number}"
        self.prefix = f"ASIC_QSFP{number}_"
        super().__init__(services)

    def _off(self, suffix: str) -> int:
        return CSR_OFFSETS[self.prefix + suffix]

    def declare(self) -> list[Register]:
        p = self.prefix
        self.module_present = False
        self.events = ErrorFlags(self.intr, QSFP1_INT + self.number - 1, p + "STATUS", p + "CLEAR", p + "MASK",
                                 force=p + "FORCE")
        self._asserted = 0
        return [
            csr(p + "IN", access=Access.RO, on_read=lambda _v: self.pins()),
            csr(p + "OE", on_write=self._pins_changed),
            csr(p + "INVERT", on_write=self._pins_changed),
            csr(p + "OUT", on_write=self._pins_changed),
            *self.events.declare(),
        ]

    def reset(self) -> None:
        self._asserted = self._asserted_now()

    def pins(self) -> int:
        oe = self.regs.get(self._off("OE"))
        out = self.regs.get(self._off("OUT"))
        level = (QSFP_I2CCLK | QSFP_I2CDAT) & ~oe
        level |= out & QSFP_RESET_N
        if not self.module_present:
            level |= QSFP_INT_N | QSFP_MODPRST_N
        else:
            level |= QSFP_INT_N  # a quiet module: interrupt line idle, present pin pulled low
        return level

    def _asserted_now(self) -> int:
        invert = self.regs.get(self._off("INVERT"))
        return (self.pins() ^ invert) & QSFP_PINS

    def _pins_changed(self, _old: int = 0, _new: int = 0) -> None:
        now = self._asserted_now()
        rising = now & ~self._asserted
        self._asserted = now
        if rising:
            self.events.set(rising)

    def set_module_present(self, present: bool) -> None:
        """Plug or unplug a cable (fabric / fault injection)."""
        self.log.info("%sIN: module %s", self.prefix, "inserted" if present else "removed")
        self.module_present = present
        self._pins_changed()
