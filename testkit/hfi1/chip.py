"""The hfi1 model set up for scenario tests: a WFR with silicon-like
capacities and faster-than-silicon timings, on a ManualScheduler of its
own, attached to a fake host whose time is that scheduler's."""
from __future__ import annotations

from devmodel.fabric import CableRole
from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1.config import ICODE_FUNCTIONAL_SIMULATOR
from devmodel.worker import ManualScheduler
from testkit.host import FakeHost
from testkit.remote_cable import ManualNetwork

#: silicon-like capacities, faster-than-silicon timings (still chip events, not immediate)
FAST = dict(link_training_s=0.02, sdma_halt_s=0.0005, sdma_cleanup_s=0.0005, freeze_s=0.0005)
#: The control-plane scenarios walk the functional-simulator probe (no
#: firmware loads, the fake 8051); test_silicon passes icode=0 for silicon.
SIMULATOR = dict(icode=ICODE_FUNCTIONAL_SIMULATOR)


def make_device(**overrides) -> tuple[Hfi1Device, FakeHost]:
    scheduler = ManualScheduler()
    device = Hfi1Device(ChipConfig(**{**FAST, **SIMULATOR, **overrides}), worker=scheduler.worker("hfi1"))
    host = FakeHost(scheduler)
    device.attach(host)
    return device, host


def make_fabric(count: int = 2, **options) -> tuple[list[Hfi1Device], list[FakeHost]]:
    """`Hfi1Device.fabric(count, **options)` (what `vfnic serve` builds) on
    one ManualScheduler, each device attached to a fake host."""
    scheduler = ManualScheduler()
    devices = Hfi1Device.fabric(count, scheduler=scheduler, **options)
    hosts = [FakeHost(scheduler) for _ in devices]
    for device, host in zip(devices, hosts):
        device.attach(host)
    return devices, hosts


def make_remote_pair(**options) -> tuple[list[Hfi1Device], list[FakeHost], ManualNetwork]:
    """Two HFIs as two `vfnic serve --cable-listen/--cable-connect` build
    them (`Hfi1Device.remote_cabled`), their remote cable's stream a
    ManualNetwork's (testkit/remote_cable.py), all on one ManualScheduler."""
    scheduler = ManualScheduler()
    network = ManualNetwork(scheduler)
    devices = []
    for role in (CableRole.LISTEN, CableRole.CONNECT):
        (device,), _ = Hfi1Device.remote_cabled(role, ("cable", 1), network.opener, scheduler=scheduler, **options)
        devices.append(device)
    hosts = [FakeHost(scheduler) for _ in devices]
    for device, host in zip(devices, hosts):
        device.attach(host)
    scheduler.run()  # the hellos
    return devices, hosts, network
