"""Words the HFI and its driver exchange through host memory and PIO space.

All little-endian 64-bit words, declared top bit first (chip.h, sdma.h,
common.h):

    PBC (per-packet control, first qword of every packet the host sends)
      63:48 -   47:32 static rate count   31 Intr   30 DcInfo (SC[4])
      29 TestEbp  28 PacketBypass (16B)  27:26 InsertHcrc  25 CreditReturn
      24 InsertBypassIcrc  23 TestBadIcrc  22 FECN  21:16 -  15:12 VL
      11:0 LengthDWs: the packet in dwords, PBC included, ICRC excluded

    SDMA descriptor, qword 0: 63 FIRST  62 LAST  61:48 byte count  47:0 address
                     qword 1: 63:32 AHG update  15:13 AHG mode  12:8 AHG index
                              7:4 AHG header dwords  3:2 generation
                              1 INT_REQ  0 HEAD_TO_HOST

    RHF (receive header flags, the last qword of a header-queue entry)
      63 IcrcErr 62 - 61 EccErr 60 LenErr 59 TidErr 58:56 RcvTypeErr
      55 DcErr 54 DcUncErr 53 KHdrLenErr   (63:53 = error summary)
      52:44 HdrqOffset (dwords)  43:32 EgrOffset (64-byte units)
      31:28 RcvSeq (1..13)  27 DcInfo  26:16 EgrIndex  15 UseEgrBuf
      14:12 RcvType  11:0 PktLen (dwords, LRH through ICRC)

    credit return (DMA'd to SEND_CTXT_CREDIT_RETURN_ADDR + 8 * (ctxt & 7))
      15 due to force  14 due to error  13 due to threshold  12 due to PBC
      11 Status (context halted)  10:0 free counter (blocks, mod 2048)

    RcvArray entry (TID)
      63 WriteEnable  62:40 -  39:36 buffer size code (log2(size / 4 KiB) + 1)
      35:0 address >> 12

And one file format the driver reads and streams to the chip: a firmware
image (`request_firmware`, firmware.c `struct augmented_firmware_file`),
little-endian u32s and integers:

    0x000 CSS header (128 bytes, `struct css_header`): module_type (6),
          header_len (0xa1: dwords of the plain layout's 644-byte prefix),
          header_version (0x10000), module_id, module_vendor (0x8086),
          date (BCD yyyymmdd), size (dwords of the plain layout: prefix +
          payload), key_size, modulus_size (64 dwords), exponent_size (1),
          22 reserved dwords
    0x080 modulus (256)  0x180 exponent (4)  0x184 signature (256)
    0x284 r2 (256)       0x384 mu (8)        0x38C payload
    (r2 and mu are the "augmentation": a plain file lacks them, and the
    driver refuses it)
"""
from __future__ import annotations

from enum import IntEnum

import construct as c

from devmodel.wire.bits import BitFields

Pbc = c.ByteSwapped(c.BitStruct(
    c.Padding(16),
    "static_rate_count" / c.BitsInteger(16),
    "intr" / c.BitsInteger(1),
    "dc_info" / c.BitsInteger(1),
    "test_ebp" / c.BitsInteger(1),
    "packet_bypass" / c.BitsInteger(1),
    "insert_hcrc" / c.BitsInteger(2),
    "credit_return" / c.BitsInteger(1),
    "insert_bypass_icrc" / c.BitsInteger(1),
    "test_bad_icrc" / c.BitsInteger(1),
    "fecn" / c.BitsInteger(1),
    c.Padding(6),
    "vl" / c.BitsInteger(4),
    "length_dws" / c.BitsInteger(12),
))

SdmaDescriptor0 = c.ByteSwapped(c.BitStruct(
    "first" / c.BitsInteger(1),
    "last" / c.BitsInteger(1),
    "byte_count" / c.BitsInteger(14),
    "address" / c.BitsInteger(48),
))
SdmaDescriptor1 = c.ByteSwapped(c.BitStruct(
    "ahg_update" / c.BitsInteger(32),
    c.Padding(16),
    "ahg_mode" / c.BitsInteger(3),
    "ahg_index" / c.BitsInteger(5),
    "ahg_header_dws" / c.BitsInteger(4),
    "generation" / c.BitsInteger(2),
    "int_req" / c.BitsInteger(1),
    "head_to_host" / c.BitsInteger(1),
))
SdmaDescriptor = c.Struct("qw0" / SdmaDescriptor0, "qw1" / SdmaDescriptor1)
SDMA_DESCRIPTOR_BYTES = 16

Rhf = c.ByteSwapped(c.BitStruct(
    "icrc_err" / c.BitsInteger(1),
    c.Padding(1),
    "ecc_err" / c.BitsInteger(1),
    "len_err" / c.BitsInteger(1),
    "tid_err" / c.BitsInteger(1),
    "rcv_type_err" / c.BitsInteger(3),
    "dc_err" / c.BitsInteger(1),
    "dc_unc_err" / c.BitsInteger(1),
    "khdr_len_err" / c.BitsInteger(1),
    "hdrq_offset" / c.BitsInteger(9),
    "egr_offset" / c.BitsInteger(12),
    "rcv_seq" / c.BitsInteger(4),
    "dc_info" / c.BitsInteger(1),
    "egr_index" / c.BitsInteger(11),
    "use_egr_buf" / c.BitsInteger(1),
    "rcv_type" / c.BitsInteger(3),
    "pkt_len" / c.BitsInteger(12),
))

CreditReturn = c.ByteSwapped(c.BitStruct(
    c.Padding(48),
    "due_to_force" / c.BitsInteger(1),
    "due_to_error" / c.BitsInteger(1),
    "due_to_threshold" / c.BitsInteger(1),
    "due_to_pbc" / c.BitsInteger(1),
    "status" / c.BitsInteger(1),
    "counter" / c.BitsInteger(11),
))

RcvArrayEntry = c.ByteSwapped(c.BitStruct(
    "write_enable" / c.BitsInteger(1),
    c.Padding(23),
    "size_code" / c.BitsInteger(4),
    "address_4k" / c.BitsInteger(36),
))

PBC = BitFields("PBC", Pbc, "little")
SDMA_DESC0 = BitFields("SDMA descriptor qword 0", SdmaDescriptor0, "little")
SDMA_DESC1 = BitFields("SDMA descriptor qword 1", SdmaDescriptor1, "little")
RHF = BitFields("RHF", Rhf, "little")
CREDIT_RETURN = BitFields("credit return", CreditReturn, "little")
RCV_ARRAY_ENTRY = BitFields("RcvArray entry", RcvArrayEntry, "little")

RHF_MAX_SEQ = 13
PBC_BYTES = 8


class RcvType(IntEnum):
    """RHF.RcvType."""

    EXPECTED = 0  # KDETH with a TID: payload placed by the RcvArray expected entry
    EAGER = 1  # KDETH without a TID
    IB = 2  # verbs, IPoIB
    ERROR = 3
    BYPASS = 4  # 16B


class InsertHcrc(IntEnum):
    LOCAL_KDETH = 0
    GLOBAL_KDETH = 1
    NONE = 2


CssHeader = c.Struct(
    "module_type" / c.Int32ul,
    "header_len" / c.Int32ul,
    "header_version" / c.Int32ul,
    "module_id" / c.Int32ul,
    "module_vendor" / c.Int32ul,
    "date" / c.Int32ul,
    "size" / c.Int32ul,
    "key_size" / c.Int32ul,
    "modulus_size" / c.Int32ul,
    "exponent_size" / c.Int32ul,
    "reserved" / c.Default(c.Bytes(88), bytes(88)),
)
CSS_HEADER_BYTES = 128
RSA_KEY_BYTES = 256  # key_size and modulus_size are 64 dwords: RSA-2048 only
RSA_MU_BYTES = 8

AugmentedFirmware = c.Struct(
    "css" / CssHeader,
    "modulus" / c.BytesInteger(RSA_KEY_BYTES, swapped=True),
    "exponent" / c.Int32ul,
    "signature" / c.BytesInteger(RSA_KEY_BYTES, swapped=True),
    "r2" / c.BytesInteger(RSA_KEY_BYTES, swapped=True),
    "mu" / c.Int64ul,
    "payload" / c.GreedyBytes,
)
#: sizeof(struct firmware_file) without the payload; the augmented prefix adds r2 and mu
PLAIN_FIRMWARE_PREFIX = CSS_HEADER_BYTES + 2 * RSA_KEY_BYTES + 4
AUGMENTED_FIRMWARE_PREFIX = PLAIN_FIRMWARE_PREFIX + RSA_KEY_BYTES + RSA_MU_BYTES


def rcv_array_buffer_bytes(size_code: int) -> int:
    """An RcvArray entry's buffer size; 0 for an invalid (size code 0) entry."""
    return 0 if size_code == 0 else 4096 << (size_code - 1)
