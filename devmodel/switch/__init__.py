"""An Omni-Path switch with no guest behind it: its agents answer the SM in the model.

    devmodel/switch/device.py        Switch: N ports + management port 0, ingress/egress events
    devmodel/switch/port.py          SwitchPort: a link end with inbound and egress queues
    devmodel/switch/managed_port.py  ManagedPort: PortInfo, tables, DOWN/INIT/ARMED/ACTIVE
    devmodel/switch/sma.py           SubnetManagementAgent: the attribute table (Get/Set, Aggregate)
    devmodel/switch/smi.py           directed-route rules (smi.h), drop reasons
    devmodel/switch/forwarding.py    ForwardingTables: LFT, MFT, SCtoSC
    devmodel/switch/pma.py           PerformanceAgent, PortCounters
    devmodel/switch/management.py    request MAD -> response MAD (shared with simulated HFIs)
    devmodel/switch/mad_packet.py    a MAD in a 9B packet

See docs/switch.md.
"""
from .device import Drop, Switch
from .forwarding import ForwardingTables
from .managed_port import ManagedPort
from .port import SwitchPort

__all__ = ["Drop", "ForwardingTables", "ManagedPort", "Switch", "SwitchPort"]
