"""RTL silicon (implementation code 0): the ASIC bring-up the 6.12 driver
performs, walked against the model -- firmware downloads authenticated by
the MISC block's RSA engine, the 8051's boot from authenticated code, link
negotiation with VerifyCap and ConfigLT across the fabric, SMA idle
messages to the neighbour, and the ways down (rmmod, a neighbour's planned
down, a lost peer in LNI, dc_shutdown/dc_start).

The driver's sequences are `testkit.hfi1.guest.GuestDriver`'s (the probe of
testkit/hfi1/probe.py with icode 0); every test ends with no undeclared CSR
touched."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1 import firmware, firmware_key
from devmodel.hfi1.config import ICODE_RTL_SILICON
from devmodel.hfi1.dc8051_interface import LinkError
from testkit.hfi1.chip import make_device, make_fabric, make_remote_pair
from testkit.hfi1.guest import HCMD_SUCCESS, REASON_REBOOT, DriverTimeout, GuestDriver, drive
from testkit.hfi1.probe import hfi1_init, probe, remove_one

AUTH_FAILED = cr.MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK
KEY_MISMATCH = cr.MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK
FAILED_LNI_CONFIGLT = LinkError.FAILED_LNI_CONFIGLT


@pytest.fixture
def silicon():
    device, host = make_device(icode=ICODE_RTL_SILICON)
    driver = GuestDriver(device, host)
    driver.icode = ICODE_RTL_SILICON  # what hfi1_init_dd reads from CCE_REVISION2
    yield device, host, driver
    device.close()


def load_to_init(driver: GuestDriver, timeout: float = 5.0) -> dict:
    """modprobe hfi1 on silicon, as far as port Init."""
    learnt = probe(driver)
    assert learnt.get("load_firmware", 0) == 0, driver.messages
    hfi1_init(driver, learnt)
    driver.sdma_start()
    drive([driver], lambda: driver.host_link_state == "INIT"
          and all(s == "s20_idle" for s in driver.sdma_state.values()), timeout, "port Init")
    return learnt


def dc8051(driver) -> tuple[int, int]:
    """(firmware field, physical state) of DC_DC8051_STS_CUR_STATE."""
    state = driver.read_csr(cr.DC_DC8051_STS_CUR_STATE)
    return state >> 16 & 0xFF, state & 0xFF


# -- the whole walk -------------------------------------------------------------------------

def test_probe_authenticates_both_images_boots_the_8051_and_the_port_reaches_init(silicon):
    device, _, driver = silicon
    learnt = load_to_init(driver)
    assert learnt["icode"] == 0
    assert driver.dc8051_ver == (1, 27, 0)
    assert "fabric serdes firmware authorization failed" not in driver.messages
    assert learnt["firmware"]["fabric"] == [firmware.FABRIC_SERDES_REVISION] * 4, "the authenticated image runs"
    assert learnt["firmware"]["sbus"] != 0
    assert learnt["thermal_init"] == 0 and driver.read_csr(cr.ASIC_CFG_SCRATCH) & 0x010000, "CR_THERM_INIT"
    assert (driver.read_csr(cr.ASIC_STS_THERM) >> 2) & 0x7FF == 4 * device.config.asic_temp_c
    assert driver.polling_state_read == 0x20
    assert driver.peer_capabilities["remote_tx_rate"] == 2, "the built-in partner reflects a 25G-only tx rate"
    assert driver.peer_capabilities["vl15buf"] == 0x110 and driver.peer_capabilities["crc"] == 3
    assert driver.peer_capabilities["active_rx_lanes"] == 0xF
    assert driver.link_width == {"tx": 4, "rx": 4}
    assert driver.neighbor["guid"] == device.config.neighbour.guid
    assert driver.ltp_rtt > 0, "HCMD_READ_LCB_CSR"
    assert not [m for m in driver.messages if "anticipated" in m or "unexpected" in m], driver.messages
    stats = device.stats()
    assert (stats["physical_state"], stats["logical_state"], stats["dc8051_firmware"]) == ("LINKUP", "INIT", "1.27.0")
    assert stats["undeclared_csr_accesses"] == 0, stats["undeclared_offsets"]


def test_three_reloads_with_the_port_up_each_reach_init_again(silicon):
    device, host, driver = silicon
    for load in range(3):
        learnt = load_to_init(driver)
        assert driver.host_link_state == "INIT", f"load {load}"
        remove_one(driver, learnt)  # goto_offline through 8051 host commands: no LCB access lock
        assert device.stats()["physical_state"] == "OFFLINE"
        driver = GuestDriver(device, host)
        driver.icode = ICODE_RTL_SILICON
    assert device.stats()["undeclared_csr_accesses"] == 0
    assert device.regs.get(cr.ASIC_CFG_SCRATCH) & 0xFF == 0
    assert driver.read_csr(cr.ASIC_STS_THERM), "initialised once per power-on: still polling after the FLRs"


def test_a_lone_port_goes_armed_and_active_with_the_built_in_partners_sma_answer(silicon):
    device, _, driver = silicon
    load_to_init(driver)
    driver.set_port_armed()
    drive([driver], lambda: driver.neighbor_normal, 2.0, "the partner's echo of SMA_IDLE_ARM")
    assert driver.set_port_active()
    assert device.stats()["logical_state"] == "ACTIVE"
    assert device.port.partner.messages_received[-1].data == 2 << 8 | 3, "SMA_IDLE_ACTIVE sent across"


def test_idle_messages_are_refused_before_linkup(silicon):
    _, _, driver = silicon
    driver.read_guid()
    driver.obtain_firmware()
    assert driver.load_8051_firmware(driver.fw[firmware.Image.DC8051]) == 0
    assert driver.send_idle_sma(1) != HCMD_SUCCESS


# -- the RSA engine -------------------------------------------------------------------------

def download_8051(driver: GuestDriver, data: bytes) -> int:
    """load_8051_firmware's steps up to and including run_rsa."""
    image = firmware.parse_image(data)
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0x1F)
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0x01)
    driver.load_security_variables(image)
    driver.write_csr(cr.MISC_CFG_FW_CTRL, 0)
    driver.write_8051(True, 0, image.payload)
    driver.write_csr(cr.MISC_CFG_FW_CTRL, cr.MISC_CFG_FW_CTRL_FW_8051_LOADED_SMASK)
    return driver.run_rsa("8051", image)


def other_key_image() -> bytes:
    n, d, _, _ = firmware_key.generate(bits=2048)
    return firmware.build_image(firmware.Image.DC8051, firmware.dc8051_payload(), modulus=n, private_exponent=d)


@pytest.fixture(scope="module")
def foreign_image() -> bytes:
    return other_key_image()


def flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


def test_a_good_8051_image_runs_done_and_authorizes_the_8051(silicon):
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    assert driver.rsa_status() == 2 and driver.read_csr(cr.MISC_ERR_STATUS) & (AUTH_FAILED | KEY_MISMATCH) == 0
    assert device.misc.dc8051_authorized


def test_a_flipped_payload_byte_fails_authentication_and_the_error_holds_until_init(silicon):
    device, _, driver = silicon
    driver.read_guid()
    bad = flipped(firmware.firmware_files()["hfi1_dc8051.fw"], 908 + 20)
    assert download_8051(driver, bad) != 0
    assert driver.messages[-1] == "8051 firmware authorization failed"
    assert driver.rsa_status() == 3 and not device.misc.dc8051_authorized
    driver.write_csr(cr.MISC_ERR_CLEAR, AUTH_FAILED)
    assert driver.read_csr(cr.MISC_ERR_STATUS) & AUTH_FAILED, "the RSA logic keeps the error high"
    driver.write_csr(cr.MISC_CFG_RSA_CMD, 1)  # INIT
    driver.write_csr(cr.MISC_ERR_CLEAR, AUTH_FAILED)
    assert not driver.read_csr(cr.MISC_ERR_STATUS) & AUTH_FAILED
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert dc8051(driver) == (0, 0), "no authenticated code: the 8051 does not run"


@pytest.mark.parametrize("offset", [0x14, 128 + 7, 388 + 100, 644 + 3, 900 + 1], ids=["header date", "modulus",
                                                                                      "signature", "r2", "mu"])
def test_a_flipped_byte_anywhere_the_chip_checks_fails(silicon, offset):
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, flipped(firmware.firmware_files()["hfi1_dc8051.fw"], offset)) != 0
    reported = driver.read_csr(cr.MISC_ERR_STATUS) & (AUTH_FAILED | KEY_MISMATCH)
    assert reported == (KEY_MISMATCH if 128 <= offset < 384 else AUTH_FAILED)


def test_another_key_gives_key_mismatch_which_holds_until_the_fused_key_is_loaded(silicon, foreign_image):
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, foreign_image) != 0
    assert driver.messages[-1] == "8051 firmware key mismatch"
    assert driver.read_csr(cr.MISC_ERR_STATUS) & (AUTH_FAILED | KEY_MISMATCH) == KEY_MISMATCH
    driver.write_csr(cr.MISC_CFG_RSA_CMD, 1)
    driver.write_csr(cr.MISC_ERR_CLEAR, KEY_MISMATCH)
    assert driver.read_csr(cr.MISC_ERR_STATUS) & KEY_MISMATCH, "INIT does not clear a key mismatch"
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    assert not driver.read_csr(cr.MISC_ERR_STATUS) & KEY_MISMATCH, "a matching key loaded, then cleared"


def test_start_without_init_is_ignored_and_a_short_download_fails(silicon):
    device, _, driver = silicon
    driver.read_guid()
    image = firmware.parse_image(firmware.firmware_files()["hfi1_dc8051.fw"])
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    driver.write_csr(cr.MISC_CFG_RSA_CMD, 2)
    assert driver.rsa_status() == 2 and device.misc.runs == 1, "START while DONE: ignored"
    driver.load_security_variables(image)  # a new session: nothing downloaded yet
    driver.write_8051(True, 0, image.payload[:32])
    assert driver.run_rsa("8051", image) != 0, "half the payload"


def test_a_fabric_rerun_with_the_8051_loaded_checks_the_sbus_download(silicon):
    """fabric_serdes_reset at every link start: FW_8051_LOADED is still set."""
    device, _, driver = silicon
    load_to_init(driver)
    assert driver.read_csr(cr.MISC_CFG_FW_CTRL) & cr.MISC_CFG_FW_CTRL_FW_8051_LOADED_SMASK
    runs = device.misc.runs
    driver.fabric_serdes_reset()
    assert device.misc.runs == runs + 1 and driver.rsa_status() == 2
    assert device.misc.dc8051_authorized and device.dc8051.running, "INIT and a fabric run keep the 8051"


# -- the 8051's boot ----------------------------------------------------------------------------

def test_the_8051_boots_only_authenticated_code_and_reports_its_version(silicon):
    device, _, driver = silicon
    driver.read_guid()
    assert dc8051(driver) == (0, 0)
    request = 0x01 << 8 | (0x0B << 40 | 4 << 32) << 16
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, request)
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, request | 1)
    assert device.settle() and not driver.read_csr(cr.DC_DC8051_CFG_HOST_CMD_1) & 1, "nobody answers"
    driver.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, 0)
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert dc8051(driver) == (0, 0), "booting"
    assert driver.wait_fm_ready(1.0) and dc8051(driver) == (0xA0, 0x90)
    assert driver.read_misc_status() == (1, 27, 0)


def test_a_core_reset_pulse_reboots_the_same_code_and_a_cram_reset_revokes_it(silicon):
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert driver.wait_fm_ready(1.0)
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0x1)  # _dc_shutdown
    assert dc8051(driver) == (0, 0)
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)  # _dc_start
    assert driver.wait_fm_ready(1.0), "timeout starting 8051 firmware"
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0x3)  # M8051W | CRAM
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert not driver.wait_fm_ready(0.05) and device.stats()["physical_state"] == "NO_FIRMWARE"


def test_a_code_ram_write_revokes_the_authorization(silicon):
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    driver.write_8051(True, 0x100, bytes(8))
    assert not device.misc.dc8051_authorized


def test_an_image_without_a_descriptor_runs_the_default_version(silicon):
    device, _, driver = silicon
    driver.read_guid()
    image = firmware.build_image(firmware.Image.DC8051, bytes(64))
    assert download_8051(driver, image) == 0
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert driver.wait_fm_ready(1.0) and driver.read_misc_status() == device.config.dc8051_default_version


# -- the SBus ---------------------------------------------------------------------------------

def test_a_broadcast_group_write_reaches_its_members_only(silicon):
    device, _, driver = silicon
    driver.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK)
    driver.set_serdes_broadcast(0xE1, 0xE4, (0x01, 0x02, 0x03))
    driver.sbus_request(0x04, 0xFD, 0x21, 0xE1 << 4 | 0xE4 << 16 | 1)  # ignores broadcasts
    driver.sbus_request(0xE4, 0x30, 0x21, 0x1234)
    assert [device.asic.sbus.get((r, 0x30)) for r in (0x01, 0x02, 0x03, 0x04, 0x28)] == [0x1234] * 3 + [None] * 2
    assert driver.sbus_read(0x02, 0x30, 0) == 0x1234


# -- two HFIs on one fabric ------------------------------------------------------------------

@pytest.fixture(params=["local", "remote"])
def pair(request):
    """Two HFIs on one cable in one process, or on a remote cable (each the
    one HFI of its `vfnic serve`, testkit/hfi1/chip.py make_remote_pair):
    every scenario holds on both."""
    if request.param == "local":
        devices, hosts = make_fabric(2, icode="silicon")
    else:
        devices, hosts, _ = make_remote_pair(icode="silicon")
    yield devices, [GuestDriver(device, host) for device, host in zip(devices, hosts)]
    for device in devices:
        device.close()


def bring_up(drivers, timeout: float = 10.0) -> list[dict]:
    learnt = []
    for driver in drivers:
        learnt.append(probe(driver))
        hfi1_init(driver, learnt[-1])
        driver.sdma_start()
    drive(drivers, lambda: all(d.host_link_state == "INIT" for d in drivers), timeout, "both ports Init")
    return learnt


def test_two_hfis_exchange_verifycap_and_each_learns_the_other(pair):
    devices, (a, b) = pair
    bring_up([a, b])
    for me, peer in ((a, b), (b, a)):
        assert me.neighbor["guid"] == peer.dev.config.guid
        assert me.peer_capabilities["remote_tx_rate"] == 2 and me.peer_capabilities["widths"] == 0xF
        assert me.peer_capabilities["device_id"] == 0x24F0 and me.peer_capabilities["device_rev"] == 0x11
        assert me.messages.count("8051: Link up") == 1
    for device in devices:
        assert device.stats()["undeclared_csr_accesses"] == 0


def test_armed_then_active_needs_the_neighbours_sma_arm_message(pair):
    devices, (a, b) = pair
    bring_up([a, b])
    a.set_port_armed()
    assert not a.set_port_active(), "b has not armed: NeighborNormal 0"
    b.set_port_armed()
    drive([a, b], lambda: a.neighbor_normal and b.neighbor_normal, 2.0, "each end's SMA_IDLE_ARM at the other")
    assert a.set_port_active() and b.set_port_active()
    assert [d.stats()["logical_state"] for d in devices] == ["ACTIVE", "ACTIVE"]


def test_an_idle_message_left_unread_by_a_link_down_does_not_hide_the_next_link_ups_arm(pair):
    """The peer's SMA_IDLE_ACTIVE reached a's LCB just before the link went
    dark and a's driver never read it. After the link trains again, a's
    first READ_LCB_IDLE_MSG must return b's new SMA_IDLE_ARM, not that stale
    message, or a never sees NeighborNormal and opafm cannot activate it."""
    devices, (a, b) = pair
    bring_up([a, b])
    devices[0].dc8051.idle_messages_received.append(2 << 8 | 3)  # SMA_IDLE_ACTIVE, unread
    link = devices[0].port.link
    link.take_down()
    drive([a, b], lambda: a.host_link_state == b.host_link_state == "POLL", 2.0, "both ends back in Polling")
    link.bring_up()
    drive([a, b], lambda: a.host_link_state == b.host_link_state == "INIT", 10.0, "both ports Init again")
    a.set_port_armed()
    b.set_port_armed()
    drive([a, b], lambda: a.neighbor_normal and b.neighbor_normal, 2.0, "each end's SMA_IDLE_ARM at the other")
    assert a.set_port_active() and b.set_port_active()


def test_rmmod_on_one_end_takes_the_other_down_with_the_reason_and_it_comes_back(pair):
    devices, (a, b) = pair
    learnt = bring_up([a, b])
    remove_one(a, learnt[0])  # hfi1_quiet_serdes: CHANGE_PHY_STATE(Offline | REBOOT << 8)
    drive([b], lambda: b.host_link_state == "POLL" and not b.link_work, 2.0, "b's link-down handling")
    assert (b.link_down_reason, b.neighbor_down_reason) == (0xB, REASON_REBOOT)
    a2 = GuestDriver(devices[0], a.host)
    learnt = probe(a2)
    hfi1_init(a2, learnt)
    a2.sdma_start()
    drive([a2, b], lambda: a2.host_link_state == b.host_link_state == "INIT", 10.0, "both ports Init again")


def test_a_link_dark_from_the_host_side_is_an_unexpected_down_and_both_retrain(pair):
    devices, (a, b) = pair
    bring_up([a, b])
    link = devices[0].port.link
    link.take_down()
    drive([a, b], lambda: a.host_link_state == b.host_link_state == "POLL", 2.0, "both ends back in Polling")
    assert a.link_down_reason == b.link_down_reason == 0xA, "LDR_LINK_TRANSFER_ACTIVE_LOW"
    link.bring_up()
    drive([a, b], lambda: a.host_link_state == b.host_link_state == "INIT", 10.0, "both ports Init again")
    assert a.messages.count("8051: Link up") == 2


def test_a_remote_cables_stream_break_is_an_unexpected_down_and_both_retrain_when_it_is_back():
    """The stream between the two `vfnic serve`s breaks: each 8051 sees its
    link go dark (no planned-down word), both drivers poll; the connecting
    side reconnects, the link trains again, and Armed/Active work as before."""
    devices, hosts, network = make_remote_pair(icode="silicon")
    a, b = (GuestDriver(device, host) for device, host in zip(devices, hosts))
    try:
        bring_up([a, b])
        network.cut("the network went away")
        drive([a, b], lambda: a.host_link_state == b.host_link_state == "POLL", 2.0, "both ends back in Polling")
        assert a.link_down_reason == b.link_down_reason == 0xA, "LDR_LINK_TRANSFER_ACTIVE_LOW on both sides"
        network.reconnect()
        drive([a, b], lambda: a.host_link_state == b.host_link_state == "INIT", 10.0, "both ports Init again")
        assert a.messages.count("8051: Link up") == b.messages.count("8051: Link up") == 2
        a.set_port_armed()
        b.set_port_armed()
        drive([a, b], lambda: a.neighbor_normal and b.neighbor_normal, 2.0, "each end's SMA_IDLE_ARM at the other")
        assert a.set_port_active() and b.set_port_active()
        assert [link["state"] for link in (d.stats()["port"]["link"] for d in devices)] == ["up", "up"]
    finally:
        for device in devices:
            device.close()


def test_a_peer_whose_8051_is_halted_goes_dark_without_a_word(pair):
    """Holding a's 8051 in reset drops the link with no planned-down message:
    b reports a link that went dark, not a linkdown idle message."""
    devices, (a, b) = pair
    bring_up([a, b])
    a.write_csr(cr.DC_DC8051_CFG_RST, cr.DC_DC8051_CFG_RST_M8051W_SMASK)
    drive([b], lambda: b.host_link_state == "POLL" and not b.link_work, 2.0, "b's link-down handling")
    assert b.link_down_reason == 0xA, "LDR_LINK_TRANSFER_ACTIVE_LOW, not 0xB (linkdown idle message)"


def test_a_memory_reset_without_holding_the_8051_is_ignored(silicon):
    """CRAM/DRAM reset bits take effect only with the core held (M8051W), as
    the driver always writes them: the running code stays authorized and a
    later core reset pulse boots it again."""
    device, _, driver = silicon
    driver.read_guid()
    assert download_8051(driver, firmware.firmware_files()["hfi1_dc8051.fw"]) == 0
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)
    assert driver.wait_fm_ready(1.0)
    driver.write_csr(cr.DC_DC8051_CFG_RST, cr.DC_DC8051_CFG_RST_CRAM_SMASK | cr.DC_DC8051_CFG_RST_DRAM_SMASK)
    driver.write_csr(cr.DC_DC8051_CFG_RST, cr.DC_DC8051_CFG_RST_M8051W_SMASK)  # _dc_shutdown
    driver.write_csr(cr.DC_DC8051_CFG_RST, 0)  # _dc_start
    assert driver.wait_fm_ready(1.0), "the code RAM survived: the 8051 boots again"


def test_losing_the_peer_in_configlt_fails_lni_and_the_driver_restarts_the_link(pair):
    devices, (a, b) = pair
    learnt = [probe(a), probe(b)]
    for driver, what in zip((a, b), learnt):
        hfi1_init(driver, what)
    devices[0].settle(1.0)
    with pytest.raises(DriverTimeout):  # a waits in VerifyCap: b's host never answers its frame
        drive([a], lambda: a.host_link_state == "INIT", 0.5)
    assert a.host_link_state == "GOING_UP" and devices[0].dc8051.link.state.name == "CONFIGLT"
    b.goto_offline()  # b's host gives up instead
    drive([a], lambda: a.link_errors & FAILED_LNI_CONFIGLT and a.host_link_state == "POLL", 2.0,
          "a's LNI failure and restart")
    assert devices[0].stats()["physical_state"] == "POLLING"


def test_the_driver_reads_lcb_csrs_through_the_8051_while_up(pair):
    devices, (a, b) = pair
    bring_up([a, b])
    devices[0].regs.set(cr.DC_LCB_ERR_INFO_SEQ_CRC_CNT, 0x1234_5678_9ABC_DEF0)
    assert a.read_lcb_csr(cr.DC_LCB_ERR_INFO_SEQ_CRC_CNT) == 0x1234_5678_9ABC_DEF0
    a.write_lcb_csr(cr.DC_LCB_ERR_INFO_SEQ_CRC_CNT, 0xFEDC_BA98_7654_3210)
    assert devices[0].regs.get(cr.DC_LCB_ERR_INFO_SEQ_CRC_CNT) == 0xFEDC_BA98_7654_3210

