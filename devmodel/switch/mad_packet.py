"""A MAD in a 9B packet: what an SMA, a PMA or an SM puts on the wire.

    LRH 8 (SC, SL, LNH=2, DLID, PktLen, SLID) | BTH 12 (UD_SEND_ONLY, PKey, DestQP)
    | DETH 8 (Q_Key, SrcQP) | MAD | ICRC 4

SMPs travel on SC15/VL15 to QP0 with P_Key 0xFFFF; GMPs (the PMA's) on a
data SC to QP1 with Q_Key 0x80010000. Directed-route SMPs carry the
permissive LID (0xFFFF) in the LRH while their DR segment lasts.
"""
from __future__ import annotations

from dataclasses import dataclass

from devmodel.fabric import Packet
from devmodel.wire import opa

DETH_BYTES = 8
MAD_OFFSET = opa.LRH_BYTES + opa.BTH_BYTES + DETH_BYTES  # 28
GSI_QKEY = 0x80010000
FULL_PKEY = 0xFFFF
MIN_MAD_BYTES = 24


@dataclass
class MadPacket:
    """The addressing of a MAD packet and the MAD itself (mutable)."""

    slid: int
    dlid: int
    sl: int
    sc: int
    pkey: int
    dest_qp: int
    src_qp: int
    qkey: int
    mad: bytearray

    @property
    def mgmt_class(self) -> int:
        return self.mad[1]


def parse_mad_packet(packet: Packet) -> MadPacket | None:
    """The MAD in a 9B UD packet to QP0 or QP1; None if it is not one."""
    data = packet.data
    if packet.bypass or len(data) < MAD_OFFSET + MIN_MAD_BYTES + opa.ICRC_BYTES:
        return None
    lrh = opa.LRH.decode(opa.LRH.word(data, 0))
    if lrh["lnh"] != opa.LNH_BTH:
        return None
    bth = opa.BTH.decode(opa.BTH.word(data, opa.LRH_BYTES))
    if bth["opcode"] != opa.Opcode.UD_SEND_ONLY or bth["dest_qp"] > 1:
        return None
    deth = opa.DETH.decode(opa.DETH.word(data, opa.LRH_BYTES + opa.BTH_BYTES))
    end = len(data) - opa.ICRC_BYTES - bth["pad"]
    if end < MAD_OFFSET + MIN_MAD_BYTES:
        return None
    return MadPacket(slid=lrh["slid"], dlid=lrh["dlid"], sl=lrh["sl"], sc=packet.sc, pkey=bth["pkey"],
                     dest_qp=bth["dest_qp"], src_qp=deth["src_qp"], qkey=deth["qkey"],
                     mad=bytearray(data[MAD_OFFSET:end]))


def build_mad_packet(mad: bytes, *, slid: int, dlid: int, sc: int, sl: int = 0, dest_qp: int = 0, src_qp: int = 0,
                     pkey: int = FULL_PKEY, qkey: int = 0) -> Packet:
    """A sealed 9B packet carrying `mad` (padded to whole dwords)."""
    pad = -len(mad) % 4
    body = bytes(mad) + bytes(pad)
    dwords = (MAD_OFFSET + len(body) + opa.ICRC_BYTES) // 4
    header = (opa.LRH.build(sc=sc & 0xF, lver=0, sl=sl, lnh=opa.LNH_BTH, dlid=dlid & 0xFFFF, pkt_len=dwords,
                            slid=slid & 0xFFFF)
              + opa.BTH.build(opcode=opa.Opcode.UD_SEND_ONLY, se=0, migreq=0, pad=pad, tver=0, pkey=pkey, fecn=0,
                              becn=0, dest_qp=dest_qp, ack_req=0, psn=0)
              + opa.DETH.build(qkey=qkey, entropy=0, src_qp=src_qp))
    return Packet(opa.append_icrc(header + body), sc=sc, sealed=True)


def reply_packet(request: MadPacket, mad: bytes, *, slid: int, dlid: int | None = None) -> Packet:
    """The answer to `request`, back to its sender (or to `dlid`)."""
    return build_mad_packet(mad, slid=slid, dlid=request.slid if dlid is None else dlid, sc=request.sc,
                            sl=request.sl, dest_qp=request.src_qp, src_qp=request.dest_qp, pkey=request.pkey,
                            qkey=request.qkey)
