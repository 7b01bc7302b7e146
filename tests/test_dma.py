"""Guest memory bounds: the device reaches exactly what the client mapped."""
import errno
import os

import pytest

from devmodel.base import DmaError
from emulator.dma import DmaMapError, DmaSpace
from testkit.client import GuestMemory


@pytest.fixture
def space():
    s = DmaSpace(max_maps=4)
    yield s
    s.clear()


@pytest.fixture
def page(space):
    """(memory, region): one page of guest memory, mapped writable at 0x10000."""
    mem = GuestMemory(0x1000)
    yield mem, space.add(0x10000, 0x1000, True, os.dup(mem.fd), 0)
    mem.close()


def test_an_access_spanning_two_adjacent_maps_is_served_from_both(space):
    mem = GuestMemory(0x2000)
    space.add(0x10000, 0x1000, True, os.dup(mem.fd), 0)
    space.add(0x11000, 0x1000, True, os.dup(mem.fd), 0x1000)
    space.write(0x10FFC, b"abcdefgh")
    assert mem.mem[0xFFC:0x1004] == b"abcdefgh" and space.read(0x10FFC, 8) == b"abcdefgh"
    mem.close()


@pytest.mark.parametrize("addr,length", [(0x0, 4), (0x10FFF, 2), (0xFFFF, 2), ((1 << 64) - 1, 2)])
def test_accesses_outside_the_maps_raise_dma_error(space, page, addr, length):
    with pytest.raises(DmaError):
        space.read(addr, length)


def test_too_many_maps_are_refused(space):
    for i in range(4):
        space.add(i * 0x1000, 0x1000, False, None, 0)
    with pytest.raises(DmaMapError) as e:
        space.add(0x10000, 0x1000, False, None, 0)
    assert e.value.errno == errno.ENOSPC


def test_a_view_reaches_guest_memory_until_its_map_is_removed(space, page):
    mem, _ = page
    view = space.view(0x10100, 16, writable=True)
    view.write(0, b"\1\2\3\4")
    assert mem.mem[0x100:0x104] == b"\1\2\3\4" and view.read(0, 4) == b"\1\2\3\4"
    space.remove(0x10000, 0x1000)
    assert not view.alive
    with pytest.raises(DmaError, match="after its map was removed"):
        view.read(0, 4)
    with pytest.raises(DmaError, match="after its map was removed"):
        view.write(0, b"x")


def test_a_dead_view_never_reaches_the_map_that_replaces_its_own(space):
    old, new = GuestMemory(0x1000), GuestMemory(0x1000)
    space.add(0x10000, 0x1000, True, os.dup(old.fd), 0)
    view = space.view(0x10000, 0x1000, writable=True)
    space.remove(0x10000, 0x1000)
    space.add(0x10000, 0x1000, True, os.dup(new.fd), 0)  # the guest reuses the address
    with pytest.raises(DmaError):
        view.write(0, b"stale")
    assert new.mem[:5] == bytes(5) and old.mem[:5] == bytes(5)
    assert space.read(0x10000, 5) == bytes(5)
    old.close()
    new.close()


def test_unmap_closes_the_mapping_at_once(space, page):
    _, region = page
    space.view(0x10000, 16).read()
    space.remove(0x10000, 0x1000)
    assert region.mapping.closed


def test_a_view_is_bounded_and_a_read_only_one_refuses_writes(space, page):
    view = space.view(0x10000, 16)
    with pytest.raises(DmaError, match="outside the DMA view"):
        view.read(8, 9)
    with pytest.raises(DmaError, match="read-only"):
        view.write(0, b"x")


def test_a_bad_fd_is_refused(space):
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(DmaMapError) as e:
        space.add(0x10000, 0x1000, True, r, 0)
    assert e.value.errno == errno.EINVAL
