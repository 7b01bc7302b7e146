"""TXE packet integrity checks: what a send context or an SDMA engine may put
on the wire (hfi.h hfi1_pkt_default_send_ctxt_mask, hfi1_pkt_base_sdma_integrity).

    per send context h, 0x1900000 + 0x100h     per SDMA engine e, 0x1A00000 + 0x100e
      SEND_CTXT_CHECK_ENABLE        +0x80      SEND_DMA_CHECK_ENABLE         RW  the checks below
      SEND_CTXT_CHECK_VL            +0x88      SEND_DMA_CHECK_VL             RW  bit v: PBC.VL v refused
      SEND_CTXT_CHECK_JOB_KEY       +0x90      SEND_DMA_CHECK_JOB_KEY        RW  [15:0] value [31:16] mask
                                                                                 [32] AllowPermissive
      SEND_CTXT_CHECK_PARTITION_KEY +0x98      SEND_DMA_CHECK_PARTITION_KEY  RW  [15:0] P_Key
      SEND_CTXT_CHECK_SLID          +0xA0      SEND_DMA_CHECK_SLID           RW  [15:0] value [31:16] mask
      SEND_CTXT_CHECK_OPCODE        +0xA8      SEND_DMA_CHECK_OPCODE         RW  [7:0] value [15:8] mask
    read from the TXE's globals: SEND_BTH_QP [23:16] KDETH_QP, SEND_SC2VLT0..3 (the VL of
    each SC, a byte per SC), SEND_LEN_CHECK0/1 (the longest packet of each VL, dwords)

CHECK_ENABLE bit 0 (CheckEnable) turns the register on [inferred: the driver
sets it in every mask and writes 0 for NO_INTEGRITY]; then each set bit
refuses a packet when (its SEND_EGRESS_ERR_INFO bit is the same bit):

    [1]  CheckVL              the PBC's VL has its bit set in CHECK_VL
    [2]  CheckJobKey          a KDETH packet's J_Key & mask != value & mask, unless it
                              is 0xFFFF and AllowPermissive is set [inferred: the
                              permissive J_Key]; one too short to carry KDETH
    [3]  CheckPartitionKey    the P_Key (BTH, or the 16B LRH) does not match CHECK_PARTITION_KEY
                              as egress_pkey_check matches: low 15 bits equal, and a
                              full-member packet needs a full-member key
    [4]  CheckSLID            9B: SLID & mask != value; the permissive SLID passes on
                              SC 15 [inferred: the SMA answers directed-route SMPs from it]
    [5]  CheckOpcode          9B with a BTH: opcode & mask != value & mask
    [6]  CheckVLMapping       9B: SEND_SC2VLT[SC] != PBC.VL (SC[4] from PBC.DcInfo)
    [7]  CheckBypassVLMapping 16B: SEND_SC2VLT[LRH.SC] != PBC.VL
    [8]  DisallowRaw          LNH 0 (raw)             [9]  DisallowRawIPv6   LNH 1
    [10] DisallowGRH          LNH 3                   [11] DisallowBypass    PBC.PacketBypass (16B)
    [12] DisallowKDETHPackets BTH.DestQP[23:16] == KDETH_QP
    [13] DisallowNonKDETHPackets  any other 9B packet
    [14] DisallowTooSmallIB   9B shorter than its LRH (+ GRH) (+ BTH)
    [15] DisallowTooSmallBypass  16B shorter than its LRH
    [16] DisallowPbcTest      PBC.TestBadIcrc or PBC.TestEbp
    [17] DisallowBadPktLen    9B: LRH.PktLen != the PBC's length - PBC + ICRC
    [18] DisallowTooLongIB    9B: LRH.PktLen beyond SEND_LEN_CHECK[PBC.VL] (0: no limit)
    [19] DisallowTooLongBypass   16B: the PBC's length beyond SEND_LEN_CHECK[PBC.VL]
    [20] DisallowPbcStaticRateControl  PBC.StaticRateCount != 0
    [21] DisallowBypassBadPktLen  16B: LRH.LEN (flits) does not cover the packet
                              [inferred; reported as BadPktLen, INFO has no bit of its own]

An SDMA engine's CHECK_ENABLE has no bits 10-13 or 16. Every enabled check
is evaluated; `refused` returns the INFO bits of all that failed (0: the
packet may go). What a refusal does is the caller's: a send context halts
(pio.py), an SDMA engine drops the packet and goes on (sdma.py).

What the driver enables (6.12, cap_mask default):

    context           CHECK_ENABLE                                 CHECK_VL      OPCODE
    kernel (verbs)    base + JobKey                                0x8000        off
    VL15 (SMA), ACK   base + JobKey + DisallowKDETH                0x00FF, 0     off
    user (PSM2)       base + JobKey + PbcTest + NonKDETH + KDETH   0x8000        0xC0/0xC0
                      + Bypass + GRH; SET_PKEY adds PartitionKey and clears
                      DisallowKDETH, so nothing leaves a user context before it
    SDMA engines      base + JobKey + PbcStaticRateControl         0 (J_Key mask 0)
    (base: CheckEnable, VL, SLID, Opcode, VL mappings, Raw, RawIPv6, the length
    checks, and PbcStaticRateControl unless the STATIC_RATE_CTRL cap allows it)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from devmodel.regs import RegisterFile
from devmodel.wire import opa

from .chip_registers import (
    CSR_OFFSETS,
    SEND_BTH_QP,
    SEND_BTH_QP_KDETH_QP_MASK,
    SEND_BTH_QP_KDETH_QP_SHIFT,
    SEND_CTXT_CHECK_ENABLE_CHECK_BYPASS_VL_MAPPING_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_ENABLE_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_JOB_KEY_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_OPCODE_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_PARTITION_KEY_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_SLID_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_VL_MAPPING_SMASK,
    SEND_CTXT_CHECK_ENABLE_CHECK_VL_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_BAD_PKT_LEN_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_BAD_PKT_LEN_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_GRH_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_NON_KDETH_PACKETS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_PBC_STATIC_RATE_CONTROL_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_PBC_TEST_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_IPV6_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_BYPASS_PACKETS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_IB_PACKETS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_BYPASS_PACKETS_SMASK,
    SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_IB_PACKETS_SMASK,
    SEND_CTXT_CHECK_JOB_KEY_ALLOW_PERMISSIVE_SMASK,
    SEND_CTXT_CHECK_JOB_KEY_VALUE_MASK,
    SEND_CTXT_CHECK_OPCODE_MASK_SHIFT,
    SEND_CTXT_CHECK_OPCODE_VALUE_SHIFT,
    SEND_CTXT_CHECK_PARTITION_KEY_VALUE_MASK,
    SEND_CTXT_CHECK_SLID_MASK_MASK,
    SEND_CTXT_CHECK_SLID_MASK_SHIFT,
    SEND_CTXT_CHECK_SLID_VALUE_MASK,
    SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_BYPASS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_GRH_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_JOB_KEY_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_KDETH_PACKETS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_NON_KDETH_PACKETS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_OPCODE_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_PARTITION_KEY_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_PBC_STATIC_RATE_CONTROL_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_PBC_TEST_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_RAW_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_RAW_IPV6_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_SLID_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_TOO_LONG_BYPASS_PACKETS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_TOO_LONG_IB_PACKET_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_TOO_SMALL_BYPASS_PACKETS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_TOO_SMALL_IB_PACKETS_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_VL_ERR_SMASK,
    SEND_EGRESS_ERR_INFO_VL_MAPPING_ERR_SMASK,
    SEND_SC2VLT0,
)
from .csr import KCTXT_STRIDE
from .formats import PBC, PBC_BYTES

#: the permissive J_Key AllowPermissive lets through [inferred]
PERMISSIVE_JKEY = 0xFFFF
PKEY_MEMBER = 0x8000
PKEY_LOW_15 = 0x7FFF
SC2VL_MASK = 0x1F  # SEND_SC2VLTn_SCk: one byte per SC, a 5-bit VL
#: the PBC and header fields the checks read, from their declarations
_VL_SHIFT, _VL_MASK = PBC.shift["vl"], PBC.mask["vl"]
_LENGTH_MASK = PBC.mask["length_dws"]
_DC_INFO = 1 << PBC.shift["dc_info"]
_BYPASS = 1 << PBC.shift["packet_bypass"]
_PBC_TEST = 1 << PBC.shift["test_bad_icrc"] | 1 << PBC.shift["test_ebp"]
_STATIC_RATE = PBC.mask["static_rate_count"] << PBC.shift["static_rate_count"]
_LNH_SHIFT, _LNH_MASK = opa.LRH.shift["lnh"], opa.LRH.mask["lnh"]
_SC_SHIFT, _SC_MASK = opa.LRH.shift["sc"], opa.LRH.mask["sc"]
_SC4 = 1 << opa.LRH.width["sc"]
_PKT_LEN_SHIFT, _PKT_LEN_MASK = opa.LRH.shift["pkt_len"], opa.LRH.mask["pkt_len"]
_SLID_SHIFT, _SLID_MASK = opa.LRH.shift["slid"], opa.LRH.mask["slid"]
_OPCODE_SHIFT, _OPCODE_MASK = opa.BTH.shift["opcode"], opa.BTH.mask["opcode"]
_PKEY_SHIFT, _PKEY_MASK = opa.BTH.shift["pkey"], opa.BTH.mask["pkey"]
_DEST_QP_SHIFT, _DEST_QP_MASK = opa.BTH.shift["dest_qp"], opa.BTH.mask["dest_qp"]
_JKEY_SHIFT, _JKEY_MASK = opa.KDETH1.shift["jkey"], opa.KDETH1.mask["jkey"]
_KDETH1_AT = opa.BTH_BYTES + opa.KDETH0.size  # from the BTH
_16B = {name: (opa.LRH_16B.shift[name], opa.LRH_16B.mask[name]) for name in ("sc", "pkey", "len_flits")}
LNH_RAW, LNH_RAW_IPV6 = 0, 1
FLIT_BYTES = 8
_ENABLED_CACHE = 64


class Frame:
    """The fields of one PBC + packet the checks read, parsed once; a
    field a too-short packet does not reach is None."""

    __slots__ = ("pbc", "vl", "bypass", "data", "lnh", "sc", "pkt_len", "slid", "opcode", "pkey", "kdeth",
                 "jkey", "len_flits", "short")

    def __init__(self, frame: bytes, kdeth_prefix: int):
        self.pbc = pbc = int.from_bytes(frame[:PBC_BYTES], "little")
        self.vl = (pbc >> _VL_SHIFT) & _VL_MASK
        self.bypass = bool(pbc & _BYPASS)
        self.data = data = memoryview(frame)[PBC_BYTES:]  # the checks only read it: no copy
        self.lnh = self.sc = self.pkt_len = self.slid = self.opcode = self.pkey = self.jkey = None
        self.len_flits = None
        self.kdeth = False
        if self.bypass:
            self.short = len(data) < opa.LRH_16B_BYTES
            if not self.short:
                lrh = int.from_bytes(data[:opa.LRH_16B_BYTES], "little")
                self.sc, self.pkey, self.len_flits = ((lrh >> s) & m for s, m in _16B.values())
            return
        if len(data) < opa.LRH_BYTES:
            self.short = True
            return
        lrh = int.from_bytes(data[:opa.LRH_BYTES], "big")
        self.lnh = lnh = (lrh >> _LNH_SHIFT) & _LNH_MASK
        self.sc = (lrh >> _SC_SHIFT) & _SC_MASK | (_SC4 if pbc & _DC_INFO else 0)
        self.pkt_len = (lrh >> _PKT_LEN_SHIFT) & _PKT_LEN_MASK
        self.slid = (lrh >> _SLID_SHIFT) & _SLID_MASK
        if lnh in (LNH_RAW, LNH_RAW_IPV6):
            self.short = False
            return
        bth = opa.LRH_BYTES + (opa.GRH_BYTES if lnh == opa.LNH_GRH else 0)
        self.short = len(data) < bth + opa.BTH_BYTES
        if self.short:
            return
        word = int.from_bytes(data[bth:bth + opa.BTH_BYTES], "big")
        self.opcode = (word >> _OPCODE_SHIFT) & _OPCODE_MASK
        self.pkey = (word >> _PKEY_SHIFT) & _PKEY_MASK
        self.kdeth = bool(kdeth_prefix) and ((word >> _DEST_QP_SHIFT) & _DEST_QP_MASK) >> 16 == kdeth_prefix
        at = bth + _KDETH1_AT
        if self.kdeth and len(data) >= at + opa.KDETH1.size:
            self.jkey = (int.from_bytes(data[at:at + opa.KDETH1.size], "little") >> _JKEY_SHIFT) & _JKEY_MASK

    @property
    def ib(self) -> bool:
        return not self.bypass


class Limits:
    """One context's (or engine's) check registers and the TXE globals they
    are compared with, read when a packet is checked."""

    __slots__ = ("regs", "vl_mask", "job_key", "partition_key", "slid", "opcode", "sc2vl", "max_dwords")

    #: the check registers Limits reads, in this order, as `offsets` gives them
    NAMES = ("VL", "JOB_KEY", "PARTITION_KEY", "SLID", "OPCODE")

    def __init__(self, regs: RegisterFile, offsets: tuple[int, ...], max_dwords: Callable[[int], int]):
        self.regs = regs
        get = regs.get
        vl, job_key, partition_key, slid, opcode = offsets
        self.vl_mask = get(vl)
        self.job_key = get(job_key)
        self.partition_key = get(partition_key) & SEND_CTXT_CHECK_PARTITION_KEY_VALUE_MASK
        self.slid = get(slid)
        self.opcode = get(opcode)
        self.max_dwords = max_dwords

    def vl_of(self, sc: int) -> int:
        return (self.regs.get(SEND_SC2VLT0 + 8 * (sc >> 3)) >> (8 * (sc & 7))) & SC2VL_MASK


def _job_key_refused(p: Frame, c: Limits) -> bool:
    if not p.kdeth:
        return False
    if p.jkey is None:
        return True
    if p.jkey == PERMISSIVE_JKEY and c.job_key & SEND_CTXT_CHECK_JOB_KEY_ALLOW_PERMISSIVE_SMASK:
        return False
    mask = c.job_key >> 16 & SEND_CTXT_CHECK_JOB_KEY_VALUE_MASK
    return (p.jkey ^ c.job_key) & mask != 0


def _partition_key_refused(p: Frame, c: Limits) -> bool:
    if p.pkey is None:
        return False
    if (p.pkey ^ c.partition_key) & PKEY_LOW_15:
        return True
    return bool(p.pkey & PKEY_MEMBER and not c.partition_key & PKEY_MEMBER)


def _slid_refused(p: Frame, c: Limits) -> bool:
    if not p.ib or p.slid is None:
        return False
    if p.slid == opa.PERMISSIVE_LID and p.sc == opa.SC_VL15:
        return False
    mask = c.slid >> SEND_CTXT_CHECK_SLID_MASK_SHIFT & SEND_CTXT_CHECK_SLID_MASK_MASK
    return (p.slid ^ c.slid & SEND_CTXT_CHECK_SLID_VALUE_MASK) & mask != 0


def _opcode_refused(p: Frame, c: Limits) -> bool:
    if p.opcode is None:
        return False
    mask, value = c.opcode >> SEND_CTXT_CHECK_OPCODE_MASK_SHIFT & 0xFF, c.opcode >> SEND_CTXT_CHECK_OPCODE_VALUE_SHIFT
    return (p.opcode ^ value) & mask != 0


def _too_small_ib(p: Frame, _c: Limits) -> bool:
    return p.ib and p.short


def _bad_pkt_len(p: Frame, _c: Limits) -> bool:
    return p.ib and p.pkt_len is not None and p.pkt_len != len(p.data) // 4 + opa.ICRC_BYTES // 4


def _too_long_ib(p: Frame, c: Limits) -> bool:
    limit = c.max_dwords(p.vl)
    return p.ib and p.pkt_len is not None and bool(limit) and p.pkt_len > limit


def _too_long_bypass(p: Frame, c: Limits) -> bool:
    limit = c.max_dwords(p.vl)
    return p.bypass and bool(limit) and (p.pbc & _LENGTH_MASK) - PBC_BYTES // 4 > limit


def _bypass_bad_pkt_len(p: Frame, _c: Limits) -> bool:
    return p.bypass and p.len_flits is not None and p.len_flits * FLIT_BYTES != len(p.data)


@dataclass(frozen=True)
class Check:
    """One CHECK_ENABLE bit: the SEND_EGRESS_ERR_INFO bit a refusal sets, and when it refuses."""

    name: str  # as chip_registers.h names the enable bit
    enable: int
    info: int
    refuses: Callable[[Frame, Limits], bool]


CHECKS = (
    Check("CHECK_VL", SEND_CTXT_CHECK_ENABLE_CHECK_VL_SMASK, SEND_EGRESS_ERR_INFO_VL_ERR_SMASK,
          lambda p, c: bool(c.vl_mask >> p.vl & 1)),
    Check("CHECK_JOB_KEY", SEND_CTXT_CHECK_ENABLE_CHECK_JOB_KEY_SMASK, SEND_EGRESS_ERR_INFO_JOB_KEY_ERR_SMASK,
          _job_key_refused),
    Check("CHECK_PARTITION_KEY", SEND_CTXT_CHECK_ENABLE_CHECK_PARTITION_KEY_SMASK,
          SEND_EGRESS_ERR_INFO_PARTITION_KEY_ERR_SMASK, _partition_key_refused),
    Check("CHECK_SLID", SEND_CTXT_CHECK_ENABLE_CHECK_SLID_SMASK, SEND_EGRESS_ERR_INFO_SLID_ERR_SMASK, _slid_refused),
    Check("CHECK_OPCODE", SEND_CTXT_CHECK_ENABLE_CHECK_OPCODE_SMASK, SEND_EGRESS_ERR_INFO_OPCODE_ERR_SMASK,
          _opcode_refused),
    Check("CHECK_VL_MAPPING", SEND_CTXT_CHECK_ENABLE_CHECK_VL_MAPPING_SMASK, SEND_EGRESS_ERR_INFO_VL_MAPPING_ERR_SMASK,
          lambda p, c: p.ib and p.sc is not None and c.vl_of(p.sc) != p.vl),
    Check("CHECK_BYPASS_VL_MAPPING", SEND_CTXT_CHECK_ENABLE_CHECK_BYPASS_VL_MAPPING_SMASK,
          SEND_EGRESS_ERR_INFO_VL_MAPPING_ERR_SMASK,
          lambda p, c: p.bypass and p.sc is not None and c.vl_of(p.sc) != p.vl),
    Check("DISALLOW_RAW", SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_SMASK, SEND_EGRESS_ERR_INFO_RAW_ERR_SMASK,
          lambda p, _c: p.lnh == LNH_RAW),
    Check("DISALLOW_RAW_IPV6", SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_IPV6_SMASK, SEND_EGRESS_ERR_INFO_RAW_IPV6_ERR_SMASK,
          lambda p, _c: p.lnh == LNH_RAW_IPV6),
    Check("DISALLOW_GRH", SEND_CTXT_CHECK_ENABLE_DISALLOW_GRH_SMASK, SEND_EGRESS_ERR_INFO_GRH_ERR_SMASK,
          lambda p, _c: p.lnh == opa.LNH_GRH),
    Check("DISALLOW_BYPASS", SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_SMASK, SEND_EGRESS_ERR_INFO_BYPASS_ERR_SMASK,
          lambda p, _c: p.bypass),
    Check("DISALLOW_KDETH_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_KDETH_PACKETS_ERR_SMASK, lambda p, _c: p.kdeth),
    Check("DISALLOW_NON_KDETH_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_NON_KDETH_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_NON_KDETH_PACKETS_ERR_SMASK, lambda p, _c: p.ib and not p.kdeth),
    Check("DISALLOW_TOO_SMALL_IB_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_IB_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_TOO_SMALL_IB_PACKETS_ERR_SMASK, _too_small_ib),
    Check("DISALLOW_TOO_SMALL_BYPASS_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_BYPASS_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_TOO_SMALL_BYPASS_PACKETS_ERR_SMASK, lambda p, _c: p.bypass and p.short),
    Check("DISALLOW_PBC_TEST", SEND_CTXT_CHECK_ENABLE_DISALLOW_PBC_TEST_SMASK, SEND_EGRESS_ERR_INFO_PBC_TEST_ERR_SMASK,
          lambda p, _c: bool(p.pbc & _PBC_TEST)),
    Check("DISALLOW_BAD_PKT_LEN", SEND_CTXT_CHECK_ENABLE_DISALLOW_BAD_PKT_LEN_SMASK,
          SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK, _bad_pkt_len),
    Check("DISALLOW_TOO_LONG_IB_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_IB_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_TOO_LONG_IB_PACKET_ERR_SMASK, _too_long_ib),
    Check("DISALLOW_TOO_LONG_BYPASS_PACKETS", SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_BYPASS_PACKETS_SMASK,
          SEND_EGRESS_ERR_INFO_TOO_LONG_BYPASS_PACKETS_ERR_SMASK, _too_long_bypass),
    Check("DISALLOW_PBC_STATIC_RATE_CONTROL", SEND_CTXT_CHECK_ENABLE_DISALLOW_PBC_STATIC_RATE_CONTROL_SMASK,
          SEND_EGRESS_ERR_INFO_PBC_STATIC_RATE_CONTROL_ERR_SMASK, lambda p, _c: bool(p.pbc & _STATIC_RATE)),
    Check("DISALLOW_BYPASS_BAD_PKT_LEN", SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_BAD_PKT_LEN_SMASK,
          SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK, _bypass_bad_pkt_len),
)
#: SEND_EGRESS_ERR_INFO's bits as the driver's log names them (chip.c egress_err_info_flags)
INFO_NAMES = {
    SEND_EGRESS_ERR_INFO_VL_ERR_SMASK: "VLErr", SEND_EGRESS_ERR_INFO_JOB_KEY_ERR_SMASK: "JobKeyErr",
    SEND_EGRESS_ERR_INFO_PARTITION_KEY_ERR_SMASK: "PartitionKeyErr", SEND_EGRESS_ERR_INFO_SLID_ERR_SMASK: "SLIDErr",
    SEND_EGRESS_ERR_INFO_OPCODE_ERR_SMASK: "OpcodeErr", SEND_EGRESS_ERR_INFO_VL_MAPPING_ERR_SMASK: "VLMappingErr",
    SEND_EGRESS_ERR_INFO_RAW_ERR_SMASK: "RawErr", SEND_EGRESS_ERR_INFO_RAW_IPV6_ERR_SMASK: "RawIPv6Err",
    SEND_EGRESS_ERR_INFO_GRH_ERR_SMASK: "GRHErr", SEND_EGRESS_ERR_INFO_BYPASS_ERR_SMASK: "BypassErr",
    SEND_EGRESS_ERR_INFO_KDETH_PACKETS_ERR_SMASK: "KDETHPacketsErr",
    SEND_EGRESS_ERR_INFO_NON_KDETH_PACKETS_ERR_SMASK: "NonKDETHPacketsErr",
    SEND_EGRESS_ERR_INFO_TOO_SMALL_IB_PACKETS_ERR_SMASK: "TooSmallIBPacketsErr",
    SEND_EGRESS_ERR_INFO_TOO_SMALL_BYPASS_PACKETS_ERR_SMASK: "TooSmallBypassPacketsErr",
    SEND_EGRESS_ERR_INFO_PBC_TEST_ERR_SMASK: "PbcTestErr", SEND_EGRESS_ERR_INFO_BAD_PKT_LEN_ERR_SMASK: "BadPktLenErr",
    SEND_EGRESS_ERR_INFO_TOO_LONG_IB_PACKET_ERR_SMASK: "TooLongIBPacketErr",
    SEND_EGRESS_ERR_INFO_TOO_LONG_BYPASS_PACKETS_ERR_SMASK: "TooLongBypassPacketsErr",
    SEND_EGRESS_ERR_INFO_PBC_STATIC_RATE_CONTROL_ERR_SMASK: "PbcStaticRateControlErr",
}


class IntegrityChecker:
    """The checks of one kind of sender: send contexts (`prefix`
    "SEND_CTXT_CHECK") or SDMA engines ("SEND_DMA_CHECK"), index `i`'s
    registers a KCTXT_STRIDE apart. `max_dwords(vl)` is SEND_LEN_CHECK's
    limit (send.Send.max_dwords)."""

    def __init__(self, regs: RegisterFile, prefix: str, max_dwords: Callable[[int], int]):
        self.regs = regs
        self.prefix = prefix
        self.max_dwords = max_dwords
        self.enable_offset = CSR_OFFSETS[f"{prefix}_ENABLE"]
        self.offsets = tuple(CSR_OFFSETS[f"{prefix}_{name}"] for name in Limits.NAMES)
        #: CHECK_ENABLE value -> the checks it turns on (a driver uses a handful of values)
        self._enabled: dict[int, tuple[Check, ...]] = {}

    def enabled(self, enable: int) -> tuple[Check, ...]:
        """The CHECKS a CHECK_ENABLE value turns on, in CHECKS' order."""
        checks = self._enabled.get(enable)
        if checks is None:
            if len(self._enabled) >= _ENABLED_CACHE:
                self._enabled.clear()  # a guest cycling through values: stay bounded
            checks = self._enabled[enable] = tuple(check for check in CHECKS if enable & check.enable)
        return checks

    def refused(self, frame: bytes, index: int) -> int:
        """The SEND_EGRESS_ERR_INFO bits of the checks `frame` (PBC +
        packet) fails on sender `index`; 0 if it may go."""
        regs, base = self.regs, KCTXT_STRIDE * index
        enable = regs.get(self.enable_offset + base)
        if not enable & SEND_CTXT_CHECK_ENABLE_CHECK_ENABLE_SMASK:
            return 0
        kdeth_prefix = (regs.get(SEND_BTH_QP) >> SEND_BTH_QP_KDETH_QP_SHIFT) & SEND_BTH_QP_KDETH_QP_MASK
        packet = Frame(frame, kdeth_prefix)
        limits = Limits(regs, tuple(offset + base for offset in self.offsets), self.max_dwords)
        failed = 0
        for check in self.enabled(enable):
            if check.refuses(packet, limits):
                failed |= check.info
        return failed


def describe(info: int) -> str:
    """SEND_EGRESS_ERR_INFO bits (what `refused` returns) by the driver's names, for log lines."""
    return ", ".join(name for bit, name in INFO_NAMES.items() if info & bit) or "none"
