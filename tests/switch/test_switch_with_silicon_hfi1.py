"""A silicon-mode hfi1 (RTL silicon, the 8051's real link negotiation) cabled to a
switch: VerifyCap and ConfigLT with the switch's link layer, then the SMA idle
message handshake in both directions -- the HFI's Armed gives the switch port
NeighborNormal, the switch port's Armed gives the HFI NeighborNormal -- so both
ends go Active without any shortcut."""
from __future__ import annotations

import pytest

from devmodel.fabric import cable
from devmodel.hfi1 import Hfi1Device
from devmodel.hfi1.config import ChipConfig, make_guid
from devmodel.switch import Switch
from devmodel.wire import opa_sma as w
from devmodel.worker import ManualScheduler
from testkit.hfi1.guest import GuestDriver, drive
from testkit.hfi1.probe import hfi1_init, probe
from testkit.host import FakeHost
from testkit.switch_fabric import set_port_state_in_the_sma

SWITCH_GUID = 0x0011750000100000


@pytest.fixture
def hfi_on_a_switch():
    engines = ManualScheduler()
    device = Hfi1Device(ChipConfig(guid=make_guid(1), neighbour=None, icode=0), worker=engines.worker("hfi1"))
    switch = Switch("sw0", SWITCH_GUID, 2, engines.worker("sw0"))
    host = FakeHost(engines)
    device.attach(host)
    cable(device.port, switch.ports[1], timer=engines.timer("link").after)
    driver = GuestDriver(device, host)
    driver.icode = 0
    yield device, switch, driver
    device.close()


def test_silicon_hfi1_and_switch_port_go_active_through_each_others_idle_messages(hfi_on_a_switch):
    device, switch, driver = hfi_on_a_switch
    learnt = probe(driver)
    hfi1_init(driver, learnt)
    driver.sdma_start()
    drive([driver], lambda: driver.host_link_state == "INIT", 10.0, "port Init with the switch as neighbour")
    assert driver.neighbor["guid"] == SWITCH_GUID and driver.mgmt_allowed == 1
    port = switch.ports[1].managed
    assert port.state == w.PortState.INIT and port.neighbor.guid == device.config.guid

    driver.set_port_armed()
    assert device.worker.settle(0.1) and switch.worker.settle(0.1)
    assert port.neighbor_normal, "the HFI's SMA_IDLE_ARM reached the switch port"
    assert not driver.set_port_active(), "the switch port has not armed: the HFI's NeighborNormal is 0"
    assert set_port_state_in_the_sma(switch, 1, w.PortState.ARMED) == 0
    drive([driver], lambda: driver.neighbor_normal, 2.0, "the switch's SMA_IDLE_ARM at the HFI")
    assert driver.set_port_active()
    assert set_port_state_in_the_sma(switch, 1, w.PortState.ACTIVE) == 0
    assert device.stats()["logical_state"] == "ACTIVE" and port.state == w.PortState.ACTIVE
    assert device.stats()["undeclared_csr_accesses"] == 0
