"""PIO send space and RcvArray in shared memory (`ChipConfig.mapped`; `vfnic
serve --option mmap=pio` offers the PIO space only): the test is the guest, storing
into a bytearray that stands for BAR0's memfd (testkit.host.MappedBar), and
the chip finds completed packets by polling for its sentinels
(devmodel/hfi1/pio.py). Two models driven as the driver does
(testkit/hfi1/datapath.py), on the manual clock."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import PBC
from devmodel.hfi1.pio import POLL_FAST_S, POLL_IDLE_S, SOP_DISTANCE, TXE_PIO_SEND
from devmodel.registry import OptionError, create
from testkit.hfi1.chip import make_device
from testkit.hfi1.datapath import HDRQ_ENTRY_DWORDS, pair, pbc_for, settle, ud_packet
from testkit.host import GUEST_BASE

UD_QP = 0x12  # QP map: context 2
SEND_CTXT_ERR_SOURCE = 32


@pytest.fixture
def fabric():
    with pair(mapped=("pio", "rcvarray")) as (scheduler, a, b):
        yield scheduler, a, b


def delivered(node, ctxt: int = 2) -> int:
    return node.stats()["rcv"]["contexts"].get(ctxt, {}).get("delivered", 0)


def shared(node) -> bytearray:
    return node.driver.host.shared[0]


def window(hw: int, sop: bool = False) -> int:
    return TXE_PIO_SEND + (hw << 16) + (SOP_DISTANCE if sop else 0)


def qwords_of(packet: bytes) -> list[int]:
    frame = pbc_for(packet).to_bytes(8, "little") + packet
    frame += bytes(-len(frame) % 64)
    return [int.from_bytes(frame[i:i + 8], "little") for i in range(0, len(frame), 8)]


def store(node, offset: int, value: int) -> None:
    """One 8-byte guest store into the mapped BAR (no trap)."""
    shared(node)[offset:offset + 8] = value.to_bytes(8, "little")


def halted(node, hw: int) -> bool:
    return bool(node.driver.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK)


# -- the layout --------------------------------------------------------------------------------

def test_the_option_maps_both_halves_of_the_pio_space_the_chip_has_and_the_rcv_array_page_rounded():
    device = create("hfi1", ["mmap=pio"])
    try:
        (bar,) = device.layout().bars
        contexts = device.config.send_contexts
        assert bar.shared and bar.mmap_areas == (
            (TXE_PIO_SEND, contexts << 16), (TXE_PIO_SEND + SOP_DISTANCE, contexts << 16))
    finally:
        device.close()
    with pytest.raises(OptionError, match="rcvarray"):
        create("hfi1", ["mmap=pio,rcvarray"])  # unsound with the driver: no option offers it
    mapped = Hfi1Device(ChipConfig(mapped=("pio", "rcvarray")))
    try:
        (bar,) = mapped.layout().bars
        assert bar.mmap_areas[0] == (cr.RCV_ARRAY, -(-8 * mapped.config.rcv_array_count // 4096) * 4096)
    finally:
        mapped.close()
    plain = Hfi1Device(ChipConfig())
    try:
        (bar,) = plain.layout().bars
        assert not bar.shared and bar.mmap_areas == (), "the default stays trapped"
    finally:
        plain.close()


def test_a_host_without_shared_memory_keeps_everything_trapped():
    device, host = make_device(mapped=("pio", "rcvarray"))  # a FakeHost: shared_memory(0) is None
    try:
        assert host.shared_memory(0) is None
        assert device.pio.qwords is None and device.rcv.rcv_array.base is None
    finally:
        device.close()


# -- PIO -------------------------------------------------------------------------------------------

def test_a_stored_packet_is_launched_exactly_once(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    packet = ud_packet(b.lid, a.lid, UD_QP, b"once" * 25)  # PBC + 128 bytes: 3 blocks
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    assert delivered(b) == 1 and a.stats()["pio"]["packets"] == 1
    settle(a, b, horizon=1.0)  # a second of polls more
    assert delivered(b) == 1 and a.stats()["pio"]["packets"] == 1
    assert a.driver.credit_return(hw)["counter"] == 3
    rhf, _ = b.driver.hdrq_entry(2, 0)
    assert b.driver.eager_bytes(2, rhf, 100) == b"once" * 25


def test_a_half_written_packet_waits_for_its_last_qword(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    qwords = qwords_of(ud_packet(b.lid, a.lid, UD_QP, bytes(100)))  # 3 blocks
    for i, qword in enumerate(qwords[:-1]):  # block 0 through the SOP alias, the rest through the ring
        store(a, window(hw, sop=i < 8) + 8 * i, qword)
    settle(a, b, horizon=0.1)
    assert delivered(b) == 0 and a.stats()["pio"]["packets"] == 0
    store(a, window(hw) + 8 * (len(qwords) - 1), qwords[-1])
    settle(a, b)
    assert delivered(b) == 1


def test_packets_wrap_at_the_end_of_the_ring_and_keep_their_order(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]  # 18 blocks
    tail = b.driver.hdrq_head[2] // HDRQ_ENTRY_DWORDS
    for n in range(9):  # 4 blocks each: the ring wraps inside the 5th, and again
        packet = ud_packet(b.lid, a.lid, UD_QP, bytes([n]) * 200)
        a.driver.pio_copy(hw, pbc_for(packet), packet)
        settle(a, b)
    got = [b.driver.eager_bytes(2, b.driver.hdrq_entry(2, tail + i)[0], 200) for i in range(9)]
    assert got == [bytes([n]) * 200 for n in range(9)]
    assert a.driver.credit_return(hw)["counter"] == 36


def test_packets_stored_back_to_back_leave_in_ring_order_in_one_poll(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    for n in range(4):
        packet = ud_packet(b.lid, a.lid, UD_QP, bytes([n]) * 60)  # 2 blocks each
        a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    got = [b.driver.eager_bytes(2, b.driver.hdrq_entry(2, i)[0], 1) for i in range(4)]
    assert got == [bytes([n]) for n in range(4)] and delivered(b) == 4


@pytest.mark.parametrize("mistake", ["PBC length shorter than a header", "PBC length beyond the ring",
                                     "a new packet inside the last one's blocks"])
def test_a_bad_pbc_halts_the_context_as_when_trapped_and_the_restart_works(fabric, mistake):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    good = ud_packet(b.lid, a.lid, UD_QP, bytes(40))

    def block(index, pbc=None, sop=True):
        for q in range(8):
            store(a, window(hw, sop) + 64 * index + 8 * q, pbc if q == 0 and pbc is not None else 0)

    if mistake == "PBC length shorter than a header":
        block(0, PBC.encode(length_dws=2))
    elif mistake == "PBC length beyond the ring":
        block(0, PBC.encode(length_dws=18 * 16 + 16))
    else:  # the PBC promises 3 blocks, the second starts a new packet
        block(0, PBC.encode(length_dws=40))
        block(1, pbc_for(good))
        block(2, sop=False)
    settle(a, b)
    error = cr.SEND_CTXT_ERR_STATUS_PIO_INCONSISTENT_SOP_ERR_SMASK if "inside" in mistake \
        else cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK
    assert halted(a, hw) and a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_ERR_STATUS) == error
    assert a.driver.read_csr(cr.CCE_INT_STATUS + 8 * ((SEND_CTXT_ERR_SOURCE + hw) // 64)) \
        >> ((SEND_CTXT_ERR_SOURCE + hw) % 64) & 1
    assert a.driver.credit_return(hw)["status"] == 1 and delivered(b) == 0

    a.driver.sc_disable(hw)  # sc_restart: the PIO init re-arms the ring, the garbage is gone
    a.driver.sc_enable(hw)
    a.driver.pio_copy(hw, pbc_for(good), good)
    settle(a, b)
    assert delivered(b) == 1 and a.stats()["pio"]["packets"] == 1 and not a.stats()["internal_errors"]


def test_a_guest_storing_the_sentinel_or_garbage_stalls_only_its_own_context(fabric):
    """A user context (PSM2's) gets the sentinel read back and stored as its
    PBC, then garbage everywhere in its window: it never launches, the poller
    keeps to its bounded work, and a kernel context next to it sends on."""
    scheduler, a, b = fabric
    user, kernel = 10, a.kernel_contexts[0]
    a.driver.sc_open(user, 16, 600)
    sentinel = int.from_bytes(shared(a)[window(user, sop=True):window(user, sop=True) + 8], "little")
    store(a, window(user, sop=True), sentinel)
    for q in range(1, 8):
        store(a, window(user, sop=True) + 8 * q, 0)
    settle(a, b, horizon=0.1)
    assert a.stats()["pio"]["contexts"].get(user, {}).get("packets", 0) == 0 and not halted(a, user)

    garbage = bytes((i * 151 + 7) % 256 for i in range(1 << 16))  # its first PBC: 3591 dwords
    polls = a.stats()["pio"]["mapped"]["polls"]
    for base in (window(user), window(user, sop=True)):
        shared(a)[base:base + (1 << 16)] = garbage
    packet = ud_packet(b.lid, a.lid, UD_QP, b"kernel")
    a.driver.pio_copy(kernel, pbc_for(packet), packet)
    settle(a, b, horizon=0.1)
    assert delivered(b) == 1, "the kernel context is not disturbed"
    assert a.stats()["pio"]["contexts"][kernel]["packets"] == 1
    assert halted(a, user) and a.stats()["pio"]["contexts"][user]["packets"] == 0, \
        "the garbage's PBC is refused at once: a halt of that context only"
    assert 0 < a.stats()["pio"]["mapped"]["polls"] - polls <= 0.1 / POLL_FAST_S + 1, "one poll a period"
    assert not a.stats()["internal_errors"]


@pytest.mark.parametrize("depth,at,payload", [(2047, 1022, 160), (1030, 1020, 720)],
                         ids=["ends beyond the window", "wraps after passing beyond it"])
def test_a_ring_larger_than_its_window_never_reads_the_next_contexts_window(fabric, depth, at, payload):
    """SEND_CTXT_CTRL's depth field reaches 2047 blocks, the window holds
    1024: blocks beyond it are never complete (as when trapped, where no
    store can reach them), so a packet there is never read from context
    hw + 1's window, whether it ends there or wraps to block 0 after it."""
    _, a, b = fabric
    hw = 20
    a.driver.sc_open(hw, depth, 700)
    assert a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL) >> 48 & 0x7FF == depth
    # as if `at` blocks had gone out: the launch point and the driver's fill just before the window's end
    a.device.pio.contexts[hw].launch_at = a.driver.pio_fill[hw] = at
    packet = ud_packet(b.lid, a.lid, UD_QP, bytes(payload))  # 4 or 12 blocks
    a.driver.pio_copy(hw, pbc_for(packet), packet)  # blocks from 1024 on land in hw + 1's window
    settle(a, b, horizon=0.1)
    assert a.stats()["pio"]["packets"] == 0 and delivered(b) == 0 and not halted(a, hw)
    assert not a.stats()["internal_errors"]


def test_a_disabled_context_launches_nothing_and_enabling_it_drops_what_was_stored(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    a.driver.sc_disable(hw)
    packet = ud_packet(b.lid, a.lid, UD_QP, b"stale")
    a.driver.pio_fill[hw] = 0
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b, horizon=0.1)
    assert delivered(b) == 0
    a.driver.write_kctxt_csr(hw, cr.SEND_CTXT_CTRL, a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL) | 1)  # no init
    settle(a, b, horizon=0.1)
    assert delivered(b) == 0, "stores into a disabled context are dropped, as when trapped"


def test_the_poller_backs_off_when_idle_and_a_trapped_access_brings_it_back(fabric):
    scheduler, a, b = fabric
    settle(a, b, horizon=1.0)
    pio = a.device.pio
    assert pio._poll_period == POLL_IDLE_S
    before = pio.polls
    scheduler.advance(1.0)
    assert pio.polls - before <= 1.0 / POLL_IDLE_S + 1, "idle: a few polls a second"
    hw = a.kernel_contexts[0]
    a.driver.read_csr(cr.CCE_REVISION)  # the driver's interrupt handler, say
    packet = ud_packet(b.lid, a.lid, UD_QP, b"soon")
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    scheduler.advance(2 * POLL_FAST_S)
    assert a.stats()["pio"]["packets"] == 1, "launched within two fast periods of the nudge"


# -- RcvArray ------------------------------------------------------------------------------------

def test_a_blank_fill_write_erases_a_mapped_entry_which_makes_mapping_the_rcv_array_unsound(fabric):
    """user_exp_rcv.c's rcv_array_wc_fill stores 0 (no WriteEnable) into a
    live entry of the group; trapped, the chip ignores it; mapped, nothing
    can: the packet for that TID gets TidErr. Why mmap=rcvarray is for
    measurement only (devmodel/hfi1/rcv.py)."""
    from testkit.hfi1.datapath import EAGER_BUFFER_BYTES
    _, a, b = fabric
    entry = 64 * 2  # context 2's first eager buffer
    b.driver.hfi1_put_tid(entry, b.driver.eager_address(2, 0), EAGER_BUFFER_BYTES)
    b.driver.dev.bar_write(0, cr.RCV_ARRAY + 8 * entry, 8, 0)  # rcv_array_wc_fill
    assert b.device.rcv.rcv_array_entry(entry) == 0, "the live entry is gone"
    hw = a.kernel_contexts[0]
    packet = ud_packet(b.lid, a.lid, UD_QP, b"lost")
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    assert b.stats()["rcv"]["contexts"][2].get("dma_error") == 1, "an invalid eager entry: the payload is lost"


def test_an_rcv_array_entry_is_read_from_shared_memory_when_the_packet_lands(fabric):
    """The driver's hfi1_put_tid stores land in shared memory (never
    trapped); an entry changed there takes effect for the next packet."""
    _, a, b = fabric
    trapped = b.device.rcv.rcv_array_write
    calls = []
    b.device.rcv.rcv_array_write = lambda *args: calls.append(args) or trapped(*args)
    entry = 64 * 2  # context 2's first eager buffer (testkit.hfi1.datapath)
    elsewhere = GUEST_BASE + 0x1E00000
    b.driver.hfi1_put_tid(entry, elsewhere, 64 << 10)
    assert calls == [], "RcvArray stores do not trap"
    assert int.from_bytes(shared(b)[cr.RCV_ARRAY + 8 * entry:cr.RCV_ARRAY + 8 * entry + 8], "little") >> 63
    hw = a.kernel_contexts[0]
    packet = ud_packet(b.lid, a.lid, UD_QP, b"\x5a" * 64)
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    settle(a, b)
    assert delivered(b) == 1 and b.memory.read(elsewhere, 64) == b"\x5a" * 64


def test_the_pci_function_hands_its_memfd_to_the_model_and_unmaps_it_on_close(caplog):
    """emulator/pci/function.py: the model's view is the memfd QEMU maps;
    a store that comes trapped anyway lands there too, counted; closing
    leaves no view behind (the memfd can be unmapped)."""
    from emulator.pci.function import PciFunction
    device = create("hfi1", ["mmap=pio"])
    function = PciFunction(device)
    offset = TXE_PIO_SEND + SOP_DISTANCE + (3 << 16)
    function.region_write(0, offset, (0x1234).to_bytes(8, "little"))
    assert function.shared_trapped == 1
    assert device.pio.space[offset - TXE_PIO_SEND:offset - TXE_PIO_SEND + 8] == (0x1234).to_bytes(8, "little")
    assert bytes(function.shared[0].mapping[offset:offset + 8]) == (0x1234).to_bytes(8, "little")
    function.close()
    assert device.pio.space is None and "kept a view" not in caplog.text
