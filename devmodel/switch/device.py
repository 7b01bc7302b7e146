"""An Omni-Path edge switch with no guest: N ports, a management port 0, its agents.

    port k --inbound--> ingress (bounded batch, one event)
                          |  SC15 QP0 SMP, directed route --> smi (receive/forward/send)
                          |        +-- to us: SMA --> response --> smi.send --> egress
                          |        +-- onward: egress of InitialPath/ReturnPath port
                          |  LID-routed to our LID (LFT says 0): SMP -> SMA, GMP -> PMA
                          |  9B/16B by DLID: LFT (unicast), MFT (multicast); SC via SCtoSC
                          v
                        egress queue of port j --pump--> link (while the peer has room)

    link up/down, idle messages --> ManagedPort state machine --> Trap 128 to the SM LID,
                                                                 SMA idle messages to the neighbour

Every piece of work is an event on the switch's worker (`devmodel/worker.py`)
and runs under the switch's lock; what leaves the switch (link calls) is
collected and done after the lock is released, so the switch never holds its
lock while another device's code runs. Every packet the switch does not
forward or answer is counted by reason (`drops`); an exception inside the
model is caught, logged and counted (`internal_errors`), never raised into
the worker.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from common.ratelog import flush, limited
from devmodel.fabric import LinkMessage, MessageKind, Packet, PortIdentity
from devmodel.wire import opa
from devmodel.wire import opa_sma as w

from . import smi
from .forwarding import MULTICAST_9B, MULTICAST_16B, PERMISSIVE_9B, ForwardingTables
from .mad_packet import build_mad_packet, parse_mad_packet, reply_packet
from .managed_port import ManagedPort
from .management import answer, trap_mad
from .pma import PerformanceAgent, PortCounters
from .port import SwitchPort
from .sma import SubnetManagementAgent

INGRESS_BATCH = 64
#: switch hops a packet may take before it is dropped: what a real switch's packet lifetime
#: (SwitchInfo.LifeTimeValue, HOQLife) does to a packet caught in a routing loop
MAX_SWITCH_HOPS = 64


class ForwardedPacket(Packet):
    """A packet a switch forwarded: it counts the switches it crossed."""

    __slots__ = ("hops",)

    def __init__(self, data: bytes, sc: int, bypass: bool, sealed: bool, hops: int):
        super().__init__(data, sc, bypass=bypass, sealed=sealed)
        self.hops = hops


class Drop:
    UNPROGRAMMED = "unprogrammed DLID"
    NO_PORT = "LFT/MFT names a port the switch does not have"
    LOOP = "egress port is the ingress port"
    LIFETIME = "packet lifetime exceeded (a routing loop)"
    NOT_ACTIVE = "data packet on a port that is not Armed or Active"
    DEAD_PORT = "egress port is down"
    MALFORMED = "malformed packet"
    BAD_SMP = "malformed SMP"
    UNSERVED = "management class the switch does not serve"
    UNASKED = "a response or TrapRepress the switch did not wait for"
    TRAP_UNROUTABLE = "trap with no route to the SM"
    SMP_NOT_VL15 = "SMP on a data SC"


class Switch:
    node_type = w.NodeTypeCode.SWITCH
    #: what `vfnic serve` calls it (registry.FabricNode)
    kind = "switch"

    def __init__(self, name: str, guid: int, num_ports: int, worker, description: str | None = None,
                 neighbor_normal_at_armed: bool = False):
        if not 1 <= num_ports <= 254:
            raise ValueError("a switch has 1..254 ports")
        self.name = name
        self.guid = guid
        self.num_ports = num_ports
        self.device_id = 0x2718
        self.description = (description or f"vfnic switch {name}").encode()
        self.worker = worker
        self.log = logging.getLogger(f"vfnic.switch.{name}")
        self._lock = threading.Lock()
        self._outbox: list[Callable[[], None]] = []
        self.port0 = ManagedPort(0, self)
        self.port0.link_up(PortIdentity(guid=guid, port_no=0))  # the management port is always up,
        self.port0.neighbor_normal = True  # and has no neighbour whose idle message it would wait for
        self.ports: dict[int, SwitchPort] = {n: SwitchPort(self, n) for n in range(1, num_ports + 1)}
        for port in self.ports.values():
            port.managed.normal_at_armed = neighbor_normal_at_armed
        self.counters0 = PortCounters()
        self.forwarding = ForwardingTables(num_ports)
        self.sma = SubnetManagementAgent(self, is_switch=True, forwarding=self.forwarding)
        self.pma = PerformanceAgent({0: self.counters0, **{n: p.counters for n, p in self.ports.items()}})
        self.drops: Counter[str] = Counter()
        self.traps_sent = 0
        #: ingress packets forwarded, and management packets answered (with the drops: every packet)
        self.forwarded = 0
        self.answered = 0
        self.internal_errors = 0
        self._tid = 0

    # -- events ---------------------------------------------------------------------------------
    def post(self, fn: Callable[[], None]) -> None:
        """Queue `fn` to run under the switch's lock."""
        self.worker.submit(lambda: self._run(fn))

    def post_unlocked(self, fn: Callable[[], None]) -> None:
        self.worker.submit(lambda: self._guard(fn))

    def _run(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._guard(fn)
            outbox, self._outbox = self._outbox, []
        for action in outbox:
            self._guard(action)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.internal_errors += 1
            self.log.exception("%s: internal error", self.name)

    def later(self, action: Callable[[], None]) -> None:
        """Do `action` once the lock is released (calls into links and peers)."""
        self._outbox.append(action)

    def count_drop(self, reason: str, n: int = 1) -> None:
        self.drops[str(reason)] += n

    # -- SmaNode -----------------------------------------------------------------------------
    def managed_port(self, number: int) -> ManagedPort | None:
        if number == 0:
            return self.port0
        port = self.ports.get(number)
        return port.managed if port is not None else None

    @property
    def lid(self) -> int:
        return self.port0.port_info.lid

    # -- PortEvents (from a ManagedPort, under the lock) ------------------------------------------
    def send_idle(self, managed: ManagedPort, message: int) -> None:
        port = self.ports.get(managed.number)
        if port is not None:
            self.later(lambda: port.send_message(LinkMessage(MessageKind.IDLE, message)))

    def bounce(self, managed: ManagedPort) -> None:
        port = self.ports.get(managed.number)
        if port is None:
            return
        managed.link_down()
        port.counters.link_downed += 1
        self.later(port.bounce)

    def state_changed(self, managed: ManagedPort, old: int, new: int) -> None:
        if managed.number == 0 or not (old == w.PortState.DOWN or new == w.PortState.DOWN):
            return
        self.sma.switch_info.u1 |= w.SWITCH_INFO_PORT_STATE_CHANGE
        self._send_trap_128()

    def _send_trap_128(self) -> None:
        sm_lid, lid = self.port0.port_info.sm_lid, self.lid
        if not sm_lid or not lid:
            return  # no SM has configured us yet: nobody to tell
        self._tid += 1
        mad = trap_mad(self._tid, w.TRAP_PORT_STATE_CHANGE, lid, w.PRODUCER_SWITCH, lid.to_bytes(4, "big"))
        packet = build_mad_packet(mad, slid=lid, dlid=sm_lid, sc=opa.SC_VL15, sl=self.port0.port_info.smsl & 0x1F)
        out = self.forwarding.unicast(sm_lid)
        if out is None or out not in self.ports or not self._can_send(self.ports[out], packet.sc):
            self.count_drop(Drop.TRAP_UNROUTABLE)
            return
        self.traps_sent += 1
        self._enqueue(self.ports[out], packet)

    # -- link news (events) ---------------------------------------------------------------------
    def port_linked(self, port: SwitchPort, peer: PortIdentity, epoch: int) -> None:
        port.epoch = epoch
        port.managed.link_up(peer)

    def port_unlinked(self, port: SwitchPort, epoch: int) -> None:
        if epoch != port.epoch:
            return
        port.managed.link_down()
        port.counters.link_downed += 1
        port.epoch = -1
        self.later(port.retrain)

    def port_message(self, port: SwitchPort, message: LinkMessage, epoch: int) -> None:
        if epoch != port.epoch and port.epoch != -1:
            return
        if message.kind is MessageKind.CONFIGLT_READY:
            self.later(lambda: port.link.message(port, message, epoch) if port.link else None)
        elif message.kind is MessageKind.IDLE:
            port.managed.idle_message(message.data)

    # -- packets ----------------------------------------------------------------------------------
    def ingress(self, port: SwitchPort) -> None:
        port.inbound.begin()
        handled, inbound = 0, port.inbound.packets
        while inbound and handled < INGRESS_BATCH:
            packet = inbound[0]
            try:
                targets = self._route(port, packet)
            except Exception:  # a model bug: the packet is lost and counted, the port goes on
                inbound.popleft()
                handled += 1
                self.internal_errors += 1
                limited(self, self.log, "packets the model failed on").error(
                    "%s: internal error routing a packet from port %d", self.name, port.number, exc_info=True)
                continue
            if targets is None:  # an egress queue is full: hold the line
                break
            inbound.popleft()
            handled += 1
            for out, outgoing in targets:
                self._enqueue(out, outgoing)
        if inbound and handled == INGRESS_BATCH:
            self.later(port.repost_ingress)
        if port.inbound.drained() and port.link is not None:
            link = port.link
            self.later(lambda: link.room_freed(port))

    def _enqueue(self, out: SwitchPort, packet: Packet) -> None:
        out.egress.append(packet)
        self.later(out.schedule_pump)

    def _can_send(self, out: SwitchPort, sc: int) -> bool:
        state = out.managed.state
        if state == w.PortState.DOWN:
            return False
        return sc == opa.SC_VL15 or state == w.PortState.ACTIVE

    def _route(self, port: SwitchPort, packet: Packet) -> list[tuple[SwitchPort, Packet]] | None:
        """Where `packet` goes: [(egress, packet)], [] if consumed or dropped,
        None if an egress queue is full (try again when it drains)."""
        data = packet.data
        multicast = False
        if packet.bypass:
            if len(data) < opa.LRH_16B_BYTES:
                return self._drop(port, Drop.MALFORMED)
            lrh = opa.LRH_16B.decode(opa.LRH_16B.word(data, 0))
            dlid = lrh["dlid_high"] << 20 | lrh["dlid_low"]
            port.counters.received(len(data), dlid >= MULTICAST_16B)
            if dlid >= MULTICAST_16B:
                return self._multicast(port, packet, dlid - MULTICAST_16B)
            if dlid == self.lid and dlid:
                return self._drop(port, Drop.UNSERVED)  # 16B management: not served
            return self._unicast(port, packet, dlid)
        if len(data) < opa.LRH_BYTES + opa.BTH_BYTES:
            return self._drop(port, Drop.MALFORMED)
        lrh = opa.LRH.decode(opa.LRH.word(data, 0))
        dlid = lrh["dlid"]
        multicast = MULTICAST_9B <= dlid < PERMISSIVE_9B
        port.counters.received(len(data), multicast)
        if packet.sc == opa.SC_VL15:
            return self._smp(port, packet, dlid)
        if port.managed.state not in (w.PortState.ARMED, w.PortState.ACTIVE):
            return self._drop(port, Drop.NOT_ACTIVE)  # IBA: Armed receives data packets, only Active sends them
        if multicast:
            return self._multicast(port, packet, dlid - MULTICAST_9B)
        if dlid == PERMISSIVE_9B:
            return self._drop(port, Drop.MALFORMED)
        if dlid == self.lid and dlid:
            return self._local(port, packet)
        return self._unicast(port, packet, dlid)

    def _drop(self, port: SwitchPort, reason: str) -> list:
        self.count_drop(reason)
        if reason in (Drop.UNPROGRAMMED, Drop.NO_PORT, Drop.LOOP):
            port.counters.port_rcv_switch_relay_errors += 1
        elif reason in (Drop.MALFORMED, Drop.BAD_SMP):
            port.counters.port_rcv_errors += 1
        return []

    def _unicast(self, port: SwitchPort, packet: Packet, dlid: int) -> list | None:
        out_number = self.forwarding.unicast(dlid)
        if out_number is None:
            return self._drop(port, Drop.UNPROGRAMMED)
        if out_number == 0:
            return self._local(port, packet)
        out = self.ports.get(out_number)
        if out is None:
            return self._drop(port, Drop.NO_PORT)
        if out is port:
            return self._drop(port, Drop.LOOP)
        if not self._can_send(out, packet.sc):
            out.counters.port_xmit_discards += 1
            return self._drop(port, Drop.DEAD_PORT)
        if getattr(packet, "hops", 0) >= MAX_SWITCH_HOPS:
            return self._drop(port, Drop.LIFETIME)
        if out.egress_full():
            out.blocked.add(port.number)
            return None
        self.forwarded += 1
        return [(out, self._onward(packet, self.forwarding.sc_out(port.number, out_number, packet.sc)))]

    def _multicast(self, port: SwitchPort, packet: Packet, index: int) -> list | None:
        targets = []
        members = [n for n in self.forwarding.multicast(index) if n != port.number]
        if not members:
            return self._drop(port, Drop.UNPROGRAMMED)
        if getattr(packet, "hops", 0) >= MAX_SWITCH_HOPS:
            return self._drop(port, Drop.LIFETIME)
        live, dead = [], []
        for number in members:
            out = self.ports.get(number)
            if out is None:
                continue  # port 0 member: the switch itself joins no groups
            (live if self._can_send(out, packet.sc) else dead).append(out)
        full = [out for out in live if out.egress_full()]
        if full:  # held whole, and retried: nothing is counted until it goes
            for out in full:
                out.blocked.add(port.number)
            return None
        for out in dead:
            out.counters.port_xmit_discards += 1
            self.count_drop(Drop.DEAD_PORT)
        for out in live:
            targets.append((out, self._onward(packet, self.forwarding.sc_out(port.number, out.number, packet.sc))))
        for out, _ in targets:
            out.counters.port_multicast_xmit_pkts += 1
        self.forwarded += 1
        return targets

    @staticmethod
    def _onward(packet: Packet, sc: int) -> ForwardedPacket:
        """`packet` as it leaves: one more hop, its SC rewritten (the ICRC does not cover it)."""
        data = packet.data
        if sc != packet.sc:
            data = bytearray(data)
            if packet.bypass:
                word = opa.LRH_16B.put(opa.LRH_16B.word(data, 0), "sc", sc)
                data[:opa.LRH_16B_BYTES] = word.to_bytes(opa.LRH_16B_BYTES, "little")
            else:
                data[0] = (sc & 0xF) << 4 | (data[0] & 0xF)
            data = bytes(data)
        return ForwardedPacket(data, sc, packet.bypass, packet.sealed, getattr(packet, "hops", 0) + 1)

    # -- management traffic ---------------------------------------------------------------------------
    def _smp(self, port: SwitchPort, packet: Packet, dlid: int) -> list | None:
        mad_packet = parse_mad_packet(packet)
        if mad_packet is None or mad_packet.dest_qp != 0:
            return self._drop(port, Drop.BAD_SMP)
        mad = mad_packet.mad
        if mad[1] == opa.MGMT_CLASS_SUBN_DIRECTED_ROUTE:
            if dlid != PERMISSIVE_9B and dlid != self.lid:
                return self._unicast(port, packet, dlid)  # the LID-routed part of an LR-DR SMP, passing through
            return self._directed(port, mad_packet)
        if mad[1] != opa.MGMT_CLASS_SUBN_LID_ROUTED:
            return self._drop(port, Drop.BAD_SMP)
        if dlid == PERMISSIVE_9B or (dlid == self.lid and dlid):
            return self._local(port, packet, mad_packet)
        return self._unicast(port, packet, dlid)

    def _directed(self, port: SwitchPort, request) -> list | None:
        try:
            smp = smi.DrSmp(request.mad)
        except ValueError:
            return self._drop(port, smi.DropReason.TRUNCATED)
        if smi.starts_directed_part(smp) and request.dlid == self.lid and self.lid:
            return self._start_directed_part(port, request, smp)
        verdict, reason = smi.receive(smp, True, port.number, self.num_ports)
        if verdict is smi.Verdict.DISCARD:
            return self._drop(port, reason)
        step = smi.forward(smp)
        if step is smi.Next.FORWARD:
            return self._send_directed(port, smi.forward_port(smp), request, smp, slid=request.slid, dlid=request.dlid)
        if step is smi.Next.SEND:
            verdict, reason = smi.send(smp, True, port.number)
            if verdict is smi.Verdict.DISCARD:
                return self._drop(port, reason)
        if smp.returning:
            if smp.hop_ptr == 0 and not smp.slid_permissive:
                return self._end_directed_part(port, request, smp)
            return self._drop(port, smi.DropReason.NO_SM)
        return self._answer_directed(port, request, smp)

    def _start_directed_part(self, port: SwitchPort, request, smp: smi.DrSmp) -> list | None:
        """An LR-DR SMP: LID-routed to us, its directed part starts here (IBA
        C14-9: this switch sends it on as if it had originated it), out of
        InitialPath[1], with the permissive LID in the LRH from here on."""
        return self._send_directed(port, smp.initial(1), request, smp, slid=PERMISSIVE_9B, dlid=PERMISSIVE_9B)

    def _end_directed_part(self, port: SwitchPort, request, smp: smi.DrSmp) -> list | None:
        """The response to an LR-DR SMP at the end of its directed part (C14-13:
        hop pointer 0, a non-permissive DrSLID): LID-routed on to DrSLID."""
        dr_slid = smp.dr_slid
        out_number = self.forwarding.unicast(dr_slid) if dr_slid < MULTICAST_9B else None
        out = self.ports.get(out_number) if out_number is not None else None
        if out is None:
            return self._drop(port, Drop.UNPROGRAMMED)
        return self._forward_smp(port, out, request, slid=self.lid, dlid=dr_slid)

    def _send_directed(self, port: SwitchPort, out_number: int, request, smp: smi.DrSmp, slid: int,
                       dlid: int) -> list | None:
        """A directed-route SMP on its way out of port `out_number` (the SMI's
        send check first), or the reason it is dropped."""
        out = self.ports.get(out_number)
        if out is None:
            return self._drop(port, smi.DropReason.PATH_PORT)
        verdict, reason = smi.send(smp, True, out_number)
        if verdict is smi.Verdict.DISCARD:
            return self._drop(port, reason)
        return self._forward_smp(port, out, request, slid=slid, dlid=dlid)

    def _forward_smp(self, port: SwitchPort, out: SwitchPort, request, slid: int, dlid: int) -> list | None:
        if not self._can_send(out, opa.SC_VL15):
            return self._drop(port, smi.DropReason.DEAD_PORT)
        if out.egress_full():
            out.blocked.add(port.number)
            return None
        packet = build_mad_packet(request.mad, slid=slid, dlid=dlid, sc=request.sc, sl=request.sl, dest_qp=0,
                                  src_qp=request.src_qp, pkey=request.pkey, qkey=request.qkey)
        self.forwarded += 1
        return [(out, packet)]

    def _answer_directed(self, port: SwitchPort, request, smp: smi.DrSmp) -> list:
        mad = answer(request.mad, port.number, self.sma, None)
        if mad is None:
            return self._drop(port, Drop.UNSERVED)
        self.counters0.received(len(mad))
        verdict, reason = smi.send(smp, True, port.number)
        if verdict is smi.Verdict.DISCARD:
            return self._drop(port, reason)
        reply = build_mad_packet(mad, slid=PERMISSIVE_9B, dlid=PERMISSIVE_9B, sc=opa.SC_VL15, sl=request.sl,
                                 dest_qp=0, src_qp=0, pkey=request.pkey)
        if not self._can_send(port, opa.SC_VL15):
            return self._drop(port, smi.DropReason.DEAD_PORT)
        self.counters0.transmitted(len(reply.data))
        self.answered += 1
        return [(port, reply)]

    def _local(self, port: SwitchPort, packet: Packet, request=None) -> list | None:
        """A LID-routed SMP or GMP for port 0: the answer goes back by the LFT."""
        request = request or parse_mad_packet(packet)
        if request is None:
            return self._drop(port, Drop.UNSERVED)
        self.counters0.received(len(packet.data))
        is_smp = request.mad[1] == opa.MGMT_CLASS_SUBN_LID_ROUTED
        if is_smp != (request.dest_qp == 0) or (is_smp and packet.sc != opa.SC_VL15):
            return self._drop(port, Drop.BAD_SMP)
        mad = answer(request.mad, port.number, self.sma, self.pma)
        if mad is None:
            unasked = request.mad[3] & 0x80 or request.mad[3] == w.Method.TRAP_REPRESS
            return self._drop(port, Drop.UNASKED if unasked else Drop.UNSERVED)
        reply = reply_packet(request, mad, slid=self.lid)
        out_number = port.number if request.slid == PERMISSIVE_9B else self.forwarding.unicast(request.slid)
        out = self.ports.get(out_number) if out_number is not None else None
        if out is None or not self._can_send(out, reply.sc):
            return self._drop(port, Drop.UNPROGRAMMED if out is None else Drop.DEAD_PORT)
        self.counters0.transmitted(len(reply.data))
        self.answered += 1
        return [(out, reply)]

    # -- what tools read --------------------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            return {
                "name": self.name, "guid": f"{self.guid:#018x}", "lid": self.lid,
                "ports": {n: {"state": p.managed.state, "egress": len(p.egress), "inbound": len(p.inbound),
                              **vars(p.counters)} for n, p in self.ports.items()},
                "drops": dict(self.drops), "traps_sent": self.traps_sent, "internal_errors": self.internal_errors,
                "forwarded": self.forwarded, "answered": self.answered,
                "sma": {"requests": self.sma.requests, "errors": self.sma.errors},
            }

    def status(self) -> dict:
        """What `vfnic ctl C query` shows of the switch: every port's state, neighbour, link and counters."""
        with self._lock:
            ports = []
            for n, p in self.ports.items():
                managed = p.managed
                neighbor = managed.neighbor
                ports.append({
                    "port": n, "state": PORT_STATE_NAMES.get(managed.state, str(managed.state)),
                    "neighbor_normal": bool(managed.neighbor_normal),
                    "neighbor_guid": f"{neighbor.guid:#018x}" if neighbor is not None else None,
                    "link": p.link.name if p.link is not None else None,
                    "peer": p.link.peer_of(p.name) if p.link is not None else None,
                    "egress": len(p.egress), "inbound": len(p.inbound), "counters": dict(vars(p.counters)),
                })
            return {"name": self.name, "kind": self.kind, "guid": f"{self.guid:#018x}", "lid": self.lid,
                    "num_ports": self.num_ports, "ports": ports, "drops": dict(self.drops),
                    "forwarded": self.forwarded, "answered": self.answered, "traps_sent": self.traps_sent,
                    "internal_errors": self.internal_errors}

    def close(self) -> None:
        """Stop the switch's worker (its scheduler's thread ends with the last user)."""
        stop = getattr(self.worker, "stop", None)
        if stop is not None:
            stop()
        flush(self)


PORT_STATE_NAMES = {w.PortState.NOP: "NOP", w.PortState.DOWN: "DOWN", w.PortState.INIT: "INIT",
                    w.PortState.ARMED: "ARMED", w.PortState.ACTIVE: "ACTIVE"}


__all__ = ["PORT_STATE_NAMES", "Drop", "ForwardedPacket", "Switch"]
