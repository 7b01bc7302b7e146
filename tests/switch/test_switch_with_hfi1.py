"""Two hfi1 models (driven as the hfi1 driver drives them, testkit/hfi1/datapath.py)
cabled to a switch instead of to each other: LinkUp with the switch as neighbour,
and a UD packet from A's guest memory crosses the switch by the LFT into B's.

The models run in functional-simulator mode (small_config), where vfnic's 8051
completes SEND_LCB_IDLE_MSG without putting the message on the link (hfi1 takes
NeighborNormal at Armed itself in that mode), so the switch takes the same
shortcut (`neighbor_normal_at_armed`)."""
from __future__ import annotations

import contextlib

from devmodel.fabric import cable
from devmodel.hfi1 import Hfi1Device
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import RcvType
from devmodel.switch import Switch
from devmodel.switch.managed_port import SMA_IDLE_ARM
from devmodel.wire import opa_sma as w
from devmodel.worker import ManualScheduler
from testkit.hfi1.datapath import (
    HDRQ_ENTRY_DWORDS,
    DataPathDriver,
    Node,
    bring_up,
    pbc_for,
    settle,
    small_config,
    ud_packet,
)
from testkit.host import FakeMemory, Host, Msix, SimulatedTime
from testkit.switch_fabric import set_port_state_in_the_sma

SWITCH_GUID = 0x0011750000100000
UD_QP = 0x12  # kernel receive context 2 (test_fabric_scenarios.py)


@contextlib.contextmanager
def through_a_switch():
    scheduler = ManualScheduler()
    switch = Switch("sw0", SWITCH_GUID, 4, scheduler.worker("sw0"), neighbor_normal_at_armed=True)
    nodes = []
    with contextlib.ExitStack() as stack:
        for i, name in enumerate(("a", "b")):
            model = Hfi1Device(small_config(i + 1), worker=scheduler.worker(name), name=f"hfi1_{name}")
            stack.callback(model.close)
            cable(model.port, switch.ports[i + 1], timer=scheduler.timer(f"link{i}").after)
            irq, memory = Msix(scheduler), FakeMemory()
            host = Host(memory, irq, SimulatedTime(scheduler))
            model.attach(host)
            driver = DataPathDriver(model, host, memory)
            nodes.append(Node(name, model, memory, irq, driver, lid=i + 1))
        bring_up(nodes)
        yield scheduler, switch, nodes[0], nodes[1]


def test_hfi1_links_up_with_the_switch_as_its_neighbour():
    with through_a_switch() as (scheduler, switch, a, b):
        for n, node in ((1, a), (2, b)):
            assert node.driver.read_csr(cr.DC_DC8051_STS_REMOTE_NODE_TYPE) == 1, "a switch"
            assert node.driver.read_csr(cr.DC_DC8051_STS_REMOTE_GUID) == SWITCH_GUID
            assert node.driver.read_csr(cr.DC_DC8051_STS_REMOTE_PORT_NO) & 0xFF == n
            port = switch.ports[n].managed
            assert port.state == w.PortState.INIT and port.neighbor.guid == node.device.config.guid


def test_a_ud_packet_crosses_the_switch_from_a_to_b():
    with through_a_switch() as (scheduler, switch, a, b):
        for node in (a, b):
            assert node.driver.send_idle_sma(SMA_IDLE_ARM) == 2, "HCMD SEND_LCB_IDLE_MSG completes"
        settle(a, b)
        for port in (1, 2):
            assert set_port_state_in_the_sma(switch, port, w.PortState.ARMED) == 0
            assert set_port_state_in_the_sma(switch, port, w.PortState.ACTIVE) == 0
        lft = bytearray([0xFF] * 64)
        lft[a.lid], lft[b.lid] = 1, 2
        assert switch.sma.process(w.Method.SET, w.Attr.LINEAR_FWD, 1 << 24, bytes(lft), 1)[0] == 0

        payload = bytes(range(64))
        packet = ud_packet(dlid=b.lid, slid=a.lid, dest_qp=UD_QP, payload=payload)
        ctxt = 2
        tail = b.driver.hdrq_head[ctxt] // HDRQ_ENTRY_DWORDS
        a.driver.pio_copy(a.kernel_contexts[0], pbc_for(packet), packet)
        settle(a, b)
        rhf, header = b.driver.hdrq_entry(ctxt, tail)
        assert rhf["rcv_type"] == RcvType.IB and rhf["icrc_err"] == 0
        assert header == packet[:28]
        assert b.driver.eager_bytes(ctxt, rhf, len(payload)) == payload
        assert switch.forwarded == 1 and not switch.drops
        assert switch.ports[2].counters.port_xmit_pkts == 1
