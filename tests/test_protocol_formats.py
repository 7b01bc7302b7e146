"""Wire formats: every declaration builds the golden bytes, parses them back, and has the size the spec gives."""
import pytest

from emulator import protocol as p

GOLDEN = [
    (p.Header, dict(msg_id=0x1234, command=9, msg_size=32, flags=0x10, error_no=0),
     "3412" "0900" "20000000" "10000000" "00000000"),
    (p.Version, dict(major=0, minor=0, caps='{"capabilities":{}}'),
     "0000" "0000" + b'{"capabilities":{}}\0'.hex()),
    (p.DmaMap, dict(argsz=32, flags=3, offset=0x1000, address=0xC0000, size=0x20000),
     "20000000" "03000000" "0010000000000000" "00000c0000000000" "0000020000000000"),
    (p.DmaUnmap, dict(argsz=24, flags=2, address=0, size=0),
     "18000000" "02000000" + "00" * 16),
    (p.DeviceInfo, dict(argsz=16, flags=3, num_regions=9, num_irqs=5),
     "10000000" "03000000" "09000000" "05000000"),
    (p.RegionInfo, dict(argsz=32, flags=3, index=7, cap_offset=0, size=4096, offset=0),
     "20000000" "03000000" "07000000" "00000000" "0010000000000000" "0000000000000000"),
    (p.IrqInfo, dict(argsz=16, flags=1, index=2, count=4),
     "10000000" "01000000" "02000000" "04000000"),
    (p.IrqSet, dict(argsz=20, flags=0x24, index=2, start=1, count=1),
     "14000000" "24000000" "02000000" "01000000" "01000000"),
    (p.RegionAccess, dict(offset=0x30, region=7, count=4),
     "3000000000000000" "07000000" "04000000"),
    (p.SparseMmapCap, dict(header=dict(id=1, version=1, next=0), nr_areas=1, reserved=0,
                           areas=[dict(offset=0x1000, size=0xFF000)]),
     "0100" "0100" "00000000" "01000000" "00000000" "0010000000000000" "00f00f0000000000"),
    (p.WriteMulti, dict(wr_cnt=1, writes=[dict(offset=8, region=0, count=4, data=b"\x01\x02\x03\x04\0\0\0\0")]),
     "0100000000000000" "0800000000000000" "00000000" "04000000" "0102030400000000"),
]


@pytest.mark.parametrize("layout,value,golden", GOLDEN, ids=[g[0].__class__.__name__ + str(i) for i, g in enumerate(GOLDEN)])
def test_layout_builds_golden_bytes_and_parses_them_back(layout, value, golden):
    data = bytes.fromhex(golden)
    assert layout.build(value) == data
    parsed = layout.parse(data)
    assert {k: parsed[k] for k in value} == value
    assert layout.build(parsed) == data


@pytest.mark.parametrize("fixed,size", [(p.HEADER, 16), (p.DMA_MAP, 32), (p.DMA_UNMAP, 24), (p.DEVICE_INFO, 16),
                                        (p.REGION_INFO, 32), (p.IRQ_INFO, 16), (p.IRQ_SET, 20), (p.REGION_ACCESS, 16),
                                        (p.WRITE_MULTI_ENTRY, 24)])
def test_fast_codec_agrees_with_its_declaration(fixed, size):
    values = {name: bytes(range(i, i + 8)) if fmt.endswith("s") else (i + 1) * 3
              for i, (name, fmt) in enumerate(zip(fixed.names, _formats(fixed)))}
    assert fixed.size == size
    assert fixed.build(**values) == fixed.declaration.build(values)
    assert fixed.parse(fixed.declaration.build(values)) == values


def test_write_multi_is_parsed_by_codecs_derived_from_its_declaration():
    entries = [dict(offset=8 * i, region=i % 2, count=i + 1, data=bytes(range(i, i + 8))) for i in range(3)]
    message = p.WriteMulti.build(dict(writes=entries))
    (count,) = p.WRITE_MULTI_COUNT.unpack_from(message)
    body = message[p.WRITE_MULTI_COUNT.size:]
    assert count == 3 and len(body) == 3 * p.WRITE_MULTI_ENTRY.size
    assert [dict(zip(p.WRITE_MULTI_ENTRY.names, e)) for e in p.WRITE_MULTI_ENTRY.iter_unpack(body)] == entries


def _formats(fixed):
    import re
    return re.findall(r"\d*[a-zA-Z]", fixed.struct.format[1:])


def test_header_helper_counts_the_header_in_msg_size():
    assert p.HEADER.parse(p.header(7, p.Command.REGION_READ, 16))["msg_size"] == 32


def test_a_region_access_message_is_a_header_then_an_access_in_one_struct():
    value = dict(msg_id=0x1234, command=9, msg_size=32, flags=1, error_no=0, offset=0x30, region=7, count=4)
    golden = bytes.fromhex("3412" "0900" "20000000" "01000000" "00000000" "3000000000000000" "07000000" "04000000")
    assert p.RegionAccessMessage.build(value) == golden == p.REGION_ACCESS_MESSAGE.build(**value)
    assert p.REGION_ACCESS_MESSAGE.parse(golden) == value and p.REGION_ACCESS_MESSAGE.size == 32
