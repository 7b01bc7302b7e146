"""vfio-user wire formats (protocol version 0.0, as QEMU 11.1's client speaks it).

Every message starts with a 16-byte header:

    0       2         4           8         12         16
    +-------+---------+-----------+---------+----------+----- payload ...
    |msg_id | command | msg_size  | flags   | error_no |
    +-------+---------+-----------+---------+----------+
    flags: bits 0-3 type (0 command, 1 reply), 0x10 NO_REPLY, 0x20 ERROR
    msg_size counts the header too; all fields little-endian.

The layouts below are construct values and are the single source of truth.
The message loop handles a BAR access in a few microseconds, which construct's
parser cannot match (7 us even compiled), so each fixed-size layout also gets a
`struct.Struct` derived from its construct declaration (`Fixed`); the
derivation is checked against the declaration when this module loads.
"""
from __future__ import annotations

import array
import socket
from enum import IntEnum, IntFlag

import construct as c

from common.fixed import Fixed

HEADER_SIZE = 16


class Command(IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18



def command_name(command: int) -> str:
    """REGION_READ for 9; messages name what they refuse even when it is no command we know."""
    try:
        return Command(command).name
    except ValueError:
        return f"command {command}"


class MsgFlags(IntFlag):
    TYPE_COMMAND = 0x0
    TYPE_REPLY = 0x1
    NO_REPLY = 0x10
    ERROR = 0x20


MSG_TYPE_MASK = 0xF


class DeviceFlags(IntFlag):
    RESET = 0x1
    PCI = 0x2


class RegionFlags(IntFlag):
    READ = 0x1
    WRITE = 0x2
    MMAP = 0x4
    CAPS = 0x8


class RegionCap(IntEnum):
    SPARSE_MMAP = 1
    TYPE = 2
    MSIX_MAPPABLE = 3


class DmaMapFlags(IntFlag):
    READ = 0x1
    WRITE = 0x2


class DmaUnmapFlags(IntFlag):
    GET_DIRTY_BITMAP = 0x1
    ALL = 0x2


class IrqInfoFlags(IntFlag):
    EVENTFD = 0x1
    MASKABLE = 0x2
    AUTOMASKED = 0x4
    NORESIZE = 0x8


class IrqSetFlags(IntFlag):
    DATA_NONE = 0x1
    DATA_BOOL = 0x2
    DATA_EVENTFD = 0x4
    ACTION_MASK = 0x8
    ACTION_UNMASK = 0x10
    ACTION_TRIGGER = 0x20


IRQ_DATA_MASK = 0x7
IRQ_ACTION_MASK = 0x38


#: BAR0-5, expansion ROM, config space, VGA (VFIO_PCI_NUM_REGIONS)
NUM_REGIONS = 9


class IrqIndex(IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


NUM_IRQS = 5

# --- layouts -------------------------------------------------------------

Header = c.Struct(
    "msg_id" / c.Int16ul,
    "command" / c.Int16ul,
    "msg_size" / c.Int32ul,
    "flags" / c.Int32ul,
    "error_no" / c.Int32ul,
)

Version = c.Struct(
    "major" / c.Int16ul,
    "minor" / c.Int16ul,
    "caps" / c.CString("utf8"),
)

DmaMap = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "offset" / c.Int64ul,
    "address" / c.Int64ul,
    "size" / c.Int64ul,
)

DmaUnmap = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "address" / c.Int64ul,
    "size" / c.Int64ul,
)

DeviceInfo = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "num_regions" / c.Int32ul,
    "num_irqs" / c.Int32ul,
)

RegionInfo = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "index" / c.Int32ul,
    "cap_offset" / c.Int32ul,
    "size" / c.Int64ul,
    "offset" / c.Int64ul,
)

CapHeader = c.Struct(
    "id" / c.Int16ul,
    "version" / c.Int16ul,
    "next" / c.Int32ul,
)

SparseMmapCap = c.Struct(
    "header" / CapHeader,
    "nr_areas" / c.Rebuild(c.Int32ul, c.len_(c.this.areas)),
    "reserved" / c.Const(0, c.Int32ul),
    "areas" / c.Array(c.this.nr_areas, c.Struct("offset" / c.Int64ul, "size" / c.Int64ul)),
)

IrqInfo = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "index" / c.Int32ul,
    "count" / c.Int32ul,
)

IrqSet = c.Struct(
    "argsz" / c.Int32ul,
    "flags" / c.Int32ul,
    "index" / c.Int32ul,
    "start" / c.Int32ul,
    "count" / c.Int32ul,
)

RegionAccess = c.Struct(
    "offset" / c.Int64ul,
    "region" / c.Int32ul,
    "count" / c.Int32ul,
)

#: a REGION_READ or REGION_WRITE up to its data: the header, then the access
#: (a read's request whole; the first 32 bytes of either's reply)
RegionAccessMessage = c.Struct(*Header.subcons, *RegionAccess.subcons)

WriteMultiEntry = c.Struct(
    "offset" / c.Int64ul,
    "region" / c.Int32ul,
    "count" / c.Int32ul,
    "data" / c.Bytes(8),
)

WriteMulti = c.Struct(
    "wr_cnt" / c.Rebuild(c.Int64ul, c.len_(c.this.writes)),
    "writes" / c.Array(c.this.wr_cnt, WriteMultiEntry),
)

WRITE_MULTI_MAX = 200


HEADER = Fixed(Header)
DMA_MAP = Fixed(DmaMap)
DMA_UNMAP = Fixed(DmaUnmap)
DEVICE_INFO = Fixed(DeviceInfo)
REGION_INFO = Fixed(RegionInfo)
IRQ_INFO = Fixed(IrqInfo)
IRQ_SET = Fixed(IrqSet)
REGION_ACCESS = Fixed(RegionAccess)
REGION_ACCESS_MESSAGE = Fixed(RegionAccessMessage)
WRITE_MULTI_COUNT = Fixed(c.Struct(WriteMulti.subcons[0]))
WRITE_MULTI_ENTRY = Fixed(WriteMultiEntry)
assert HEADER.size == HEADER_SIZE and REGION_ACCESS_MESSAGE.size == HEADER_SIZE + REGION_ACCESS.size


def fds_ancillary(fds) -> list[tuple[int, int, bytes]]:
    """File descriptors as sendmsg's SCM_RIGHTS ancillary data."""
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []


def fds_received(ancdata) -> list[int]:
    """The file descriptors in recvmsg's ancillary data."""
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def header(msg_id: int, command: int, payload_size: int, flags: int = 0, error_no: int = 0) -> bytes:
    return HEADER.pack(msg_id, command, HEADER_SIZE + payload_size, flags, error_no)
