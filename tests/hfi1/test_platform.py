"""The platform-config file format (construct values) against golden bytes."""
from __future__ import annotations

import pytest
from construct import ChecksumError

from devmodel.hfi1.config import PortType
from devmodel.hfi1.platform import (
    IMAGE_TRAIL_MAGIC,
    P1_START,
    MetadataEntry,
    PlatformConfigFile,
    Record,
    TableType,
    default_platform_config,
    eprom_image,
    field_layout,
)

# QSFP attenuation metadata: reserved, TX_PRESET_IDX at bit 0 (8 bits), RX_PRESET_IDX at bit 8 (8 bits)
QSFP_ATTEN_META = dict(header=dict(table_type=TableType.QSFP_ATTEN, record_idx=0), table=[0, 0x00080000, 0x00080008])
QSFP_ATTEN_META_BYTES = bytes.fromhex(
    "00000350"  # header: type 5, length 3, record 0
    "fffffcaf"  # ~header
    "00000000" "00000800" "08000800"  # the three metadata entries
    "e5e6eb9a"  # CRC-32 of the table
)


def test_metadata_entry_golden():
    assert MetadataEntry.build(dict(start=40, length=4)) == bytes.fromhex("28000400")
    assert MetadataEntry.parse(bytes.fromhex("28000400")) == dict(start=40, length=4)
    assert MetadataEntry.sizeof() == 4


def test_record_golden_round_trip():
    assert Record.build(QSFP_ATTEN_META) == QSFP_ATTEN_META_BYTES
    parsed = Record.parse(QSFP_ATTEN_META_BYTES)
    assert (parsed.header.table_type, parsed.header.table_length, list(parsed.table)) == (5, 3, [0, 0x80000, 0x80008])
    assert Record.build(parsed) == QSFP_ATTEN_META_BYTES


def test_file_golden_round_trip():
    data = PlatformConfigFile.build(dict(records=[QSFP_ATTEN_META]))
    assert data == b"APO=" + bytes.fromhex("08000000") + QSFP_ATTEN_META_BYTES
    assert PlatformConfigFile.build(PlatformConfigFile.parse(data)) == data


def test_corrupt_header_or_table_is_rejected_as_the_driver_would():
    bad_inverse = bytearray(QSFP_ATTEN_META_BYTES)
    bad_inverse[4] ^= 1
    with pytest.raises(ChecksumError):
        Record.parse(bytes(bad_inverse))
    bad_table = bytearray(QSFP_ATTEN_META_BYTES)
    bad_table[12] ^= 1
    with pytest.raises(ChecksumError):
        Record.parse(bytes(bad_table))


@pytest.mark.parametrize("table", list(TableType))
def test_fields_never_straddle_a_dword(table):
    for name, start, length in field_layout(table):
        if length < 32:
            assert start // 32 == (start + length - 1) // 32, name


def test_default_config_carries_metadata_for_every_table_and_data_for_system_and_port():
    parsed = PlatformConfigFile.parse(default_platform_config(PortType.FIXED))
    kinds = [(r.header.table_type, r.header.record_idx) for r in parsed.records]
    assert sorted(k for k, idx in kinds if idx == 0) == [t.value for t in TableType]
    assert sorted(k for k, idx in kinds if idx) == [TableType.SYSTEM, TableType.PORT]
    assert parsed.file_length * 4 == len(default_platform_config(PortType.FIXED))


def test_eprom_image_puts_the_file_in_partition_one_followed_by_the_trailer():
    config = default_platform_config()
    image = eprom_image(config)
    assert image[P1_START:P1_START + len(config)] == config
    assert image[P1_START + len(config):].startswith(IMAGE_TRAIL_MAGIC)
    assert image[P1_START - 4:P1_START] == b"\xff" * 4, "no 'eprm' footer: partition format"
