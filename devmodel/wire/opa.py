"""Omni-Path packet headers on the wire: 9B (IB-style) and 16B, and the MAD header.

A 9B packet, as a link carries it (the PBC is a host-side word, stripped
by the sending HFI; SC bit 4 travels out of band, see `devmodel/fabric`):

    LRH 8 | [GRH 40 if LNH=3] | BTH 12 | extension headers | payload | pad | ICRC 4

    LRH   byte 0            1                2         3   4        5   6        7
          SC[3:0] LVer | SL rsv LNH | DLID           | rsv PktLen(12) | SLID
    BTH   opcode | SE M Pad TVer | PKey | F B rsv6 | DestQP(24) | A | PSN(31)
    DETH  QKey(32) | entropy(8) | SrcQP(24)              (UD)
    RETH  VA(64) | RKey(32) | DMALen(32)                 (RDMA WRITE first/only, READ request)
    AETH  Syndrome(8) | MSN(24)                          (ACK, READ response first/last/only)
    AtomicETH VA(64) | RKey(32) | Swap(64) | Compare(64) (CMP_SWAP, FETCH_ADD)
    AtomicAckETH original remote data(64)
    ImmDt, IETH  32 bits
    KDETH two little-endian words (PSM2 and TID RDMA; DestQP[23:16] = 0x80):
          Offset(15) OM TID(10) TIDCtrl(2) Intr SH KVer(2) | J_Key(16) HCRC(16)

    PktLen counts dwords from the LRH through the ICRC. All big-endian but KDETH.

A 16B packet starts with a 16-byte LRH of four little-endian words (one
128-bit little-endian value): SLID/DLID 24 bits split across words, LEN in
8-byte flits, SC, L2 = 2, L4 (9 = IB local, 10 = IB global, 8 = FM), PKey,
entropy; then L4's headers, pad to a flit, ICRC and the LT byte.

Every header is a construct value; `BitFields` gives the derived fast codec
(`devmodel/wire/bits.py`). The ICRC is the IB invariant CRC: CRC-32 over the
packet with the fields a switch may rewrite (LRH SC, GRH TClass/FlowLabel/
HopLmt, BTH FECN/BECN/reserved byte) read as all ones.
"""
from __future__ import annotations

import zlib

import construct as c

from .bits import BitFields

LRH_BYTES = 8
GRH_BYTES = 40
BTH_BYTES = 12
ICRC_BYTES = 4
LRH_16B_BYTES = 16

LNH_BTH = 2  # LRH.LNH: IBA local, BTH follows
LNH_GRH = 3  # IBA global, GRH follows
GRH_NEXT_HEADER_BTH = 0x1B
PERMISSIVE_LID = 0xFFFF
MULTICAST_LID_BASE = 0xC000  # 9B
SC_VL15 = 15
KDETH_QP_PREFIX = 0x80  # BTH.DestQP[23:16] of PSM2/TID-RDMA packets (RVT_KDETH_QP_PREFIX)
AIP_QP_PREFIX = 0x81  # IPoIB's accelerated QPs

# -- declarations ------------------------------------------------------------

Lrh = c.BitStruct(
    "sc" / c.BitsInteger(4),
    "lver" / c.BitsInteger(4),
    "sl" / c.BitsInteger(4),
    c.Padding(2),
    "lnh" / c.BitsInteger(2),
    "dlid" / c.BitsInteger(16),
    c.Padding(4),
    "pkt_len" / c.BitsInteger(12),
    "slid" / c.BitsInteger(16),
)

Grh = c.Struct(
    "vtf" / c.BitStruct("ip_version" / c.BitsInteger(4), "traffic_class" / c.BitsInteger(8),
                        "flow_label" / c.BitsInteger(20)),
    "payload_length" / c.Int16ub,
    "next_header" / c.Int8ub,
    "hop_limit" / c.Int8ub,
    "sgid" / c.Bytes(16),
    "dgid" / c.Bytes(16),
)

Bth = c.BitStruct(
    "opcode" / c.BitsInteger(8),
    "se" / c.BitsInteger(1),
    "migreq" / c.BitsInteger(1),
    "pad" / c.BitsInteger(2),
    "tver" / c.BitsInteger(4),
    "pkey" / c.BitsInteger(16),
    "fecn" / c.BitsInteger(1),
    "becn" / c.BitsInteger(1),
    c.Padding(6),
    "dest_qp" / c.BitsInteger(24),
    "ack_req" / c.BitsInteger(1),
    "psn" / c.BitsInteger(31),
)

Deth = c.BitStruct(
    "qkey" / c.BitsInteger(32),
    "entropy" / c.BitsInteger(8),
    "src_qp" / c.BitsInteger(24),
)

Reth = c.Struct("vaddr" / c.Int64ub, "rkey" / c.Int32ub, "length" / c.Int32ub)

Aeth = c.BitStruct("syndrome" / c.BitsInteger(8), "msn" / c.BitsInteger(24))

AtomicEth = c.Struct("vaddr" / c.Int64ub, "rkey" / c.Int32ub, "swap_data" / c.Int64ub,
                     "compare_data" / c.Int64ub)

AtomicAckEth = c.Struct("orig_remote_data" / c.Int64ub)

ImmDt = c.Struct("imm_data" / c.Int32ub)

Ieth = c.Struct("rkey" / c.Int32ub)

KdethWord0 = c.ByteSwapped(c.BitStruct(
    "kver" / c.BitsInteger(2),
    "sh" / c.BitsInteger(1),
    "intr" / c.BitsInteger(1),
    "tid_ctrl" / c.BitsInteger(2),
    "tid" / c.BitsInteger(10),
    "om" / c.BitsInteger(1),
    "offset" / c.BitsInteger(15),
))
KdethWord1 = c.ByteSwapped(c.BitStruct("hcrc" / c.BitsInteger(16), "jkey" / c.BitsInteger(16)))
Kdeth = c.Struct("kdeth0" / KdethWord0, "kdeth1" / KdethWord1)

Lrh16B = c.ByteSwapped(c.BitStruct(
    # word 3
    c.Padding(8),
    "age" / c.BitsInteger(8),
    "entropy" / c.BitsInteger(16),
    # word 2
    "pkey" / c.BitsInteger(16),
    "dlid_high" / c.BitsInteger(4),
    "slid_high" / c.BitsInteger(4),
    "l4" / c.BitsInteger(8),
    # word 1
    c.Padding(1),
    "l2" / c.BitsInteger(2),
    "fecn" / c.BitsInteger(1),
    "rc" / c.BitsInteger(3),
    "sc" / c.BitsInteger(5),
    "dlid_low" / c.BitsInteger(20),
    # word 0
    "becn" / c.BitsInteger(1),
    "len_flits" / c.BitsInteger(11),
    "slid_low" / c.BitsInteger(20),
))

#: The common MAD header (IBA 13.4.3; OPA MADs use base/class version 0x80).
#: For directed-route SMPs the two class-specific bytes are hop pointer and hop count.
MadHeader = c.Struct(
    "base_version" / c.Int8ub,
    "mgmt_class" / c.Int8ub,
    "class_version" / c.Int8ub,
    "method" / c.Int8ub,
    "status" / c.Int16ub,
    "class_specific" / c.Int16ub,
    "tid" / c.Int64ub,
    "attr_id" / c.Int16ub,
    c.Padding(2),
    "attr_mod" / c.Int32ub,
)
MAD_HEADER_BYTES = 24
MGMT_CLASS_SUBN_LID_ROUTED = 0x01
MGMT_CLASS_SUBN_DIRECTED_ROUTE = 0x81
MGMT_CLASS_SUBN_ADM = 0x03
MGMT_CLASS_PERF_MGMT = 0x04
OPA_MGMT_BASE_VERSION = 0x80

# -- fast codecs ---------------------------------------------------------------

LRH = BitFields("LRH", Lrh, "big")
BTH = BitFields("BTH", Bth, "big")
DETH = BitFields("DETH", Deth, "big")
AETH = BitFields("AETH", Aeth, "big")
KDETH0 = BitFields("KDETH0", KdethWord0, "little")
KDETH1 = BitFields("KDETH1", KdethWord1, "little")
LRH_16B = BitFields("LRH16B", Lrh16B, "little")

# -- opcodes and where their headers end ----------------------------------------------


class Opcode:
    """BTH opcodes (IBA 9.2; include/rdma/ib_pack.h)."""

    RC, UC, RD, UD, CNP_CLASS, KDETH_CLASS = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0
    SEND_FIRST, SEND_MIDDLE, SEND_LAST, SEND_LAST_IMM, SEND_ONLY, SEND_ONLY_IMM = 0, 1, 2, 3, 4, 5
    WRITE_FIRST, WRITE_MIDDLE, WRITE_LAST, WRITE_LAST_IMM, WRITE_ONLY, WRITE_ONLY_IMM = 6, 7, 8, 9, 10, 11
    READ_REQUEST, READ_RESP_FIRST, READ_RESP_MIDDLE, READ_RESP_LAST, READ_RESP_ONLY = 12, 13, 14, 15, 16
    ACK, ATOMIC_ACK, CMP_SWAP, FETCH_ADD = 17, 18, 19, 20
    SEND_LAST_INV, SEND_ONLY_INV = 22, 23
    UD_SEND_ONLY = UD + SEND_ONLY
    UD_SEND_ONLY_IMM = UD + SEND_ONLY_IMM
    RC_ACK = RC + ACK
    CNP = 0x80  # IB_OPCODE_CNP
    TID_RDMA = 0xE0  # write req/resp/data/data last, read req/resp, resync, ack: 0xE0..0xE7


def _header_bytes_by_opcode() -> bytes:
    """hfi1's verbs.c `hdr_len_by_opcode`: LRH + BTH + the opcode's extension
    headers, which is where the chip splits a 9B packet into header queue and
    eager buffer. 0 where the table has no entry."""
    base = LRH_BYTES + BTH_BYTES
    table = bytearray(256)
    transport = {
        Opcode.SEND_FIRST: 0, Opcode.SEND_MIDDLE: 0, Opcode.SEND_LAST: 0, Opcode.SEND_LAST_IMM: 4,
        Opcode.SEND_ONLY: 0, Opcode.SEND_ONLY_IMM: 4, Opcode.WRITE_FIRST: 16, Opcode.WRITE_MIDDLE: 0,
        Opcode.WRITE_LAST: 0, Opcode.WRITE_LAST_IMM: 4, Opcode.WRITE_ONLY: 16, Opcode.WRITE_ONLY_IMM: 20,
    }
    for op, extra in transport.items():
        table[Opcode.RC + op] = base + extra
        table[Opcode.UC + op] = base + extra
    rc_only = {
        Opcode.READ_REQUEST: 16, Opcode.READ_RESP_FIRST: 4, Opcode.READ_RESP_MIDDLE: 0,
        Opcode.READ_RESP_LAST: 4, Opcode.READ_RESP_ONLY: 4, Opcode.ACK: 4, Opcode.ATOMIC_ACK: 12,
        Opcode.CMP_SWAP: 28, Opcode.FETCH_ADD: 28, Opcode.SEND_LAST_INV: 4, Opcode.SEND_ONLY_INV: 4,
    }
    for op, extra in rc_only.items():
        table[Opcode.RC + op] = base + extra
    for op in range(Opcode.TID_RDMA, Opcode.TID_RDMA + 8):  # TID RDMA: KDETH-sized headers
        table[op] = base + 36
    table[Opcode.UD_SEND_ONLY] = base + 8
    table[Opcode.UD_SEND_ONLY_IMM] = base + 12
    return bytes(table)


HEADER_BYTES_BY_OPCODE = _header_bytes_by_opcode()
#: KDETH packets (PSM2): LRH + BTH + RcvHdrSize (9) dwords
KDETH_HEADER_BYTES = LRH_BYTES + BTH_BYTES + 9 * 4

# -- ICRC -------------------------------------------------------------------------------

_ONES8 = b"\xff" * 8


def icrc(packet: bytes | memoryview, lnh: int | None = None) -> int:
    """The IB invariant CRC of a 9B packet without its ICRC (LRH included)."""
    if len(packet) < 2:
        return zlib.crc32(bytes(packet))
    if lnh is None:
        lnh = packet[1] & 3
    # LRH: SC (the VL field) is variant.
    crc = zlib.crc32(bytes((packet[0] | 0xF0,)) + bytes(packet[1:LRH_BYTES]))
    pos = LRH_BYTES
    if lnh == LNH_GRH:
        grh = bytearray(bytes(packet[pos:pos + GRH_BYTES]).ljust(GRH_BYTES, b"\0"))
        grh[0] |= 0x0F  # traffic class low nibble
        grh[1:4] = b"\xff\xff\xff"  # traffic class high nibble, flow label
        grh[7] = 0xFF  # hop limit
        crc = zlib.crc32(grh[:max(0, len(packet) - pos)], crc)
        pos += GRH_BYTES
    bth = bytearray(packet[pos:pos + BTH_BYTES])
    if len(bth) > 4:
        bth[4] = 0xFF  # FECN, BECN, reserved
    crc = zlib.crc32(bth, crc)
    return zlib.crc32(packet[pos + BTH_BYTES:], crc)


def append_icrc(packet: bytes) -> bytes:
    return packet + icrc(packet).to_bytes(ICRC_BYTES, "little")


def icrc_ok(packet: bytes | memoryview) -> bool:
    """A 9B packet with its ICRC at the end."""
    if len(packet) < LRH_BYTES + BTH_BYTES + ICRC_BYTES:
        return False
    return icrc(packet[:-ICRC_BYTES]) == int.from_bytes(packet[-ICRC_BYTES:], "little")
