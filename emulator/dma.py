"""Guest memory as the device sees it: the client's DMA maps.

QEMU maps guest RAM with DMA_MAP, passing the RAM's memfd; we mmap each such
fd once and serve the device's reads and writes from the mapping. Maps without
an fd (BIOS ROM blocks, the guest's view of mmapped BARs) are recorded so that
overlap checks stay exact, but the device cannot reach them: QEMU 11.1
misplaces the data of server-initiated DMA_READ/DMA_WRITE messages, so we do
not use them.

Every device access is bounds-checked against the maps; an address outside
them raises `DmaError` (the device model turns that into a device error, as
silicon would raise a PCIe completion error). No buffer of a mapping is ever
exported: reads copy out and writes copy in under the map set's lock, so
DMA_UNMAP closes the mapping at once. A `DmaView` (a window a model keeps on
one map) dies with its map: used after the unmap it raises `DmaError`, and it
never reaches a map added later at the same address.
"""
from __future__ import annotations

import bisect
import errno
import mmap
import os
import threading
from dataclasses import dataclass

from devmodel.base import DmaError

from .errors import ErrnoError


class DmaMapError(ErrnoError):
    """A DMA_MAP or DMA_UNMAP the map set refuses."""


@dataclass
class DmaRegion:
    address: int
    size: int
    writable: bool
    mapping: mmap.mmap | None
    delta: int  # where `address` sits inside `mapping` (offset aligned down to a page)
    alive: bool = True  # until DMA_UNMAP (or the client's departure) removes it

    @property
    def end(self) -> int:
        return self.address + self.size

    def release(self) -> None:
        """Called under the map set's lock: no access is in flight."""
        self.alive = False
        if self.mapping is not None:
            self.mapping.close()


class DmaSpace:
    """The set of DMA maps of one client connection. Thread-safe."""

    def __init__(self, max_maps: int = 65535):
        self.max_maps = max_maps
        self._regions: list[DmaRegion] = []  # sorted by address, disjoint
        self._starts: list[int] = []
        self._lock = threading.RLock()
        #: bytes the device read or wrote so far, all maps (`--vcpu-sched auto` watches it)
        self.moved = 0

    # -- the client's side ---------------------------------------------------
    def add(self, address: int, size: int, writable: bool, fd: int | None, offset: int) -> DmaRegion:
        """Map [address, address+size). Takes ownership of `fd` (closed here)."""
        try:
            if size == 0 or address + size > 1 << 64:
                raise DmaMapError(errno.EINVAL, f"DMA map [{address:#x}, +{size:#x}) is empty or wraps")
            with self._lock:
                if len(self._regions) >= self.max_maps:
                    raise DmaMapError(errno.ENOSPC, f"more than {self.max_maps} DMA maps")
                i = bisect.bisect_right(self._starts, address)
                if (i > 0 and self._regions[i - 1].end > address) or (
                    i < len(self._regions) and self._regions[i].address < address + size
                ):
                    raise DmaMapError(errno.EEXIST, f"DMA map [{address:#x}, +{size:#x}) overlaps an existing map")
                mapping, delta = (None, 0) if fd is None else self._mmap(fd, offset, size, writable)
                region = DmaRegion(address, size, writable, mapping, delta)
                self._regions.insert(i, region)
                self._starts.insert(i, address)
                return region
        finally:
            if fd is not None:
                os.close(fd)

    @staticmethod
    def _mmap(fd: int, offset: int, size: int, writable: bool) -> tuple[mmap.mmap, int]:
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise DmaMapError(errno.EBADF, f"DMA map fd is unusable: {e}") from e
        # Touching a page past the end of the file would kill us with SIGBUS.
        if st.st_size < offset + size:
            raise DmaMapError(errno.EINVAL, f"DMA map [{offset:#x}, +{size:#x}) runs past the end of its file ({st.st_size:#x})")
        page = max(mmap.ALLOCATIONGRANULARITY, st.st_blksize if st.st_blksize & (st.st_blksize - 1) == 0 else 0)
        delta = offset % page
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            return mmap.mmap(fd, size + delta, mmap.MAP_SHARED, prot, offset=offset - delta), delta
        except (OSError, ValueError, OverflowError) as e:
            raise DmaMapError(getattr(e, "errno", None) or errno.EINVAL, f"cannot mmap DMA region: {e}") from e

    def remove(self, address: int, size: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, address)
            if i == len(self._regions) or self._regions[i].address != address or self._regions[i].size != size:
                raise DmaMapError(errno.ENOENT, f"no DMA map is exactly [{address:#x}, +{size:#x})")
            region = self._regions.pop(i)
            self._starts.pop(i)
            region.release()

    def clear(self) -> None:
        with self._lock:
            regions, self._regions, self._starts = self._regions, [], []
            for region in regions:
                region.release()

    def __len__(self) -> int:
        return len(self._regions)

    def regions(self) -> list[tuple[int, int, bool, bool]]:
        """(address, size, writable, reachable) of every map, for diagnostics and tests."""
        with self._lock:
            return [(r.address, r.size, r.writable, r.mapping is not None) for r in self._regions]

    # -- the device's side -----------------------------------------------------
    def _pieces(self, addr: int, length: int, write: bool):
        """Yield (region, offset in mapping, n) covering [addr, addr+length)."""
        if length < 0 or addr < 0 or addr + length > 1 << 64:
            raise DmaError(f"DMA access [{addr:#x}, +{length:#x}) is malformed")
        pos, end = addr, addr + length
        while pos < end:
            i = bisect.bisect_right(self._starts, pos) - 1
            region = self._regions[i] if i >= 0 else None
            if region is None or pos >= region.end:
                raise DmaError(f"DMA {'write' if write else 'read'} at {pos:#x} is outside every DMA map")
            if region.mapping is None:
                raise DmaError(f"DMA at {pos:#x} hits a map without a file descriptor (not reachable)")
            if write and not region.writable:
                raise DmaError(f"DMA write at {pos:#x} hits a read-only map")
            n = min(end, region.end) - pos
            yield region, region.delta + pos - region.address, n
            pos += n

    def _within_one(self, addr: int, length: int) -> DmaRegion | None:
        """The one reachable map that holds all of [addr, addr+length), if any
        (the common case: a packet or a descriptor in one guest RAM map)."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and 0 <= length:
            region = self._regions[i]
            if addr + length <= region.address + region.size and region.mapping is not None:
                return region
        return None

    def read(self, addr: int, length: int) -> bytes:
        with self._lock:
            self.moved += length
            region = self._within_one(addr, length)
            if region is not None:
                start = region.delta + addr - region.address
                return region.mapping[start:start + length]
            parts = [r.mapping[o:o + n] for r, o, n in self._pieces(addr, length, False)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def write(self, addr: int, data: bytes) -> None:
        with self._lock:
            self.moved += len(data)
            region = self._within_one(addr, len(data))
            if region is not None and region.writable:
                start = region.delta + addr - region.address
                region.mapping[start:start + len(data)] = data
                return
            pos = 0
            for r, o, n in self._pieces(addr, len(data), True):
                r.mapping[o:o + n] = data[pos:pos + n]
                pos += n

    def view(self, addr: int, length: int, writable: bool = False) -> DmaView:
        """A window on [addr, addr+length), which must lie in one map; it dies
        when that map is removed."""
        with self._lock:
            pieces = list(self._pieces(addr, length, writable))
            if len(pieces) != 1:
                raise DmaError(f"[{addr:#x}, +{length:#x}) spans several DMA maps; use read/write")
            region, _, _ = pieces[0]
            return DmaView(self, region, addr, length, writable and region.writable)


class DmaView:
    """A window of guest memory inside one DMA map, for a model that keeps
    going back to the same buffer (a ring, a status block). Offsets are
    relative to the window. After the map's DMA_UNMAP every access raises
    `DmaError`: the model never sees the old pages or whatever is mapped at
    that address next."""

    def __init__(self, space: DmaSpace, region: DmaRegion, address: int, length: int, writable: bool):
        self._space, self._region = space, region
        self.address, self.length, self.writable = address, length, writable

    @property
    def alive(self) -> bool:
        return self._region.alive

    def _start(self, offset: int, n: int, write: bool) -> int:
        if not self._region.alive:
            raise DmaError(f"DMA view [{self.address:#x}, +{self.length:#x}) used after its map was removed")
        if offset < 0 or n < 0 or offset + n > self.length:
            raise DmaError(f"[{offset:#x}, +{n:#x}) is outside the DMA view of {self.length:#x} bytes")
        if write and not self.writable:
            raise DmaError(f"DMA view [{self.address:#x}, +{self.length:#x}) is read-only")
        return self._region.delta + self.address - self._region.address + offset

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        n = self.length - offset if length is None else length
        with self._space._lock:
            start = self._start(offset, n, False)
            self._space.moved += n
            return self._region.mapping[start:start + n]

    def write(self, offset: int, data: bytes) -> None:
        with self._space._lock:
            start = self._start(offset, len(data), True)
            self._space.moved += len(data)
            self._region.mapping[start:start + len(data)] = data
