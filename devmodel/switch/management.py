"""What a node does with an SMP or a GMP addressed to it: the agents' side.

    request MAD --> SMA or PMA (by class) --> response MAD (GetResp, status, D bit on DR)

Shared by the switch (its management port 0) and simulated HFIs: the MAD
layout is the same, only the agents' answers differ.
"""
from __future__ import annotations

from devmodel.wire import opa
from devmodel.wire import opa_sma as w

from .pma import PerformanceAgent
from .sma import SubnetManagementAgent

METHOD, STATUS, ATTR_ID, ATTR_MOD = 3, 4, 16, 20


def _data_area(mad: bytearray) -> tuple[int, int, int]:
    """(start, end as received, the most the class holds) of `mad`'s data."""
    if mad[1] == opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE:
        start, room = w.SMP_DR_HEADER_BYTES, w.SMP_DR_DATA_BYTES
    elif mad[1] == opa.MGMT_CLASS_SUBN_LID_ROUTED:
        start, room = w.SMP_HEADER_BYTES, w.SMP_LID_DATA_BYTES
    else:
        start, room = w.PMA_HEADER_BYTES, w.PMA_DATA_BYTES
    return start, min(len(mad), start + room), room


def answer(mad: bytearray, in_port: int, sma: SubnetManagementAgent, pma: PerformanceAgent | None) -> bytearray | None:
    """The response to `mad` (changed in place and returned), or None if the
    request gets no answer (a response, a trap repress, a class we do not serve)."""
    if mad[0] != opa.OPA_MGMT_BASE_VERSION:
        return None
    method = mad[METHOD]
    if method & 0x80 or method == w.Method.TRAP_REPRESS:
        return None
    mgmt_class = mad[1]
    start, end, room = _data_area(mad)
    if end < start:
        return None
    attr_id = int.from_bytes(mad[ATTR_ID:ATTR_ID + 2], "big")
    am = int.from_bytes(mad[ATTR_MOD:ATTR_MOD + 4], "big")
    data = bytes(mad[start:end])
    if mad[2] != 0x80:
        status, reply = w.Status.BAD_VERSION, data
    elif mgmt_class in (opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE, opa.MGMT_CLASS_SUBN_LID_ROUTED):
        status, reply = sma.process(method, attr_id, am, data, in_port, room)
    elif mgmt_class == opa.MGMT_CLASS_PERF_MGMT and pma is not None:
        status, reply = pma.process(method, attr_id, am, data)
    else:
        return None
    mad[METHOD] = w.Method.GET_RESP
    direction = w.DR_DIRECTION if mgmt_class == opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE else 0
    mad[STATUS:STATUS + 2] = (status | direction).to_bytes(2, "big")
    mad[start:end] = reply  # grows a header-only Get by the attribute
    mad.extend(bytes(-len(mad) % 8))  # whole 8-byte units, as hfi1's SMA rounds its responses
    return mad


def trap_mad(tid: int, trap_num: int, issuer_lid: int, producer: int, data: bytes) -> bytes:
    """A LID-routed Trap(Notice) SMP (no data beyond the notice)."""
    header = opa.MadHeader.build(dict(base_version=0x80, mgmt_class=opa.MGMT_CLASS_SUBN_LID_ROUTED, class_version=0x80,
                                      method=w.Method.TRAP, status=0, class_specific=0, tid=tid,
                                      attr_id=w.Attr.NOTICE, attr_mod=0))
    notice = w.Notice.build(dict(generic_type=w.NOTICE_GENERIC | w.NOTICE_TYPE_URGENT, producer_type=producer,
                                 trap_num=trap_num, toggle_count=0, issuer_lid=issuer_lid, reserved=0,
                                 issuer_gid=bytes(16), data=data.ljust(64, b"\0")))
    return (header + bytes(8) + notice).ljust(w.SMP_BYTES, b"\0")
