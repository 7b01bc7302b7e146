"""The driver's whole life on the model: probe (init_one), link up, rmmod (remove_one).

The order and the CSRs follow Linux 6.12 hfi1 (init.c init_one -> hfi1_init_dd ->
hfi1_init -> sdma_start; remove_one -> shutdown_device). Every step that polls
the device has the driver's timeout; the ones that have none in the driver
(__cm_reset, the SDMA clean-up tasklet, sdma_freeze) fail the test here instead
of hanging. At the end no access may have touched an undeclared CSR.
"""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr
from testkit.hfi1.guest import HCMD_SUCCESS, GuestDriver
from testkit.hfi1.probe import DC8051_SOURCE, NUM_VLS, hfi1_init, load_to_link_up, probe, read_all_counters, remove_one


def test_probe_link_up_and_rmmod_touch_only_declared_csrs(device, host, driver):
    learnt = probe(driver)
    assert learnt["icode"] == 3, "functional simulator: no firmware loads, fake 8051"
    assert learnt["guid"] >> 40 == 0x001175
    assert learnt["port_type"] == 2, "platform config says FIXED"
    assert learnt["pio_blocks"] >= 3 * 32 + 102 + 2 * NUM_VLS * 18, "PIO pool too small for the fixed contexts"
    assert learnt["sdma_engines"] >= NUM_VLS and learnt["sdma_credits"] > 0
    assert learnt["firmware"]["sbus"] != 0 and all(learnt["firmware"]["pcie"])

    hfi1_init(driver, learnt)
    assert driver.polling_state_read == 0x20, "log_physical_state: anticipated Polling"
    driver.sdma_start()

    driver.service_interrupts(lambda: (
        all(state == "s20_idle" for state in driver.sdma_state.values()) and driver.host_messages & (1 << 7)))
    assert {source for source, _ in driver.events} >= {16 + e for e in range(learnt["sdma_engines"])} | {DC8051_SOURCE}
    driver.handle_link_up()
    assert driver.host_link_state == "INIT"
    assert driver.neighbor["guid"] == device.config.neighbour.guid and driver.neighbor["type"] == 0
    assert driver.link_width == {"tx": 4, "rx": 4}
    assert driver.ltp_rtt > 0

    read_all_counters(driver, learnt["sdma_engines"], learnt["rcv_contexts"])  # synth timer, link up
    code, _ = driver.do_8051_command(0x05, 0x1 << 40)  # another HCMD after the interrupt was acknowledged
    assert code == HCMD_SUCCESS

    remove_one(driver, learnt)
    stats = device.stats()
    assert stats["physical_state"] == "OFFLINE" and stats["logical_state"] == "DOWN"
    assert stats["undeclared_csr_accesses"] == 0, stats["undeclared_offsets"]
    assert device.regs.get(cr.ASIC_CFG_SCRATCH) == 0, "rmmod leaves no chip resource held"


def test_insmod_after_rmmod_probes_and_links_up_again(device, host):
    for load in range(2):
        driver = GuestDriver(device, host)
        learnt = load_to_link_up(driver)
        assert driver.host_link_state == "INIT", f"load {load}"
        remove_one(driver, learnt)
    assert device.stats()["undeclared_csr_accesses"] == 0
