"""Platform configuration image, as `parse_platform_config()` (firmware.c) reads it.

    u32 magic          "APO=" (0x3d4f5041)
    u32 file_length    whole file, in dwords
    record*            until file_length:
        u32 header     [5:0] record index (0 = metadata table, >0 = data table)
                       [27:16] table length in dwords, [31:28] table type
        u32 ~header
        u32 table[length]
        u32 crc        CRC-32 of the table bytes (crc32_le(~0, ...) ^ ~0)

A metadata entry describes field i of its table type: [14:0] start bit,
[31:16] length in bits. The driver reads a field by locating it through the
metadata (`get_platform_config_field`), so the layout below is ours to choose;
it only has to keep every field inside one dword (port and preset tables) or on
whole bytes (system table).

"Empty but well-formed": the driver fetches the metadata pointer of any table
it asks about before it checks the table exists, so an image with a valid
header but missing metadata would make it read near address 0. This image
therefore carries metadata for all six table types, a system table (meta
version 4, which `check_meta_version` requires) and a port table whose values
are the defaults; the preset tables have no data and lookups in them fail
cleanly with -EINVAL. In simulator mode the driver reads only the port type.

The EPROM holds the file in "partition" format: partition 1 (4 KiB at 128 KiB)
starts with the file and the trailer "egamiAPO" marks its end; the last dword
of segment 0 is not the 'eprm' footer magic, so the driver does not look for a
segment directory.
"""
from __future__ import annotations

import zlib
from enum import IntEnum

from construct import (
    Array,
    BitsInteger,
    BitStruct,
    ByteSwapped,
    Checksum,
    Const,
    FixedSized,
    GreedyRange,
    Int32ul,
    Padding,
    Rebuild,
    Struct,
    this,
)

from .config import PortType

PLATFORM_CONFIG_MAGIC = b"APO="
IMAGE_TRAIL_MAGIC = b"egamiAPO"
EPROM_SIZE = 1 << 20  # [uncertain] the driver only reads the first 132 KiB
P0_SIZE = 128 * 1024
P1_START = P0_SIZE
P1_SIZE = 4 * 1024
META_VERSION = 4


class TableType(IntEnum):
    SYSTEM = 1
    PORT = 2
    RX_PRESET = 3
    TX_PRESET = 4
    QSFP_ATTEN = 5
    VARIABLE_SETTINGS = 6


# field layouts, in the order of platform.h's enums (index 0 is reserved)
FIELD_BITS: dict[TableType, tuple[tuple[str, int], ...]] = {
    TableType.SYSTEM: (
        ("NODE_STRING", 512), ("SYSTEM_IMAGE_GUID", 64), ("NODE_GUID", 64), ("REVISION", 32),
        ("VENDOR_OUI", 32), ("META_VERSION", 8), ("DEVICE_ID", 16), ("PARTITION_ENFORCEMENT_CAP", 8),
        ("QSFP_POWER_CLASS_MAX", 8), ("QSFP_ATTENUATION_DEFAULT_12G", 8),
        ("QSFP_ATTENUATION_DEFAULT_25G", 8), ("VARIABLE_TABLE_ENTRIES_PER_PORT", 8),
    ),
    TableType.PORT: (
        ("PORT_TYPE", 8), ("LOCAL_ATTEN_12G", 8), ("LOCAL_ATTEN_25G", 8), ("LINK_SPEED_SUPPORTED", 4),
        ("LINK_WIDTH_SUPPORTED", 4), ("AUTO_LANE_SHEDDING_ENABLED", 4), ("EXTERNAL_LOOPBACK_ALLOWED", 4),
        ("VL_CAP", 4), ("MTU_CAP", 4), ("TX_LANE_ENABLE_MASK", 4), ("LOCAL_MAX_TIMEOUT", 4),
        ("REMOTE_ATTEN_12G", 8), ("REMOTE_ATTEN_25G", 8), ("TX_PRESET_IDX_ACTIVE_NO_EQ", 8),
        ("TX_PRESET_IDX_ACTIVE_EQ", 8), ("RX_PRESET_IDX", 8), ("CABLE_REACH_CLASS", 4),
    ),
    TableType.RX_PRESET: (
        ("QSFP_RX_CDR_APPLY", 1), ("QSFP_RX_EMP_APPLY", 1), ("QSFP_RX_AMP_APPLY", 1),
        ("QSFP_RX_CDR", 1), ("QSFP_RX_EMP", 4), ("QSFP_RX_AMP", 2),
    ),
    TableType.TX_PRESET: (
        ("PRECUR", 8), ("ATTN", 8), ("POSTCUR", 8), ("QSFP_TX_CDR_APPLY", 1), ("QSFP_TX_EQ_APPLY", 1),
        ("QSFP_TX_CDR", 1), ("QSFP_TX_EQ", 4),
    ),
    TableType.QSFP_ATTEN: (("TX_PRESET_IDX", 8), ("RX_PRESET_IDX", 8)),
    TableType.VARIABLE_SETTINGS: (("TX_PRESET_IDX", 8), ("RX_PRESET_IDX", 8)),
}
PORT_TABLE_DWORDS = 4  # per port; the table holds both ports of the ASIC

# -- wire format ---------------------------------------------------------------
MetadataEntry = ByteSwapped(BitStruct("length" / BitsInteger(16), Padding(1), "start" / BitsInteger(15)))
RecordHeader = ByteSwapped(BitStruct(
    "table_type" / BitsInteger(4),
    "table_length" / Rebuild(BitsInteger(12), lambda ctx: len(ctx._.table)),
    Padding(10),
    "record_idx" / BitsInteger(6),
))


def header_word(header) -> int:
    return header.record_idx | header.table_length << 16 | header.table_type << 28


Record = Struct(
    "header" / RecordHeader,
    "header_inverse" / Checksum(Int32ul, lambda word: ~word & 0xFFFFFFFF, lambda ctx: header_word(ctx.header)),
    "table" / Array(this.header.table_length, Int32ul),
    "crc" / Checksum(Int32ul, zlib.crc32, lambda ctx: Array(len(ctx.table), Int32ul).build(ctx.table)),
)


def _file_dwords(ctx) -> int:
    return 2 + sum(3 + len(record["table"]) for record in ctx.records)


PlatformConfigFile = Struct(
    "magic" / Const(PLATFORM_CONFIG_MAGIC),
    "file_length" / Rebuild(Int32ul, _file_dwords),
    "records" / FixedSized(this.file_length * 4 - 8, GreedyRange(Record)),
)


# -- layout ----------------------------------------------------------------------
def field_layout(table: TableType) -> list[tuple[str, int, int]]:
    """(name, start bit, length) per field; a field never straddles a dword."""
    out, position = [], 0
    for name, bits in FIELD_BITS[table]:
        if bits < 32 and position // 32 != (position + bits - 1) // 32:
            position = (position + 31) // 32 * 32
        out.append((name, position, bits))
        position += bits
    return out


def metadata_record(table: TableType) -> dict:
    entries = [0] + [start | length << 16 for _, start, length in field_layout(table)]
    return dict(header=dict(table_type=table, record_idx=0), table=entries)


def pack_fields(table: TableType, values: dict[str, int], dwords: int) -> list[int]:
    words = [0] * dwords
    for name, start, length in field_layout(table):
        value = values.get(name, 0)
        for bit in range(length):  # byte-wide and wider fields may span dwords (system table)
            if value >> bit & 1:
                words[(start + bit) // 32] |= 1 << ((start + bit) % 32)
    return words


def table_dwords(table: TableType) -> int:
    _, start, length = field_layout(table)[-1]
    return (start + length + 31) // 32


def default_platform_config(port_type: PortType = PortType.FIXED, device_id: int = 0x24F0,
                            node_guid: int = 0) -> bytes:
    """A complete, minimal platform configuration for one discrete HFI."""
    system = pack_fields(TableType.SYSTEM, {
        "META_VERSION": META_VERSION, "DEVICE_ID": device_id, "VENDOR_OUI": 0x001175,
        "NODE_GUID": node_guid, "SYSTEM_IMAGE_GUID": node_guid,
    }, table_dwords(TableType.SYSTEM))
    port_values = {"PORT_TYPE": int(port_type), "LINK_SPEED_SUPPORTED": 2, "LINK_WIDTH_SUPPORTED": 8,
                   "VL_CAP": 8, "MTU_CAP": 6, "TX_LANE_ENABLE_MASK": 0xF}
    port = pack_fields(TableType.PORT, port_values, PORT_TABLE_DWORDS) * 2
    records = [metadata_record(t) for t in TableType]
    records += [dict(header=dict(table_type=TableType.SYSTEM, record_idx=1), table=system),
                dict(header=dict(table_type=TableType.PORT, record_idx=1), table=port)]
    return PlatformConfigFile.build(dict(records=records))


def eprom_image(platform_config: bytes) -> bytearray:
    """An otherwise erased flash with the platform config in partition 1."""
    if len(platform_config) + len(IMAGE_TRAIL_MAGIC) > P1_SIZE or IMAGE_TRAIL_MAGIC in platform_config:
        raise ValueError("platform config does not fit partition 1")
    image = bytearray(b"\xff" * EPROM_SIZE)
    image[P1_START:P1_START + len(platform_config)] = platform_config
    end = P1_START + len(platform_config)
    image[end:end + len(IMAGE_TRAIL_MAGIC)] = IMAGE_TRAIL_MAGIC
    return image
