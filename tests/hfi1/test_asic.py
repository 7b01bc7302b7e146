"""ASIC block: hardware mutex, chip resources, SBus, QSFP pins, EPROM."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.config import PortType
from testkit.hfi1.guest import CR_EPROM, CR_SBUS


def test_hardware_mutex_is_taken_by_the_first_writer_and_released_by_zero(driver):
    driver.write_csr(cr.ASIC_CFG_MUTEX, 0x2)  # the other HFI of the part takes it
    assert driver.read_csr(cr.ASIC_CFG_MUTEX) == 0x2
    driver.write_csr(cr.ASIC_CFG_MUTEX, 0x1)
    assert driver.read_csr(cr.ASIC_CFG_MUTEX) == 0x2, "held: another owner's write is ignored"
    assert driver.acquire_hw_mutex(), "the driver breaks a stuck mutex with a 0 write, then takes it"
    assert driver.read_csr(cr.ASIC_CFG_MUTEX) == 0x1
    driver.release_hw_mutex()
    assert driver.read_csr(cr.ASIC_CFG_MUTEX) == 0


def test_chip_resources_are_exclusive_across_both_hfis(driver):
    assert driver.acquire_chip_resource(CR_EPROM)
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == CR_EPROM
    driver.hfi1_id = 1
    assert not driver.acquire_chip_resource(CR_EPROM), "busy while HFI 0 holds it"
    assert driver.acquire_chip_resource(CR_SBUS)
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == CR_EPROM | CR_SBUS << 8
    driver.release_chip_resource(CR_SBUS)
    driver.hfi1_id = 0
    driver.release_chip_resource(CR_EPROM)
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == 0


def test_dump_fw_version_reads_every_spico_in_fast_mode(driver):
    versions = driver.dump_fw_version()
    assert versions["sbus"] and len(versions["pcie"]) == 16 and len(versions["fabric"]) == 4
    assert len(set(versions["pcie"])) == 1, "all PCIe SerDes report one version"
    counters = driver.read_csr(cr.ASIC_STS_SBUS_COUNTERS)
    assert counters & 0xFFFF == 2 + 1 + 20 * 2, "every request executed"
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == 0


def test_sbus_slow_mode_executes_on_execute_and_done_drops_with_it(driver):
    driver.sbus_request(0x01, 0x10, 0x21, 0xABCD)  # not in fast mode: latched only
    assert driver.read_csr(cr.ASIC_STS_SBUS_RESULT) == 0
    driver.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK)
    assert driver.read_csr(cr.ASIC_STS_SBUS_RESULT) & 0x3 == 0x3
    driver.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, 0)
    assert not driver.read_csr(cr.ASIC_STS_SBUS_RESULT) & 0x1
    driver.sbus_request(0x01, 0x10, 0x22, 0)
    driver.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK)
    assert driver.read_csr(cr.ASIC_STS_SBUS_RESULT) >> 32 == 0xABCD, "the written value reads back"


def test_init_qsfp_int_without_a_module_raises_nothing(driver, host):
    driver.write_csr(cr.ASIC_QSFP1_CLEAR, 0x18)
    driver.write_csr(cr.ASIC_QSFP1_MASK, 0x18)
    driver.write_csr(cr.ASIC_QSFP1_MASK, driver.read_csr(cr.ASIC_QSFP1_MASK) & ~0x8)
    assert driver.read_csr(cr.ASIC_QSFP1_IN) & 0x10, "qsfp_mod_present() is false"
    driver.write_csr(cr.ASIC_QSFP1_INVERT, 0x18)
    driver.set_intr_bits(242, 242, True)
    assert driver.read_csr(cr.ASIC_QSFP1_STATUS) == 0
    assert host.irq.triggered == []


def test_plugging_a_module_raises_the_qsfp_interrupt(driver, device, host):
    test_init_qsfp_int_without_a_module_raises_nothing(driver, host)
    device.hardware_event(lambda: device.qsfp[0].set_module_present(True))
    host.irq.wait_for(0)
    driver.general_interrupt()
    assert driver.events == [(242, 0x10)], "MODPRST_N event, cleared down"


def test_eprom_holds_a_well_formed_platform_config_with_defaults(driver, device):
    driver.eprom_init()
    data = driver.eprom_read_platform_config()
    tables = driver.parse_platform_config(data)
    assert {kind for kind, is_data in tables if not is_data} == {1, 2, 3, 4, 5, 6}, "metadata for every table"
    assert driver.get_platform_config_field(tables, 2, 0, 1) == PortType.FIXED
    meta_version = driver.get_platform_config_field(tables, 1, 0, 6)
    assert meta_version >= 4, "check_meta_version"
    assert driver.read_csr(cr.ASIC_CFG_SCRATCH) == 0, "EPROM resource released"


def test_eprom_data_reads_advance_through_the_open_page(driver, device):
    driver.write_csr(cr.ASIC_EEP_ADDR_CMD, 0x03 << 24 | 0x20000)  # READ_DATA, partition 1
    magic, file_dwords = (driver.read_csr(cr.ASIC_EEP_DATA) for _ in range(2))
    assert magic.to_bytes(4, "little") == b"APO="
    trailer = device.eprom.image.find(b"egamiAPO", 0x20000)
    assert file_dwords * 4 == trailer - 0x20000, "the file ends where the trailer starts"
    driver.write_csr(cr.ASIC_EEP_ADDR_CMD, 0)
    assert driver.read_csr(cr.ASIC_EEP_DATA) == 0, "no page open"
