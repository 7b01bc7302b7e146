"""The performance management agent: per-port counters and the PMA's MADs.

    GMP (class 0x04, QP1) --> Get ClassPortInfo | Get DataPortCounters | Get ErrorPortCounters
                              | Get/Set ErrorInfo | Set ClearPortStatus
                              | Get PortStatus (HFIs only) --> (status, reply data)

Counters are plain integers the port's owner bumps as packets pass
(`PortCounters`); the replies lay them out as hfi1's mad.c does
(`opa_port_data_counters_msg`, `opa_port_error_counters64_msg`). Data
counters count flits (8 bytes), as the OPA PMA does.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from devmodel.wire import opa_sma as w


@dataclass
class PortCounters:
    port_xmit_data: int = 0
    port_rcv_data: int = 0
    port_xmit_pkts: int = 0
    port_rcv_pkts: int = 0
    port_multicast_xmit_pkts: int = 0
    port_multicast_rcv_pkts: int = 0
    port_xmit_wait: int = 0
    port_rcv_constraint_errors: int = 0
    port_rcv_switch_relay_errors: int = 0
    port_xmit_discards: int = 0
    port_rcv_errors: int = 0
    link_downed: int = 0

    def transmitted(self, nbytes: int, multicast: bool = False) -> None:
        self.port_xmit_pkts += 1
        self.port_xmit_data += (nbytes + 7) // 8
        self.port_multicast_xmit_pkts += multicast

    def received(self, nbytes: int, multicast: bool = False) -> None:
        self.port_rcv_pkts += 1
        self.port_rcv_data += (nbytes + 7) // 8
        self.port_multicast_rcv_pkts += multicast

    def get(self, name: str) -> int:
        return getattr(self, name, 0)

    def error_summary(self) -> int:
        return sum(self.get(name) for name in w.ERROR_COUNTER_NAMES) + self.link_downed

    def clear(self, select: int) -> None:
        for f in fields(self):
            if w.COUNTER_SELECT.get(f.name, 0) & select:
                setattr(self, f.name, 0)


#: DataPortCounters.LinkQualityIndicator: 5, excellent (an emulated cable has no bit errors; opafm's PM
#: counts 0 as a link-integrity problem)
LINK_QUALITY_EXCELLENT = 5


class PerformanceAgent:
    """`is_hfi`: an HFI's agent (one port) also answers PortStatus, as hfi1's
    does and opafm's PM asks of every HFI; a switch's does not."""

    def __init__(self, counters: dict[int, PortCounters], is_hfi: bool = False):
        self.counters = counters  # port number -> counters
        self.table = {
            (w.Method.GET, w.PmaAttr.CLASS_PORT_INFO): self._class_port_info,
            (w.Method.GET, w.PmaAttr.DATA_PORT_COUNTERS): self._data_counters,
            (w.Method.GET, w.PmaAttr.ERROR_PORT_COUNTERS): self._error_counters,
            (w.Method.SET, w.PmaAttr.CLEAR_PORT_STATUS): self._clear,
            (w.Method.GET, w.PmaAttr.ERROR_INFO): self._error_info,
            (w.Method.SET, w.PmaAttr.ERROR_INFO): self._error_info,
        }
        if is_hfi:
            self.table[(w.Method.GET, w.PmaAttr.PORT_STATUS)] = self._port_status
        self.requests = 0

    def process(self, method: int, attr_id: int, am: int, data: bytes) -> tuple[int, bytes]:
        self.requests += 1
        handler = self.table.get((method, attr_id))
        if handler is None:
            return w.Status.UNSUPPORTED_METHOD_ATTR, bytes(len(data))
        try:
            status, reply = handler(am, data)
        except (ValueError, IndexError):
            status, reply = w.Status.INVALID_FIELD, b""
        return status, reply.ljust(len(data), b"\0")  # a short (header-only) Get gets the whole attribute

    def _selected(self, mask: bytes) -> list[int] | None:
        ports = w.port_select(mask)
        if not ports or any(p not in self.counters for p in ports):
            return None
        return ports

    def _class_port_info(self, am: int, data: bytes) -> tuple[int, bytes]:
        return 0, w.ClassPortInfo.build(dict(
            base_version=0x80, class_version=0x80, cap_mask=0, cap_mask2_resp_time=18, redirect_gid=bytes(16),
            redirect_tc_fl=0, redirect_lid=0, redirect_sl_qp=0, redirect_qkey=0, trap_gid=bytes(16), trap_tc_fl=0,
            trap_lid=0, trap_hl_qp=0, trap_qkey=0, trap_pkey=0, redirect_pkey=0, trap_sl_rsvd=0, reserved=bytes(3)))

    def _per_port(self, data: bytes, record: Callable[[int, PortCounters, int], bytes]) -> tuple[int, bytes]:
        """A PortSelect request answered with one `record(port, counters, vls)`
        per selected port after the echoed selection."""
        request = w.PORT_SELECT.parse(data)
        ports = self._selected(request["port_select_mask"])
        if ports is None:
            return w.Status.INVALID_FIELD, data
        vls = bin(request["select_mask"]).count("1")
        out = bytearray(data[:w.PORT_SELECT.size])
        for port in ports:
            out += record(port, self.counters[port], vls)
        return 0, bytes(out)

    def _data_counters(self, am: int, data: bytes) -> tuple[int, bytes]:
        def record(port: int, counters: PortCounters, vls: int) -> bytes:
            values = [counters.get(n) for n in w.DATA_COUNTER_NAMES[:-1]] + [counters.error_summary()]
            return (w.PORT_DATA_COUNTERS.pack(port, bytes(3), LINK_QUALITY_EXCELLENT, *values)
                    + bytes(w.VL_DATA_COUNTER_BYTES * vls))
        return self._per_port(data, record)

    def _error_counters(self, am: int, data: bytes) -> tuple[int, bytes]:
        def record(port: int, counters: PortCounters, vls: int) -> bytes:
            return (w.PORT_ERROR_COUNTERS.pack(port, bytes(7), *[counters.get(n) for n in w.ERROR_COUNTER_NAMES],
                                               0, counters.link_downed & 0xFFFFFFFF, 0, bytes(7))
                    + bytes(w.VL_ERROR_COUNTER_BYTES * vls))
        return self._per_port(data, record)

    def _port_status(self, am: int, data: bytes) -> tuple[int, bytes]:
        """hfi1's pma_get_opa_portstatus: one port (AM[31:24] = 1), the
        receiving one or named, its counters and one zeroed record per VL
        selected (per-VL counters are not kept)."""
        request = w.PORT_STATUS_REQUEST.parse(data)
        mask, port = request["vl_select_mask"], request["port_num"]
        (own,) = self.counters
        if am >> 24 != 1 or port not in (0, own) or mask & ~w.PORT_STATUS_VL_MASK:
            return w.Status.INVALID_FIELD, data
        counters = self.counters[own]
        status = w.PORT_STATUS.pack(own, bytes(3), mask, *[counters.get(n) for n in w.DATA_COUNTER_NAMES[:-1]],
                                    *[counters.get(n) for n in w.ERROR_COUNTER_NAMES], 0,
                                    counters.link_downed & 0xFFFFFFFF, 0, LINK_QUALITY_EXCELLENT, bytes(6))
        return 0, status + bytes(w.VL_PORT_STATUS_BYTES * bin(mask).count("1"))

    def _clear(self, am: int, data: bytes) -> tuple[int, bytes]:
        request = w.CLEAR_PORT_STATUS.parse(data)
        ports = self._selected(request["port_select_mask"])
        if ports is None:
            return w.Status.INVALID_FIELD, data
        for port in ports:
            self.counters[port].clear(request["counter_select_mask"])
        return 0, data[:w.CLEAR_PORT_STATUS.size]

    def _error_info(self, am: int, data: bytes) -> tuple[int, bytes]:
        return self._per_port(data, lambda port, _counters, _vls: bytes([port]) + bytes(w.PORT_ERROR_INFO_BYTES - 1))
