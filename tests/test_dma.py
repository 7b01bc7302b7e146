"""Guest memory bounds: the device reaches exactly what the client mapped."""
import errno
import os

import pytest

from devmodel.base import DmaError
from emulator.client import GuestMemory
from emulator.dma import DmaMapError, DmaSpace


@pytest.fixture
def space():
    s = DmaSpace(max_maps=4)
    yield s
    s.clear()


def test_an_access_spanning_two_adjacent_maps_is_served_from_both(space):
    mem = GuestMemory(0x2000)
    space.add(0x10000, 0x1000, True, os.dup(mem.fd), 0)
    space.add(0x11000, 0x1000, True, os.dup(mem.fd), 0x1000)
    space.write(0x10FFC, b"abcdefgh")
    assert mem.mem[0xFFC:0x1004] == b"abcdefgh" and space.read(0x10FFC, 8) == b"abcdefgh"
    mem.close()


@pytest.mark.parametrize("addr,length", [(0x0, 4), (0x10FFF, 2), (0xFFFF, 2), ((1 << 64) - 1, 2)])
def test_accesses_outside_the_maps_raise_dma_error(space, addr, length):
    mem = GuestMemory(0x1000)
    space.add(0x10000, 0x1000, True, os.dup(mem.fd), 0)
    with pytest.raises(DmaError):
        space.read(addr, length)
    mem.close()


def test_too_many_maps_are_refused(space):
    for i in range(4):
        space.add(i * 0x1000, 0x1000, False, None, 0)
    with pytest.raises(DmaMapError) as e:
        space.add(0x10000, 0x1000, False, None, 0)
    assert e.value.errno == errno.ENOSPC


def test_numpy_view_is_zero_copy_and_survives_unmap_without_crashing(space):
    mem = GuestMemory(0x1000)
    space.add(0x10000, 0x1000, True, os.dup(mem.fd), 0)
    view = space.view(0x10000, 16, writable=True)
    view[:4] = [1, 2, 3, 4]
    assert mem.mem[:4] == b"\1\2\3\4"
    space.remove(0x10000, 0x1000)
    assert view[:4].tolist() == [1, 2, 3, 4]  # stale but safe
    with pytest.raises(DmaError):
        space.read(0x10000, 1)
    mem.close()


def test_a_bad_fd_is_refused(space):
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(DmaMapError) as e:
        space.add(0x10000, 0x1000, True, r, 0)
    assert e.value.errno == errno.EINVAL
