"""testdev as a real guest sees it: PCI identity and capabilities through the
guest kernel's own enumeration, and BAR0 register access from guest user
space (vfnic-mmio on /sys/bus/pci/devices/BDF/resource0).

Every assertion is on parsed data: lspci's fields, the helper's numbers.
"""
from __future__ import annotations

import re

import pytest

from devmodel.testdev import BAR0_SIZE, DEVICE_ID, ID, MSIX_VECTORS, SCRATCH, TESTDEV_ID, VENDOR_ID
from images.lab.lspci import PciDevice, lspci
from images.provision.helpers import GuestMmio

pytestmark = pytest.mark.guest

UNASSIGNED_CLASS = 0xFF00
MSIX_TABLE_OFFSET, MSIX_PBA_OFFSET = 0x8000, 0x9000
SCRATCH_PATTERNS = [0x0123_4567_89AB_CDEF, 0, (1 << 64) - 1, 0x8000_0000_0000_0001]


def find_testdev(guest) -> PciDevice:
    devices = lspci(guest, "-d", f"{VENDOR_ID:04x}:{DEVICE_ID:04x}")
    assert len(devices) == 1, f"expected one testdev in the guest, lspci found {len(devices)}"
    return devices[0]


@pytest.fixture(scope="module")
def testdev_guest(module_lab):
    """One guest with one testdev, shared by the checks below (each leaves
    nothing behind that another relies on)."""
    return module_lab.guest(module_lab.server("testdev"))


@pytest.fixture(scope="module")
def bar0(testdev_guest) -> GuestMmio:
    return GuestMmio(testdev_guest, find_testdev(testdev_guest).address)


def test_lspci_shows_testdev_identity_and_capabilities(testdev_guest):
    device = find_testdev(testdev_guest)

    assert (device.vendor, device.device, device.class_code) == (VENDOR_ID, DEVICE_ID, UNASSIGNED_CLASS)
    express = device.capability("Express")
    assert express is not None and "Endpoint" in express.title
    msix = device.capability("MSI-X")
    assert msix is not None
    assert int(re.search(r"Count=(\d+)", msix.title).group(1)) == MSIX_VECTORS
    assert f"BAR=0 offset={MSIX_TABLE_OFFSET:08x}" in msix.details[0]
    assert f"BAR=0 offset={MSIX_PBA_OFFSET:08x}" in msix.details[1]
    assert device.capability("Power Management") is not None
    region = device.regions[0]
    assert (region.space, region.size, region.is_64bit, region.prefetchable) == \
        ("Memory", BAR0_SIZE, True, False)


def test_id_register_reads_testdev_id(bar0):
    assert bar0.read(ID) == TESTDEV_ID


@pytest.mark.parametrize("value", SCRATCH_PATTERNS, ids=hex)
def test_scratch_register_round_trips_64_bit_values(bar0, value):
    bar0.write(SCRATCH, value)
    assert bar0.read(SCRATCH) == value


def test_scratch_register_takes_32_bit_halves(bar0):
    bar0.write(SCRATCH, 0)
    bar0.write(SCRATCH, 0x89AB_CDEF, width=4)
    bar0.write(SCRATCH + 4, 0x0123_4567, width=4)
    assert bar0.read(SCRATCH) == 0x0123_4567_89AB_CDEF
    assert bar0.read(SCRATCH + 4, width=4) == 0x0123_4567


def test_timed_bar_accesses_reach_the_device(bar0, record_property):
    """The bench loop's writes all arrive (the last value written sticks) and
    its timings are plausible; the numbers go into the JUnit properties."""
    count = 200
    writes = bar0.bench("write", SCRATCH, count)
    reads = bar0.bench("read", ID, count)

    assert bar0.read(SCRATCH) == count - 1
    for timing in (writes, reads):
        assert timing["count"] == count and timing["ns_per_access"] > 0
    record_property("write_ns_per_access", writes["ns_per_access"])
    record_property("read_ns_per_access", reads["ns_per_access"])


def test_two_guests_each_drive_their_own_testdev(vfnic_server, boot_guest):
    """One server process, two sockets, two guests booted side by side on the
    same read-only image: each sees only its own device's state."""
    server = vfnic_server("testdev", count=2)
    guests = [boot_guest(socket, wait=False) for socket in server.sockets]
    for guest in guests:
        guest.wait_ready()
        guest.install_helpers()
    bars = [GuestMmio(guest, find_testdev(guest).address) for guest in guests]
    for index, bar in enumerate(bars):
        bar.write(SCRATCH, 0x1111 * (index + 1))
    assert [bar.read(SCRATCH) for bar in bars] == [0x1111, 0x2222]
