"""vfio-user conformance: the project's client against the server, one scenario per command.

Error paths are asserted by the errno in the server's error reply. Every
scenario ends by checking the connection still answers, because "the server
keeps serving" is part of each error path.
"""
from __future__ import annotations

import errno
import json
import mmap
import os

import pytest

from devmodel.testdev import (
    DMA_CMD,
    DMA_DST,
    DMA_LEN,
    DMA_SRC,
    DMA_STATUS,
    IRQ_VECTOR,
    SCRATCH,
    STATUS_DONE,
    TESTDEV_ID,
)
from emulator.protocol import (
    DMA_MAP,
    DMA_UNMAP,
    IRQ_SET,
    REGION_ACCESS,
    REGION_INFO,
    Command,
    DmaUnmapFlags,
    IrqIndex,
    IrqSetFlags,
    MsgFlags,
    RegionFlags,
    Version,
    header,
)
from testkit.client import Client, VfioUserError, wait_eventfd

BAR0, CONFIG = 0, 7
TRIGGER_EVENTFD = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER


def still_serving(client: Client) -> None:
    assert client.read64(BAR0, 0) == TESTDEV_ID


def refused(errno_: int, fn, *args, **kwargs) -> None:
    with pytest.raises(VfioUserError) as e:
        fn(*args, **kwargs)
    assert e.value.errno == errno_, f"expected {errno.errorcode[errno_]}, got {errno.errorcode.get(e.value.errno)}"


# -- VERSION -------------------------------------------------------------------
def test_version_negotiates_0_0_and_advertises_limits(testdev):
    client = testdev.client(connect=False)
    caps = client.connect()
    assert caps == {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20, "pgsizes": 4096, "max_dma_maps": 65535,
                    "write_multiple": True}
    still_serving(client)


def test_version_reply_fits_in_qemus_request_buffer(testdev):
    """QEMU reads the VERSION reply into its ~214-byte request buffer."""
    client = testdev.client(connect=False)
    request = Version.build(dict(major=0, minor=0, caps=json.dumps({"capabilities": {"max_msg_fds": 16}})))
    reply = client.request(Command.VERSION, request)
    assert 16 + len(reply.payload) <= 214 and reply.payload.endswith(b"\0")


def test_commands_before_version_are_refused_and_version_still_works(testdev):
    client = testdev.client(connect=False)
    refused(errno.EINVAL, client.get_info)
    client.server_caps = json.loads(Version.parse(client.request(Command.VERSION, Version.build(
        dict(major=0, minor=0, caps="{}"))).payload).caps)
    assert client.get_info()["num_regions"] == 9


def test_second_version_is_out_of_state(client):
    refused(errno.EINVAL, client.request, Command.VERSION, Version.build(dict(major=0, minor=0, caps="{}")))
    still_serving(client)


def test_version_with_another_major_is_refused(testdev):
    client = testdev.client(connect=False)
    refused(errno.ENOTSUP, client.request, Command.VERSION, Version.build(dict(major=1, minor=0, caps="{}")))


# -- DMA_MAP / DMA_UNMAP ------------------------------------------------------------
def test_dma_map_with_fd_makes_guest_memory_reachable(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    guest_ram.mem[0x10:0x15] = b"hello"
    assert testdev.function.dma.read(0x100010, 5) == b"hello"
    testdev.function.dma.write(0x100020, b"world")
    assert guest_ram.mem[0x20:0x25] == b"world"


def test_dma_map_at_an_unaligned_file_offset(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x200000, size=0x1000, offset=0x3000)
    guest_ram.mem[0x3008:0x300B] = b"abc"
    assert testdev.function.dma.read(0x200008, 3) == b"abc"


def test_read_only_dma_map_refuses_device_writes(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000, writable=False)
    from devmodel.base import DmaError
    with pytest.raises(DmaError, match="read-only"):
        testdev.function.dma.write(0x100000, b"x")


def test_dma_map_without_fd_is_accepted_but_unreachable(testdev, client):
    client.dma_map(None, 0xC0000, size=0x20000, writable=False)
    assert testdev.function.dma.regions() == [(0xC0000, 0x20000, False, False)]


def test_overlapping_dma_map_is_refused_with_eexist(client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    refused(errno.EEXIST, client.dma_map, guest_ram, 0x1FF000, size=0x2000)
    refused(errno.EEXIST, client.dma_map, None, 0x100000, size=0x1000)
    still_serving(client)


def test_dma_map_past_the_end_of_its_file_is_refused(client, guest_ram):
    refused(errno.EINVAL, client.dma_map, guest_ram, 0x100000, size=guest_ram.size, offset=0x1000)


def test_dma_map_with_unknown_flags_is_refused(client, guest_ram):
    payload = DMA_MAP.build(argsz=32, flags=0x80, address=0x1000, size=0x1000)
    refused(errno.EINVAL, client.request, Command.DMA_MAP, payload, (guest_ram.fd,))


def test_dma_unmap_releases_exact_maps_only(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    refused(errno.ENOENT, client.dma_unmap, 0x100000, 0x1000)
    client.dma_unmap(0x100000, guest_ram.size)
    assert testdev.function.dma.regions() == []


def test_dma_unmap_all(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000, size=0x1000)
    client.dma_map(guest_ram, 0x200000, size=0x1000, offset=0x1000)
    client.dma_unmap(0, 0, DmaUnmapFlags.ALL)
    assert len(testdev.function.dma) == 0


def test_dma_unmap_dirty_bitmap_is_not_supported(client):
    refused(errno.ENOTSUP, client.dma_unmap, 0, 0x1000, DmaUnmapFlags.GET_DIRTY_BITMAP)


# -- DEVICE_GET_INFO / GET_REGION_INFO / GET_IRQ_INFO --------------------------------------
def test_get_info_reports_a_resettable_pci_device(client):
    assert client.get_info() == {"argsz": 16, "flags": 3, "num_regions": 9, "num_irqs": 5}


def test_region_info_describes_bars_config_and_absent_regions(client):
    bar0, _, _ = client.region_info(0)
    config, _, _ = client.region_info(7)
    assert (bar0["size"], bar0["flags"]) == (64 << 10, RegionFlags.READ | RegionFlags.WRITE)
    assert (config["size"], config["flags"]) == (4096, RegionFlags.READ | RegionFlags.WRITE)
    assert [client.region_info(i)[0]["size"] for i in (1, 2, 3, 4, 5, 6, 8)] == [0] * 7
    refused(errno.EINVAL, client.region_info, 9)


def test_shared_memory_bar_comes_with_sparse_mmap_and_an_fd(serve):
    shm = serve("testdev-shm")
    client = shm.client()
    short = REGION_INFO.parse(client.request(Command.DEVICE_GET_REGION_INFO, REGION_INFO.build(argsz=32, index=2)).payload)
    assert short["argsz"] > 32 and not short["flags"] & RegionFlags.CAPS  # ask again with room for caps
    info, areas, fds = client.region_info(2)
    assert info["flags"] == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP | RegionFlags.CAPS
    assert areas == [(0x1000, (1 << 20) - 0x1000)] and len(fds) == 1
    bar = mmap.mmap(fds[0], info["size"], mmap.MAP_SHARED)
    bar[0x2000:0x2004] = b"\x11\x22\x33\x44"  # the guest's direct store ...
    assert client.read(2, 0x2000, 4) == b"\x11\x22\x33\x44"  # ... is what a trapped read sees
    bar.close()
    os.close(fds[0])
    client.close()


def test_irq_info_counts_vectors_per_index(client):
    counts = {i: client.irq_info(i)["count"] for i in IrqIndex}
    assert counts == {IrqIndex.INTX: 1, IrqIndex.MSI: 0, IrqIndex.MSIX: 4, IrqIndex.ERR: 1, IrqIndex.REQ: 1}
    refused(errno.EINVAL, client.irq_info, 5)


# -- DEVICE_SET_IRQS ---------------------------------------------------------------------
def start_copy(client, guest_ram_base, vector):
    client.write64(BAR0, DMA_SRC, guest_ram_base)
    client.write64(BAR0, DMA_DST, guest_ram_base + 0x1000)
    client.write64(BAR0, DMA_LEN, 16)
    client.write64(BAR0, IRQ_VECTOR, vector)
    client.write64(BAR0, DMA_CMD, 1)


def test_msix_vector_fires_its_eventfd(client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    efd = client.enable_msix(3)
    start_copy(client, 0x100000, 3)
    assert wait_eventfd(efd, 5.0) == 1
    os.close(efd)


def test_msix_vector_without_fd_latches_pending_and_fires_on_assignment(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    client.set_irqs(IrqIndex.MSIX, TRIGGER_EVENTFD, 0, 1)  # "enabled, no vectors", as QEMU does
    start_copy(client, 0x100000, 1)
    testdev.model.worker.settle()
    assert client.read64(BAR0, 0x9000) == 0b10  # PBA bit of vector 1
    efd = client.enable_msix(1)
    assert wait_eventfd(efd, 5.0) == 1 and client.read64(BAR0, 0x9000) == 0
    os.close(efd)


def test_disabling_msix_releases_its_eventfds(testdev, client):
    efd = client.enable_msix(0)
    client.set_irqs(IrqIndex.MSIX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 0)
    assert testdev.function.irq.state(IrqIndex.MSIX) == {"enabled": False, "vectors_with_fd": [], "masked": []}
    os.close(efd)


def test_intx_mask_and_unmask(testdev, client):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_irqs(IrqIndex.INTX, TRIGGER_EVENTFD, 0, 1, (efd,))
    client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 0, 1)
    assert testdev.function.irq.state(IrqIndex.INTX)["masked"] == [0]
    client.set_irqs(IrqIndex.INTX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
    assert testdev.function.irq.state(IrqIndex.INTX) == {"enabled": True, "vectors_with_fd": [0], "masked": []}
    os.close(efd)


def test_err_eventfd_is_accepted(testdev, client):
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_irqs(IrqIndex.ERR, TRIGGER_EVENTFD, 0, 1, (efd,))
    testdev.function.irq.error()
    assert wait_eventfd(efd, 1.0) == 1
    os.close(efd)


@pytest.mark.parametrize("index,flags,start,count,nfds,why", [
    (5, TRIGGER_EVENTFD, 0, 1, 1, "index beyond REQ"),
    (IrqIndex.MSIX, TRIGGER_EVENTFD, 3, 2, 2, "vectors beyond the table"),
    (IrqIndex.MSIX, TRIGGER_EVENTFD, 0, 2, 1, "fewer fds than vectors"),
    (IrqIndex.MSIX, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 1, 1, "fds without DATA_EVENTFD"),
    (IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 1, 0, "two data types"),
    (IrqIndex.MSIX, IrqSetFlags.DATA_NONE, 0, 1, 0, "no action"),
    (IrqIndex.MSIX, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK, 0, 0, 0, "count 0 with a non-disable action"),
])
def test_set_irqs_refuses_inconsistent_requests(testdev, client, index, flags, start, count, nfds, why):
    fds = tuple(os.eventfd(0) for _ in range(nfds))
    refused(errno.EINVAL, client.set_irqs, index, flags, start, count, fds)
    for fd in fds:
        os.close(fd)
    assert testdev.function.irq.state(IrqIndex.MSIX)["vectors_with_fd"] == []
    still_serving(client)


# -- REGION_READ / REGION_WRITE / REGION_WRITE_MULTI -------------------------------------------
def test_config_space_is_read_whole_in_one_message(client):
    config = client.read(CONFIG, 0, 4096)
    assert len(config) == 4096 and config[0:4] == bytes.fromhex("3412f011")


def test_posted_writes_are_applied_in_order_before_a_later_read(client):
    for value in range(1, 200):
        client.write64(BAR0, SCRATCH, value, posted=True)
    assert client.read64(BAR0, SCRATCH) == 199


def test_sub_word_accesses_merge_into_the_register(client):
    client.write64(BAR0, SCRATCH, 0x1122334455667788)
    client.write(BAR0, SCRATCH + 4, b"\xaa\xbb")
    assert client.read64(BAR0, SCRATCH) == 0x1122BBAA55667788
    assert client.read(BAR0, SCRATCH + 1, 1) == b"\x77"


def test_region_access_out_of_bounds_is_refused(client):
    refused(errno.EINVAL, client.read, BAR0, (64 << 10) - 4, 8)
    refused(errno.EINVAL, client.read, 3, 0, 4)  # absent BAR
    refused(errno.EINVAL, client.write, CONFIG, 4095, b"\0\0")
    refused(errno.E2BIG, client.read, CONFIG, 0, (1 << 20) + 1)
    still_serving(client)


def test_write_multi_applies_every_write_in_order(client):
    client.write_multi([(BAR0, SCRATCH, (i).to_bytes(8, "little")) for i in range(200)])
    assert client.read64(BAR0, SCRATCH) == 199


def test_write_multi_with_more_than_200_writes_is_dropped_whole(client):
    client.write64(BAR0, SCRATCH, 7)
    client.write_multi([(BAR0, SCRATCH, b"\x01")] * 201)
    assert client.read64(BAR0, SCRATCH) == 7


# -- DEVICE_RESET / unsupported commands ----------------------------------------------------------
def test_device_reset_restores_registers_and_keeps_dma_maps(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    client.write64(BAR0, SCRATCH, 0x55)
    client.write(CONFIG, 0x04, b"\x06\x00")  # memory + bus master
    client.reset()
    assert client.read64(BAR0, SCRATCH) == 0 and client.read(CONFIG, 0x04, 2) == b"\0\0"
    assert len(testdev.function.dma) == 1


@pytest.mark.parametrize("command,errno_", [
    (Command.DEVICE_FEATURE, errno.ENOTTY),
    (Command.DEVICE_GET_REGION_IO_FDS, errno.ENOTSUP),
    (Command.MIG_DATA_READ, errno.ENOTSUP),
    (Command.DMA_READ, errno.EINVAL),
    (14, errno.ENOSYS),
    (999, errno.ENOSYS),
])
def test_commands_we_do_not_serve_get_a_clear_errno(client, command, errno_):
    refused(errno_, client.request, command, bytes(16))
    still_serving(client)


# -- malformed messages ----------------------------------------------------------------------------
def _hdr(command, payload, flags=0, size=None, msg_id=0x4242):
    data = header(msg_id, command, len(payload), flags) + payload
    if size is not None:
        data = data[:4] + size.to_bytes(4, "little") + data[8:]
    return data


MALFORMED = [
    ("get_info payload truncated", Command.DEVICE_GET_INFO, b"\x10\0", errno.EINVAL),
    ("get_info argsz too small", Command.DEVICE_GET_INFO, (8).to_bytes(4, "little") + bytes(12), errno.EINVAL),
    ("region_info truncated", Command.DEVICE_GET_REGION_INFO, bytes(20), errno.EINVAL),
    ("region_info argsz too small", Command.DEVICE_GET_REGION_INFO, REGION_INFO.build(argsz=16, index=0), errno.EINVAL),
    ("region_info index huge", Command.DEVICE_GET_REGION_INFO, REGION_INFO.build(argsz=32, index=0xFFFFFFFF), errno.EINVAL),
    ("irq_info truncated", Command.DEVICE_GET_IRQ_INFO, bytes(4), errno.EINVAL),
    ("set_irqs truncated", Command.DEVICE_SET_IRQS, bytes(12), errno.EINVAL),
    ("set_irqs DATA_BOOL without bools", Command.DEVICE_SET_IRQS,
     IRQ_SET.build(argsz=20, flags=IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_TRIGGER, index=2, start=0, count=2), errno.EINVAL),
    ("region_read truncated", Command.REGION_READ, bytes(10), errno.EINVAL),
    ("region_read count 0", Command.REGION_READ, REGION_ACCESS.pack(0, 0, 0), errno.EINVAL),
    ("region_read offset wraps", Command.REGION_READ, REGION_ACCESS.pack((1 << 64) - 4, 0, 8), errno.EINVAL),
    ("region_write data shorter than count", Command.REGION_WRITE, REGION_ACCESS.pack(8, 0, 8) + b"\1\2", errno.EINVAL),
    ("region_write data longer than count", Command.REGION_WRITE, REGION_ACCESS.pack(8, 0, 2) + bytes(8), errno.EINVAL),
    ("region_write to absent region", Command.REGION_WRITE, REGION_ACCESS.pack(0, 8, 4) + bytes(4), errno.EINVAL),
    ("write_multi without count", Command.REGION_WRITE_MULTI, b"\1", errno.EINVAL),
    ("write_multi count disagrees with size", Command.REGION_WRITE_MULTI, (3).to_bytes(8, "little") + bytes(24), errno.EINVAL),
    ("write_multi entry of 9 bytes", Command.REGION_WRITE_MULTI,
     (1).to_bytes(8, "little") + REGION_ACCESS.pack(8, 0, 9) + bytes(8), errno.EINVAL),
    ("dma_map truncated", Command.DMA_MAP, bytes(16), errno.EINVAL),
    ("dma_map size 0", Command.DMA_MAP, DMA_MAP.build(argsz=32, flags=3, address=0x1000, size=0), errno.EINVAL),
    ("dma_map wraps the address space", Command.DMA_MAP,
     DMA_MAP.build(argsz=32, flags=3, address=(1 << 64) - 0x1000, size=0x2000), errno.EINVAL),
    ("dma_map argsz too small", Command.DMA_MAP, DMA_MAP.build(argsz=8, flags=3, address=0x1000, size=0x1000), errno.EINVAL),
    ("dma_unmap truncated", Command.DMA_UNMAP, bytes(8), errno.EINVAL),
    ("dma_unmap ALL with an address", Command.DMA_UNMAP,
     DMA_UNMAP.build(argsz=24, flags=2, address=0x1000, size=0x1000), errno.EINVAL),
    ("dma_unmap unknown flag", Command.DMA_UNMAP, DMA_UNMAP.build(argsz=24, flags=0x40), errno.EINVAL),
    ("reset carrying a payload is fine but an unknown command is not", 0x7FFF, b"", errno.ENOSYS),
]


@pytest.mark.parametrize("why,command,payload,errno_", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_message_gets_an_error_reply_and_the_server_goes_on(client, why, command, payload, errno_):
    client.send_raw(_hdr(command, payload))
    msg_id, reply = client.receive()
    assert msg_id == 0x4242 and reply.flags & MsgFlags.ERROR and reply.error_no == errno_, why
    assert reply.payload == b""  # an error reply is the header alone
    still_serving(client)


def test_reply_type_messages_from_the_client_are_refused(client):
    client.send_raw(_hdr(Command.DEVICE_GET_INFO, bytes(16), flags=MsgFlags.TYPE_REPLY))
    _, reply = client.receive()
    assert reply.error_no == errno.EINVAL
    still_serving(client)


def test_fds_on_a_message_that_takes_none_are_closed_and_refused(client):
    efd = os.eventfd(0)
    client.send_raw(_hdr(Command.DEVICE_GET_INFO, (16).to_bytes(4, "little") + bytes(12)), (efd,))
    _, reply = client.receive()
    assert reply.error_no == errno.EINVAL
    os.close(efd)
    still_serving(client)


def test_too_many_fds_are_refused(client):
    fds = tuple(os.eventfd(0) for _ in range(12))
    client.send_raw(_hdr(Command.DEVICE_SET_IRQS, IRQ_SET.build(argsz=20, flags=TRIGGER_EVENTFD, index=2, start=0, count=4)), fds)
    _, reply = client.receive()
    assert reply.error_no == errno.EINVAL
    for fd in fds:
        os.close(fd)
    still_serving(client)


def test_posted_malformed_message_gets_no_reply(client):
    client.send_raw(_hdr(Command.REGION_READ, bytes(3), flags=MsgFlags.NO_REPLY))
    still_serving(client)  # the next reply is for this read, not an error for the posted message


@pytest.mark.parametrize("size", [0, 15, (1 << 20) + 8192, 0xFFFFFFFF])
def test_unframeable_size_ends_the_connection_and_the_next_client_is_served(testdev, client, size):
    client.send_raw(_hdr(Command.DEVICE_GET_INFO, b"", size=size))
    with pytest.raises(ConnectionError):
        client.receive()
    fresh = testdev.client()
    still_serving(fresh)
    fresh.close()


# -- disconnects --------------------------------------------------------------------------------------
def test_disconnect_mid_message_releases_everything_and_the_next_client_is_served(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    efd = client.enable_msix(0)
    client.send_raw(_hdr(Command.REGION_WRITE, REGION_ACCESS.pack(8, 0, 8) + bytes(8))[:20])  # half a message
    client.close()
    second = testdev.client()
    still_serving(second)
    assert len(testdev.function.dma) == 0
    assert testdev.function.irq.state(IrqIndex.MSIX)["vectors_with_fd"] == []
    assert testdev.server.clients == 2
    second.close()
    os.close(efd)


def test_device_state_survives_a_reconnect(testdev, client):
    client.write64(BAR0, SCRATCH, 0xABCD)
    client.close()
    again = testdev.client()
    assert again.read64(BAR0, SCRATCH) == 0xABCD
    again.close()


# -- testdev's DMA engine through the protocol -----------------------------------------------------------
def test_dma_to_an_unmapped_address_sets_error_not_done(testdev, client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    efd = client.enable_msix(0)
    client.write64(BAR0, DMA_SRC, 0x100000)
    client.write64(BAR0, DMA_DST, 0xDEAD0000)
    client.write64(BAR0, DMA_LEN, 64)
    client.write64(BAR0, DMA_CMD, 1)
    assert wait_eventfd(efd, 5.0) == 1
    assert client.read64(BAR0, DMA_STATUS) == 0b10
    os.close(efd)


def test_dma_copy_lands_in_guest_memory(client, guest_ram):
    client.dma_map(guest_ram, 0x100000)
    efd = client.enable_msix(0)
    guest_ram.mem[0:16] = bytes(range(16))
    start_copy(client, 0x100000, 0)
    assert wait_eventfd(efd, 5.0) == 1
    assert guest_ram.mem[0x1000:0x1010] == bytes(range(16))
    assert client.read64(BAR0, DMA_STATUS) == STATUS_DONE
    client.write64(BAR0, DMA_STATUS, STATUS_DONE)
    assert client.read64(BAR0, DMA_STATUS) == 0
    os.close(efd)
