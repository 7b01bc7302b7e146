"""CCE interrupt CSRs: the VMM self-test, MSI-X routing, second-tier flags."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr
from testkit.hfi1.guest import ALL_ONES


def test_self_test_of_a_device_on_the_root_bus_passes(driver):
    driver.write_csr(cr.CCE_INT_MASK, 0x5A5A)
    assert driver.check_int_registers()
    assert driver.read_csr(cr.CCE_INT_MASK) == 0x5A5A, "the self-test restores the mask"
    assert driver.read_csr(cr.CCE_INT_STATUS) == 0


def test_force_sets_status_and_clear_clears_it_without_interrupts_while_masked(driver, host):
    driver.write_csr(cr.CCE_INT_FORCE + 8 * 4, 0b1010)
    assert driver.read_csr(cr.CCE_INT_STATUS + 8 * 4) == 0b1010
    driver.write_csr(cr.CCE_INT_CLEAR + 8 * 4, 0b0010)
    assert driver.read_csr(cr.CCE_INT_STATUS + 8 * 4) == 0b1000
    assert host.irq.triggered == []
    assert driver.read_csr(cr.CCE_INT_BLOCKED + 8 * 4) == 0b1000, "pending but masked"


def test_an_unmasked_source_signals_the_msix_vector_its_map_byte_names(driver, host):
    source = 256 + 2  # RcvAvail of kernel context 2
    driver.remap_intr(source, 19)
    driver.set_intr_bits(source, source, True)
    driver.write_csr(cr.CCE_INT_FORCE + 8 * (source // 64), 1 << (source % 64))  # force_recv_intr
    host.irq.wait_for(19)
    assert host.irq.triggered == [19]


def test_a_pending_source_signals_once_until_cleared(driver, host):
    driver.set_intr_bits(250, 250, True)
    driver.write_csr(cr.CCE_INT_FORCE + 8 * 3, 1 << 58)
    driver.write_csr(cr.CCE_INT_FORCE + 8 * 3, 1 << 58)  # still pending: no new edge
    assert host.irq.count(0) == 1
    driver.write_csr(cr.CCE_INT_CLEAR + 8 * 3, 1 << 58)
    driver.write_csr(cr.CCE_INT_FORCE + 8 * 3, 1 << 58)
    assert host.irq.count(0) == 2


def test_unmasking_a_pending_source_signals_it(driver, host):
    driver.write_csr(cr.CCE_INT_FORCE, 1 << 7)
    assert host.irq.triggered == []
    driver.set_intr_bits(7, 7, True)
    assert host.irq.triggered == [0]


def test_a_second_tier_error_raises_its_first_tier_source_and_clears_down(driver, device, host):
    driver.set_intr_bits(1, 1, True)  # RXE_ERR_INT
    device.hardware_event(lambda: device.rcv.errors.set(1 << 5))  # while RCV_ERR_MASK is still 0
    assert host.irq.triggered == [], "a masked second-tier flag stays quiet"
    driver.write_csr(cr.RCV_ERR_MASK, ALL_ONES)
    host.irq.wait_for(0)
    assert driver.general_interrupt() == [1]
    assert driver.read_csr(cr.RCV_ERR_STATUS) == 0, "clear-down found the flag and cleared it"


def test_a_partial_write_to_a_clear_register_clears_only_its_bytes(driver, device):
    device.hardware_event(lambda: device.cce.errors.set(0xFF00_0000_00FF))
    device.bar_write(0, cr.CCE_ERR_CLEAR, 4, 0xFFFFFFFF)
    assert driver.read_csr(cr.CCE_ERR_STATUS) == 0xFF00_0000_0000
    device.bar_write(0, cr.CCE_ERR_CLEAR + 4, 4, 0x0000FF00)
    assert driver.read_csr(cr.CCE_ERR_STATUS) == 0
