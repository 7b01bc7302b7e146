"""LCB: the DC's link layer (LTP framing, CRC, replay, lane control).

    DC_LCB_CFG_*             0x601000..0x601128 RW  RUN [0] EN, TX_FIFOS_RESET,
                                                    LOOPBACK, LANE_WIDTH, ALLOW_LINK_UP ...
    DC_LCB_ERR_FLG/CLR/EN    0x601300/08/10         second tier of source 249
    DC_LCB_ERR_INFO_*        0x601320..0x601390 RW  error counters
    DC_LCB_PRF_*             0x601400..0x601420 RW  performance counters
    DC_LCB_STS_LINK_TRANSFER_ACTIVE 0x601468 RO     1 while LTPs flow
    DC_LCB_STS_ROUND_TRIP_LTP_CNT   0x6014B0 RO     LTP round trip, in cycles
    DC_LCB_PG_*              0x601580..0x601608 RW  counters

Who may touch the LCB is arbitrated with the 8051 (HCMD_MISC request/grant and
DC_DC8051_CFG_CSR_ACCESS_SEL); in simulator mode the driver reads LCB CSRs
directly once it holds access. Link transfer is active while the physical link
is LinkUp, or when the host runs the LCB in loopback (RUN.EN with
ALLOW_LINK_UP) as `force_logical_link_state_down` and quick link-up do
[inferred].

Collaborators: the interrupt controller (LCB errors, source 249) and the
8051's physical link (`lni.PhysicalLink`), whose LinkUp it reports.
"""
from __future__ import annotations

from devmodel.regs import Access, Register

from .chip_registers import DC_LCB_CFG_ALLOW_LINK_UP, DC_LCB_CFG_RUN, DC_LCB_CFG_RUN_EN_SHIFT
from .csr import Block, csr, csrs, named
from .intr import LCB_ERR_INT, ErrorFlags, InterruptController
from .lni import PhysicalLink
from .services import ChipServices

#: LTP round-trip count reported once the link is up (illustrative)
ROUND_TRIP_LTP_CYCLES = 0x28


class Lcb(Block):
    name = "lcb"

    def __init__(self, services: ChipServices, intr: InterruptController, link: PhysicalLink):
        self.intr = intr
        self.link = link
        super().__init__(services)

    def declare(self) -> list[Register]:
        self.errors = ErrorFlags(self.intr, LCB_ERR_INT, "DC_LCB_ERR_FLG", "DC_LCB_ERR_CLR", "DC_LCB_ERR_EN")
        return [
            *csrs(*named("DC_LCB_CFG_")),
            *self.errors.declare(),
            *csrs(*named("DC_LCB_ERR_INFO_"), *named("DC_LCB_PRF_"), *named("DC_LCB_PG_")),
            csr("DC_LCB_STS_LINK_TRANSFER_ACTIVE", access=Access.RO,
                on_read=lambda _v: int(self.link_transfer_active)),
            csr("DC_LCB_STS_ROUND_TRIP_LTP_CNT", access=Access.RO,
                on_read=lambda _v: ROUND_TRIP_LTP_CYCLES if self.link.is_up else 0),
        ]

    @property
    def link_transfer_active(self) -> bool:
        if self.link.is_up:
            return True
        running = self.regs.get(DC_LCB_CFG_RUN) >> DC_LCB_CFG_RUN_EN_SHIFT & 1
        return bool(running and self.regs.get(DC_LCB_CFG_ALLOW_LINK_UP) & 1)
