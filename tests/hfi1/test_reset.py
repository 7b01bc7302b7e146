"""Power-on values, and an FLR (the driver's only CSR reset, `use_flr`) restoring them."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.chip_registers import CSR_OFFSETS
from testkit.hfi1.chip import make_device
from testkit.hfi1.guest import GuestDriver

ALL_ONES = (1 << 64) - 1

#: the header's own *_RESETCSR values, and the link/pin states the driver expects at power-on
POWER_ON = {
    "CCE_DC_CTRL": cr.CCE_DC_CTRL_RESETCSR,
    "SEND_CM_CTRL": cr.SEND_CM_CTRL_RESETCSR,
    "SEND_CM_GLOBAL_CREDIT": cr.SEND_CM_GLOBAL_CREDIT_RESETCSR,
    "ASIC_EEP_CTL_STAT": cr.ASIC_EEP_CTL_STAT_RESETCSR,
    "DCC_CFG_PORT_CONFIG": 1 << cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT,  # logical Down
    "ASIC_CFG_MUTEX": 0,
    "ASIC_CFG_SCRATCH": 0,
    "CCE_INT_MASK": 0,
    "CCE_STATUS": 0,
    "SEND_CTRL": 0,
}


@pytest.mark.parametrize("name,value", POWER_ON.items())
def test_power_on_value(driver, name, value):
    assert driver.read_csr(CSR_OFFSETS[name]) == value


def test_qsfp_cage_reads_no_module_with_idle_i2c_lines(driver):
    pins = driver.read_csr(cr.ASIC_QSFP1_IN)
    assert pins & 0x10, "MODPRST_N high: no module"
    assert pins & 0x8 and pins & 0x3 == 0x3, "INT_N idle, SCL/SDA pulled up"
    driver.write_csr(cr.ASIC_QSFP1_OE, 0x2)  # the host pulls SDA low
    assert driver.read_csr(cr.ASIC_QSFP1_IN) & 0x3 == 0x1


def test_read_only_registers_ignore_writes(driver):
    for name in ("CCE_REVISION", "RCV_ARRAY_CNT", "SEND_CONTEXTS", "DC_DC8051_CFG_LOCAL_GUID"):
        before = driver.read_csr(CSR_OFFSETS[name])
        driver.write_csr(CSR_OFFSETS[name], ~before & ALL_ONES)
        assert driver.read_csr(CSR_OFFSETS[name]) == before, name


def test_flr_returns_registers_to_reset_values_but_keeps_asic_semaphores(driver, device):
    driver.read_guid()
    driver.write_csr(cr.CCE_INT_MASK + 8 * 3, 0xFF)
    driver.write_csr(cr.CCE_INT_MAP + 8 * 31, 0x0302010000000000)
    driver.write_kctxt_csr(7, cr.SEND_CTXT_CTRL, 0x12 << 32)
    driver.write_kctxt_csr(9, cr.RCV_HDR_ADDR, 0xDEAD000)
    driver.write_uctxt_csr(9, cr.RCV_TID_FLOW_TABLE + 8 * 31, 0x55)
    driver.write_csr(cr.SEND_CM_GLOBAL_CREDIT, 0)
    driver.dev.bar_write(0, cr.RCV_ARRAY + 8 * 100, 8, 1 << 63 | 0x1234)
    driver.write_csr(cr.ASIC_QSFP1_OUT, 0x1F)
    driver.write_csr(cr.ASIC_CFG_SCRATCH, 0x01)  # another HFI of the part holds SBus
    driver.load_8051_config(0x06, 4, 0xF)

    device.reset()

    assert driver.read_csr(cr.CCE_INT_MASK + 8 * 3) == 0
    assert driver.read_csr(cr.CCE_INT_MAP + 8 * 31) == 0
    assert driver.read_kctxt_csr(7, cr.SEND_CTXT_CTRL) == 0
    assert driver.read_kctxt_csr(9, cr.RCV_HDR_ADDR) == 0
    assert driver.read_csr(cr.RCV_TID_FLOW_TABLE + 0x1000 * 9 + 8 * 31) == 0
    assert driver.read_csr(cr.SEND_CM_GLOBAL_CREDIT) == cr.SEND_CM_GLOBAL_CREDIT_RESETCSR
    assert device.rcv.rcv_array_read(cr.RCV_ARRAY + 8 * 100, 8) == 0
    assert driver.read_csr(cr.ASIC_QSFP1_OUT) == 0, "an FLR forces 0 on the out pins"
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == 0x01, "shared with the other HFI"
    assert driver.read_csr(cr.CCE_DC_CTRL) == 1 and driver.read_csr(cr.DC_DC8051_STS_CUR_STATE) == 0
    driver.read_guid()
    assert driver.read_8051_config(0x06, 4) == 0, "the DC reset cleared the 8051 RAM"


@pytest.fixture
def slow_chip():
    """Link training and SDMA halts that take 2 s of simulated time: the FLR lands first."""
    device, host = make_device(link_training_s=2.0, sdma_halt_s=2.0)
    yield device, host, GuestDriver(device, host)
    device.close()


def test_flr_cancels_link_training_in_flight(slow_chip):
    device, host, driver = slow_chip
    driver.read_guid()
    driver.set_intr_bits(250, 250, True)
    driver.write_csr(cr.DC_DC8051_ERR_EN, ALL_ONES)
    driver.start_link()
    device.reset()
    assert device.settle(timeout_s=3.0), "the training event was cancelled, not postponed"  # 3 s simulated
    assert host.irq.triggered == [] and driver.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48 & 7 == 1


def test_flr_stops_a_pending_sdma_halt(slow_chip):
    device, host, driver = slow_chip
    driver.write_kctxt_csr(0, cr.SEND_DMA_ENG_ERR_MASK, ALL_ONES)
    driver.set_intr_bits(16, 16, True)
    driver.write_kctxt_csr(0, cr.SEND_DMA_CTRL, 0x2)
    device.reset()
    assert device.settle(timeout_s=3.0)
    assert driver.read_kctxt_csr(0, cr.SEND_DMA_STATUS) == 0 and host.irq.triggered == []


def test_undeclared_offsets_are_counted_and_named_by_their_neighbour(driver, device):
    hole = cr.CCE_DC_CTRL + 0x100  # nothing lives there
    driver.write_csr(hole, 0x77)
    assert driver.read_csr(hole) == 0x77, "served as storage"
    stats = device.stats()
    assert stats["undeclared_csr_accesses"] == 2
    assert stats["undeclared_offsets"] == {f"{hole:#x}": "CCE_PCIE_CTRL+0xf8"}
