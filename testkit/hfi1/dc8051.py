"""The 8051 as the driver sees it: host commands, the physical and logical
link state, and the first LinkUp."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr

LOAD_CONFIG_DATA, READ_CONFIG_DATA, CHANGE_PHY_STATE, SEND_LCB_IDLE_MSG = 0x01, 0x02, 0x03, 0x04
LINKUP_ACHIEVED, LINK_GOING_DOWN, HOST_REQ_DONE = 1 << 7, 1 << 8, 1 << 0
GENERAL = 4  # the lane argument of the 8051's general fields


def phys(driver) -> int:
    return driver.read_csr(cr.DC_DC8051_STS_CUR_STATE) & 0xFF


def logical(driver) -> int:
    return (driver.read_csr(cr.DCC_CFG_PORT_CONFIG) >> cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT) & 0x7


def bring_link_up(driver, host):
    driver.set_intr_bits(248, 255, True)
    driver.write_csr(cr.DC_DC8051_ERR_EN, (1 << 64) - 1)
    driver.start_link()
    host.irq.wait_for(0)
    driver.general_interrupt()
