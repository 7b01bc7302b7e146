"""The hfi1 model set up for scenario tests: a WFR with silicon-like
capacities and faster-than-silicon timings, attached to a fake host."""
from __future__ import annotations

from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1.config import ICODE_FUNCTIONAL_SIMULATOR
from testkit.host import FakeHost

#: silicon-like capacities, faster-than-silicon timings (still asynchronous)
FAST = dict(link_training_s=0.02, sdma_halt_s=0.0005, sdma_cleanup_s=0.0005, freeze_s=0.0005)
#: The control-plane scenarios walk the functional-simulator probe (no
#: firmware loads, the fake 8051); test_silicon passes icode=0 for silicon.
SIMULATOR = dict(icode=ICODE_FUNCTIONAL_SIMULATOR)


def make_device(**overrides) -> tuple[Hfi1Device, FakeHost]:
    device = Hfi1Device(ChipConfig(**{**FAST, **SIMULATOR, **overrides}))
    host = FakeHost()
    device.attach(host)
    return device, host
