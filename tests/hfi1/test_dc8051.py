"""The 8051: host-command mailbox, data RAM, physical/logical link state, notifications."""
from __future__ import annotations

import pytest

from devmodel.fabric import NodeType
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.config import Neighbour, make_guid
from testkit.hfi1.dc8051 import (
    CHANGE_PHY_STATE,
    GENERAL,
    HOST_REQ_DONE,
    LINK_GOING_DOWN,
    LINKUP_ACHIEVED,
    LOAD_CONFIG_DATA,
    READ_CONFIG_DATA,
    SEND_LCB_IDLE_MSG,
    bring_link_up,
    logical,
    phys,
)
from testkit.hfi1.guest import HCMD_SUCCESS


@pytest.fixture
def running(driver):
    """Probe's first steps: the DC leaves reset (read_guid)."""
    driver.read_guid()
    return driver


def test_dc_held_in_reset_until_the_driver_releases_it(driver):
    assert driver.read_csr(cr.CCE_DC_CTRL) == 1
    assert driver.read_csr(cr.DC_DC8051_STS_CUR_STATE) == 0, "no firmware running"
    request = LOAD_CONFIG_DATA << 8 | (0x06 << 40 | GENERAL << 32 | 0xF) << 16
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, request)
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, request | cr.DC_DC8051_CFG_HOST_CMD_0_REQ_NEW_SMASK)
    assert driver.dev.settle() and not driver.read_csr(cr.DC_DC8051_CFG_HOST_CMD_1) & 1, "nobody answers"
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, 0)
    driver.read_guid()
    assert driver.base_guid == driver.dev.config.guid
    assert driver.read_csr(cr.DC_DC8051_STS_CUR_STATE) == 0xA0 << 16 | 0x90, "firmware ready, Offline"
    assert logical(driver) == 1


def test_host_command_completes_with_success_and_the_next_write_retires_completed(running):
    code, response = running.do_8051_command(READ_CONFIG_DATA, 0x0B << 40 | GENERAL << 32)
    assert code == HCMD_SUCCESS and response == 0
    assert not running.read_csr(cr.DC_DC8051_CFG_HOST_CMD_1) & 1, "REQ_NEW=0 dropped COMPLETED"
    running.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, 0x03 << 8 | 0x20 << 16)  # staged, REQ_NEW still 0
    assert not running.read_csr(cr.DC_DC8051_CFG_HOST_CMD_1) & 1
    assert phys(running) == 0x90, "a staged command does not run"


def test_unknown_host_command_is_answered_but_not_with_success(running):
    code, _ = running.do_8051_command(0x42, 0)
    assert code != HCMD_SUCCESS


def test_load_config_data_lands_in_ram_where_read_8051_config_reads_it(running):
    writes = {(0x06, GENERAL): 0x0201000F, (0x0B, GENERAL): 0x00010000, (0x09, GENERAL): 0x8,
              (0x00, 2): 0xCAFE0002, (0x05, 3): 0x12345678}
    for (field, lane), value in writes.items():
        assert running.load_8051_config(field, lane, value) == HCMD_SUCCESS
    for (field, lane), value in writes.items():
        assert running.read_8051_config(field, lane) == value
    assert running.read_8051_config(0x07, GENERAL) == 0, "neighbouring fields untouched"


def test_load_config_data_refuses_a_field_outside_the_ram_map(running):
    assert running.load_8051_config(0x17, GENERAL, 1) != HCMD_SUCCESS
    assert running.load_8051_config(0x08, 0, 1) != HCMD_SUCCESS


def test_polling_then_link_up_raises_the_8051_interrupt_through_the_map(running, host, device):
    running.remap_intr(250, 3)  # route the DC 8051 source elsewhere than the general vector
    running.set_intr_bits(250, 250, True)
    running.write_csr(cr.DC_DC8051_ERR_EN, (1 << 64) - 1)
    running.start_link()
    assert running.polling_state_read == 0x20
    host.irq.wait_for(3)
    assert host.irq.triggered == [3]
    assert phys(running) == 0x50 and logical(running) == 2
    assert running.read_csr(cr.DC_DC8051_ERR_FLG) & cr.DC_DC8051_ERR_FLG_SET_BY_8051_SMASK
    info = running.read_csr(cr.DC_DC8051_DBG_ERR_INFO_SET_BY_8051)
    assert info & LINKUP_ACHIEVED
    peer = device.config.neighbour
    assert running.read_csr(cr.DC_DC8051_STS_REMOTE_GUID) == peer.guid
    assert running.read_csr(cr.DC_DC8051_STS_REMOTE_PORT_NO) == peer.port_no
    assert running.read_csr(cr.DC_LCB_STS_LINK_TRANSFER_ACTIVE) == 1


def test_link_up_host_message_survives_commands_until_acknowledged(running, host):
    bring_link_up(running, host)
    assert running.host_messages & LINKUP_ACHIEVED
    running.do_8051_command(0x05, 0x1 << 40)  # acknowledged (ERR_CLR written): the next command retires it
    info = running.read_csr(cr.DC_DC8051_DBG_ERR_INFO_SET_BY_8051)
    assert not info & LINKUP_ACHIEVED and info & HOST_REQ_DONE


def test_an_unacknowledged_link_up_is_not_lost_to_a_concurrent_command(running, host, device):
    running.write_csr(cr.DC_DC8051_ERR_EN, (1 << 64) - 1)
    running.start_link()
    device.settle()
    running.do_8051_command(0x05, 0x1 << 40)  # the counters timer, before the handler ran
    assert running.read_csr(cr.DC_DC8051_DBG_ERR_INFO_SET_BY_8051) & LINKUP_ACHIEVED


def test_handle_link_up_reads_four_lanes_and_the_neighbour(running, host):
    bring_link_up(running, host)
    running.handle_link_up()
    assert running.link_width == {"tx": 4, "rx": 4}
    assert running.neighbor["type"] == 0 and running.neighbor["fm_security"] == 1


def test_driver_moves_logical_state_to_armed_then_active_and_nothing_else(running, host):
    bring_link_up(running, host)
    port = running.read_csr(cr.DCC_CFG_PORT_CONFIG)
    running.write_csr(cr.DCC_CFG_PORT_CONFIG, port & ~(7 << 48) | 4 << 48)  # Init -> Active: refused
    assert logical(running) == 2
    running.write_csr(cr.DCC_CFG_PORT_CONFIG, port & ~(7 << 48) | 3 << 48 | 6 << 32)
    assert logical(running) == 3
    assert (running.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 32) & 7 == 6, "the rest of the register is storage"
    running.write_csr(cr.DCC_CFG_PORT_CONFIG, port & ~(7 << 48) | 4 << 48)
    assert logical(running) == 4
    assert running.do_8051_command(SEND_LCB_IDLE_MSG, 2 << 8 | 3)[0] == HCMD_SUCCESS  # SMA_IDLE_ACTIVE


def test_host_requested_offline_is_immediate_and_records_why(running, host):
    bring_link_up(running, host)
    running.host_link_state = "INIT"
    assert running.do_8051_command(CHANGE_PHY_STATE, 0x90)[0] == HCMD_SUCCESS
    assert phys(running) == 0x90 and logical(running) == 1
    assert running.read_8051_config(0x16, GENERAL) & 0xFF == 0x0C  # LDR_RECEIVED_HOST_OFFLINE_REQ
    assert running.read_csr(cr.DC_LCB_STS_LINK_TRANSFER_ACTIVE) == 0


def test_losing_the_neighbour_posts_link_going_down(running, host, device):
    bring_link_up(running, host)
    device.hardware_event(device.dc8051.unplug)
    host.irq.wait_for(0, 2)
    running.general_interrupt()
    assert running.host_messages & LINK_GOING_DOWN
    assert phys(running) == 0x90 and running.read_8051_config(0x16, GENERAL) & 0xFF == 0x0A


def test_without_a_neighbour_polling_lasts(driver, device, host):
    device.port.unplug()  # no cable
    driver.read_guid()
    driver.start_link()
    assert device.settle(), "the training event ran"
    assert phys(driver) == 0x20 and host.irq.triggered == []
    device.hardware_event(lambda: device.dc8051.plug(Neighbour(guid=make_guid(7), node_type=NodeType.SWITCH)))
    driver.write_csr(cr.DC_DC8051_ERR_EN, (1 << 64) - 1)
    driver.set_intr_bits(250, 250, True)
    host.irq.wait_for(0)
    assert phys(driver) == 0x50
    assert driver.read_8051_config(0x0D, GENERAL) >> 23 & 1, "a switch says whether management is allowed"


def test_8051_reset_stops_commands_and_release_boots_offline(running):
    running.write_csr(cr.DC_DC8051_CFG_RST, cr.DC_DC8051_CFG_RST_M8051W_SMASK)  # dc_shutdown
    assert running.read_csr(cr.DC_DC8051_STS_CUR_STATE) == 0
    running.write_csr(cr.DC_DC8051_CFG_RST, 0)  # dc_start
    assert phys(running) == 0x90
    assert running.do_8051_command(READ_CONFIG_DATA, 0x06 << 40 | GENERAL << 32)[0] == HCMD_SUCCESS
