"""The PCI function as a guest's PCI core sees it: header, BAR sizing, capability chain, FLR."""
from __future__ import annotations

import struct

from devmodel.testdev import SCRATCH

CONFIG, BAR0 = 7, 0


def cfg(client, offset, size):
    return int.from_bytes(client.read(CONFIG, offset, size), "little")


def capabilities(client) -> dict[int, int]:
    """Walk the capability list from 0x34, as the PCI core does."""
    found, ptr = {}, cfg(client, 0x34, 1)
    while ptr:
        found[cfg(client, ptr, 1)] = ptr
        ptr = cfg(client, ptr + 1, 1)
    return found


def test_header_identifies_testdev(client):
    assert (cfg(client, 0, 2), cfg(client, 2, 2)) == (0x1234, 0x11F0)
    assert cfg(client, 0x09, 3) == 0xFF0000 and cfg(client, 0x0E, 1) == 0
    assert cfg(client, 0x06, 2) & 0x10  # capability list present
    assert cfg(client, 0x3D, 1) == 1  # INTA


def test_bar_sizing_reports_a_64_kib_64_bit_bar(client):
    assert cfg(client, 0x10, 4) & 0xF == 0b0100  # memory, 64-bit, not prefetchable
    client.write(CONFIG, 0x10, b"\xff\xff\xff\xff")
    client.write(CONFIG, 0x14, b"\xff\xff\xff\xff")
    size_mask = cfg(client, 0x10, 4) | cfg(client, 0x14, 4) << 32
    assert (~(size_mask & ~0xF) + 1) & ((1 << 64) - 1) == 64 << 10


def test_no_expansion_rom(client):
    client.write(CONFIG, 0x30, struct.pack("<I", 0xFFFFF800))
    assert cfg(client, 0x30, 4) == 0


def test_capability_chain_is_pm_pcie_msix(client):
    caps = capabilities(client)
    assert set(caps) == {0x01, 0x10, 0x11}
    msix = caps[0x11]
    assert cfg(client, msix + 2, 2) & 0x7FF == 3  # 4 vectors
    assert cfg(client, msix + 4, 4) == 0x8000 and cfg(client, msix + 8, 4) == 0x9000  # BIR 0


def test_pcie_capability_reports_a_gen3_x16_endpoint_with_flr(client):
    pcie = capabilities(client)[0x10]
    assert cfg(client, pcie + 2, 2) & 0xF0 == 0  # endpoint
    assert cfg(client, pcie + 4, 4) & (1 << 28)  # FLR capable
    link_status = cfg(client, pcie + 0x12, 2)
    assert (link_status & 0xF, link_status >> 4 & 0x3F) == (3, 16)


def test_read_only_fields_ignore_writes_and_status_errors_clear_on_write(testdev, client):
    client.write(CONFIG, 0x00, b"\0\0\0\0")
    assert cfg(client, 0, 2) == 0x1234
    testdev.function.config.data[0x07] |= 0x20  # a latched "received master abort"
    client.write(CONFIG, 0x06, b"\x00\x20")
    assert cfg(client, 0x06, 2) & 0x2000 == 0


def test_initiate_flr_resets_the_device_model_and_config_space(testdev, client):
    client.write(CONFIG, 0x04, b"\x06\x00")
    client.write64(BAR0, SCRATCH, 0x1234)
    devctl = capabilities(client)[0x10] + 8
    client.write(CONFIG, devctl, struct.pack("<H", cfg(client, devctl, 2) | 0x8000))
    assert client.read64(BAR0, SCRATCH) == 0
    assert cfg(client, 0x04, 2) == 0 and cfg(client, devctl, 2) & 0x8000 == 0
    assert testdev.function.resets == 1


def test_msix_table_is_served_by_the_function_not_the_model(client):
    client.write(BAR0, 0x8000, struct.pack("<QII", 0xFEE00000, 0x4021, 0))
    assert client.read(BAR0, 0x8000, 16) == struct.pack("<QII", 0xFEE00000, 0x4021, 0)
    assert client.read(BAR0, 0x8010 + 12, 4) == b"\1\0\0\0"  # vector 1 still masked
