"""Directed-route SMP forwarding: the subnet management interface's rules.

    outbound (direction 0)                        returning (direction 1, a response)
    SM --hop 1--> switch --hop 2--> ... --> SMA   SMA --> ... --> switch --> SM
    at each hop: ReturnPath[hop_ptr] = arrival    at each hop: leave by ReturnPath[hop_ptr-1],
    port, leave by InitialPath[hop_ptr+1],        hop_ptr - 1; at hop_ptr 0 the SM has it
    hop_ptr + 1; at hop_ptr == hop_cnt the SMA
    answers (hop_ptr becomes hop_cnt + 1)

The three checks are those of Linux's drivers/infiniband/core/smi.h (IBA
C14-9 outbound, C14-13 returning), kept literal so a difference from the
reference reads as one: `receive` (a packet arriving on `port`), `forward`
(what to do with it next), `send` (a packet leaving by `port`). A rule that
says "discard" names why (`DropReason`); the switch counts every drop.

LR-DR (a LID-routed part before the directed part, a non-permissive DrSLID)
is the switch's to do, not these rules' (as in smi.h, which an end node
runs): `starts_directed_part` says an SMP LID-routed to a switch begins its
directed part there, and a response that reaches hop pointer 0 at a switch
with a non-permissive DrSLID is LID-routed on to DrSLID (devmodel/switch/
device.py). opafm 10.10.3 initializes the HFIs behind a switch with LR-DR
first.
"""
from __future__ import annotations

from enum import Enum, StrEnum

from devmodel.wire.opa_sma import DR_DIRECTION, MAX_PATH_HOPS, PERMISSIVE_LID32

# offsets in a directed-route SMP
HOP_PTR, HOP_CNT, STATUS = 6, 7, 4
DR_SLID, DR_DLID, INITIAL_PATH, RETURN_PATH = 32, 36, 40, 104


class Verdict(Enum):
    HANDLE = "handle"
    DISCARD = "discard"


class Next(Enum):
    """`forward`'s answer (smi.h enum smi_forward_action)."""

    LOCAL = "local"  # give it to this node's SMA/SM
    SEND = "send"  # end of the DR part here: adjust as if sending, then give it to the SMA
    FORWARD = "forward"  # out of another port (switches only)


class DropReason(StrEnum):
    HOP_COUNT = "hop count beyond 63"
    HOP_POINTER = "hop pointer out of range"
    PATH_PORT = "path names a port this node does not have"
    WRONG_PORT = "path disagrees with the port"
    NOT_A_SWITCH = "an end node cannot forward"
    LR_DR = "LID-routed part of a DR SMP (unsupported)"
    DEAD_PORT = "egress port is down"
    NO_SM = "returning SMP reached a node with no SM"
    TRUNCATED = "SMP too short"


class DrSmp:
    """A view of a directed-route SMP's routing fields (in place, in `mad`)."""

    __slots__ = ("mad",)

    def __init__(self, mad: bytearray):
        if len(mad) < RETURN_PATH + MAX_PATH_HOPS:
            raise ValueError("truncated directed-route SMP")
        self.mad = mad

    @property
    def hop_ptr(self) -> int:
        return self.mad[HOP_PTR]

    @hop_ptr.setter
    def hop_ptr(self, value: int) -> None:
        self.mad[HOP_PTR] = value & 0xFF

    @property
    def hop_cnt(self) -> int:
        return self.mad[HOP_CNT]

    @property
    def returning(self) -> bool:
        return bool(int.from_bytes(self.mad[STATUS:STATUS + 2], "big") & DR_DIRECTION)

    @property
    def dlid_permissive(self) -> bool:
        return int.from_bytes(self.mad[DR_DLID:DR_DLID + 4], "big") == PERMISSIVE_LID32

    @property
    def slid_permissive(self) -> bool:
        return int.from_bytes(self.mad[DR_SLID:DR_SLID + 4], "big") == PERMISSIVE_LID32

    @property
    def dr_slid(self) -> int:
        return int.from_bytes(self.mad[DR_SLID:DR_SLID + 4], "big")

    def initial(self, hop: int) -> int:
        return self.mad[INITIAL_PATH + hop] if 0 <= hop < MAX_PATH_HOPS else 0xFF

    def ret(self, hop: int) -> int:
        return self.mad[RETURN_PATH + hop] if 0 <= hop < MAX_PATH_HOPS else 0xFF

    def set_return(self, hop: int, port: int) -> None:
        self.mad[RETURN_PATH + hop] = port


def starts_directed_part(smp: DrSmp) -> bool:
    """An outbound LR-DR SMP whose LID-routed part ends here: hop pointer 0, a
    directed part to go (hop count > 0) and a DrSLID the response goes back to."""
    return not smp.returning and smp.hop_ptr == 0 and 0 < smp.hop_cnt < MAX_PATH_HOPS and not smp.slid_permissive


def receive(smp: DrSmp, is_switch: bool, port: int, num_ports: int) -> tuple[Verdict, DropReason | None]:
    """smi.h __smi_handle_dr_smp_recv: `smp` arrived on `port`."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if hop_cnt >= MAX_PATH_HOPS:
        return Verdict.DISCARD, DropReason.HOP_COUNT
    if not smp.returning:
        if hop_cnt and hop_ptr == 0:
            return Verdict.DISCARD, DropReason.HOP_POINTER
        if 0 < hop_ptr < hop_cnt:
            if not is_switch:
                return Verdict.DISCARD, DropReason.NOT_A_SWITCH
            smp.set_return(hop_ptr, port)
            return _ok(smp.initial(hop_ptr + 1) <= num_ports, DropReason.PATH_PORT)
        if hop_ptr == hop_cnt:
            if hop_cnt:
                smp.set_return(hop_ptr, port)
            return _ok(is_switch or smp.dlid_permissive, DropReason.LR_DR)
        return _ok(hop_ptr == hop_cnt + 1, DropReason.HOP_POINTER)
    if hop_cnt and hop_ptr == hop_cnt + 1:
        smp.hop_ptr = hop_ptr - 1
        return _ok(smp.ret(smp.hop_ptr) == port, DropReason.WRONG_PORT)
    if 2 <= hop_ptr <= hop_cnt:
        if not is_switch:
            return Verdict.DISCARD, DropReason.NOT_A_SWITCH
        return _ok(smp.ret(hop_ptr - 1) <= num_ports, DropReason.PATH_PORT)
    if hop_ptr == 1:
        if smp.slid_permissive:
            smp.hop_ptr = 0
            return Verdict.HANDLE, None
        return _ok(is_switch, DropReason.NOT_A_SWITCH)
    return _ok(hop_ptr == 0, DropReason.HOP_POINTER)


def forward(smp: DrSmp) -> Next:
    """smi.h __smi_check_forward_dr_smp."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if not smp.returning:
        if 0 < hop_ptr < hop_cnt:
            return Next.FORWARD
        if hop_ptr == hop_cnt:
            return Next.SEND if smp.dlid_permissive else Next.LOCAL
        if hop_ptr == hop_cnt + 1:
            return Next.SEND
    else:
        if 2 <= hop_ptr <= hop_cnt:
            return Next.FORWARD
        if hop_ptr == 1:
            return Next.SEND if not smp.slid_permissive else Next.LOCAL
    return Next.LOCAL


def forward_port(smp: DrSmp) -> int:
    """smi.h smi_get_fwd_port."""
    return smp.initial(smp.hop_ptr + 1) if not smp.returning else smp.ret(smp.hop_ptr - 1)


def send(smp: DrSmp, is_switch: bool, port: int) -> tuple[Verdict, DropReason | None]:
    """smi.h __smi_handle_dr_smp_send: `smp` leaves by `port` (0: to this node's own agent)."""
    hop_ptr, hop_cnt = smp.hop_ptr, smp.hop_cnt
    if hop_cnt >= MAX_PATH_HOPS:
        return Verdict.DISCARD, DropReason.HOP_COUNT
    if not smp.returning:
        if hop_cnt and hop_ptr == 0:
            smp.hop_ptr = 1
            return _ok(smp.initial(1) == port, DropReason.WRONG_PORT)
        if 0 < hop_ptr < hop_cnt:
            if not is_switch:
                return Verdict.DISCARD, DropReason.NOT_A_SWITCH
            smp.hop_ptr = hop_ptr + 1
            return _ok(smp.initial(hop_ptr + 1) == port, DropReason.WRONG_PORT)
        if hop_ptr == hop_cnt:
            smp.hop_ptr = hop_ptr + 1
            return _ok(is_switch or smp.dlid_permissive, DropReason.LR_DR)
        return _ok(hop_ptr == hop_cnt + 1, DropReason.HOP_POINTER)
    if hop_cnt and hop_ptr == hop_cnt + 1:
        smp.hop_ptr = hop_ptr - 1
        return _ok(smp.ret(hop_ptr - 1) == port, DropReason.WRONG_PORT)
    if 2 <= hop_ptr <= hop_cnt:
        if not is_switch:
            return Verdict.DISCARD, DropReason.NOT_A_SWITCH
        smp.hop_ptr = hop_ptr - 1
        return _ok(smp.ret(hop_ptr - 1) == port, DropReason.WRONG_PORT)
    if hop_ptr == 1:
        smp.hop_ptr = 0
        return _ok(is_switch or smp.slid_permissive, DropReason.LR_DR)
    return _ok(hop_ptr == 0, DropReason.HOP_POINTER)


def _ok(condition: bool, reason: DropReason) -> tuple[Verdict, DropReason | None]:
    return (Verdict.HANDLE, None) if condition else (Verdict.DISCARD, reason)
