"""`pio-launch=inline` (devmodel/hfi1/pio.py): a store that completes a small
PIO packet at the launch point launches it on the store's own thread, with
the same checks, egress and credit return as the launcher's chip event;
everything else still goes through the engine, and packets of a context
leave in ring order either way.

Two models back to back on one ManualScheduler (testkit/hfi1/datapath.py):
what leaves before the scheduler runs left on the store's thread."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import PBC
from devmodel.hfi1.pio import INLINE_MAX_BLOCKS, LAUNCH_MODES, PIO_BLOCK
from testkit.hfi1.datapath import HDRQ_ENTRY_DWORDS, pair, pbc_for, settle, ud_packet

UD_QP = 0x12  # QP map: context 2
USER_CTXT, USER_SC = 3, 40  # a user context as ASSIGN_CTXT opens it (test_send_integrity's)
SEND_CTXT_ERR_SOURCE = 32
#: a UD packet's bytes besides its payload, PBC included
OVERHEAD = 8 + 8 + 12 + 8


@pytest.fixture
def fabric():
    with pair() as (scheduler, a, b):
        yield scheduler, a, b


def inline(*nodes) -> None:
    for node in nodes:
        node.device.set_option("pio-launch", "inline")


def packet_of(a, b, blocks: int, marker: int = 0) -> bytes:
    """A UD packet that fills exactly `blocks` 64-byte blocks with its PBC,
    its payload bytes all `marker`."""
    return ud_packet(b.lid, a.lid, UD_QP, bytes([marker]) * (PIO_BLOCK * blocks - OVERHEAD))


def sent(node) -> int:
    return node.device.port.sent


def arrived(node, count: int) -> list[int]:
    """The first payload byte of the last `count` packets context 2 received, in order."""
    tail = node.driver.hdrq_head[2] // HDRQ_ENTRY_DWORDS
    return [node.driver.eager_bytes(2, node.driver.hdrq_entry(2, tail + i)[0], 1)[0] for i in range(count)]


def test_a_one_block_packet_leaves_on_the_stores_thread_without_the_scheduler(fabric):
    scheduler, a, b = fabric
    inline(a)
    hw = a.kernel_contexts[0]
    packet = packet_of(a, b, 1, marker=7)
    jobs = scheduler.jobs_run
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    assert sent(a) == 1, "on the link before any chip event ran"
    assert scheduler.jobs_run == jobs
    assert a.stats()["pio"]["inline_launches"] == 1
    settle(a, b)
    assert arrived(b, 1) == [7]


def test_without_inline_the_same_packet_waits_for_the_engine(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    packet = packet_of(a, b, 1)
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    assert sent(a) == 0 and a.stats()["pio"]["launch"] == "engine"
    settle(a, b)
    assert sent(a) == 1 and a.stats()["pio"]["inline_launches"] == 0


@pytest.mark.parametrize("blocks,on_the_stores_thread", [(INLINE_MAX_BLOCKS, True), (INLINE_MAX_BLOCKS + 1, False)])
def test_only_packets_of_at_most_inline_max_blocks_skip_the_engine(fabric, blocks, on_the_stores_thread):
    _, a, b = fabric
    inline(a)
    hw = a.kernel_contexts[0]
    packet = packet_of(a, b, blocks, marker=blocks)
    assert len(pbc_for(packet).to_bytes(8, "little") + packet) == PIO_BLOCK * blocks
    a.driver.pio_copy(hw, pbc_for(packet), packet)
    assert sent(a) == (1 if on_the_stores_thread else 0)
    settle(a, b)
    assert sent(a) == 1 and arrived(b, 1) == [blocks]


def test_a_small_packet_behind_an_unfinished_big_one_waits_and_both_leave_in_ring_order(fabric):
    """Two writers of one context (two CPUs copying after sc_buffer_alloc): the
    small packet is complete first, the big one ahead of it is not."""
    _, a, b = fabric
    inline(a)
    hw = a.kernel_contexts[0]
    big, small = packet_of(a, b, 3, marker=1), packet_of(a, b, 1, marker=2)
    big_frame = pbc_for(big).to_bytes(8, "little") + big
    qwords = [int.from_bytes(big_frame[i:i + 8], "little") for i in range(0, len(big_frame), 8)]
    window = 0x2000000 + (hw << 16)
    for i, qword in enumerate(qwords[:-1]):  # all of the big packet but its last qword
        a.device.bar_write(0, window + 8 * i + (0x1000000 if i < 8 else 0), 8, qword)
    a.driver.pio_fill[hw] = 3
    a.driver.pio_copy(hw, pbc_for(small), small)
    settle(a, b)
    assert sent(a) == 0, "nothing overtakes the packet at the launch point"
    a.device.bar_write(0, window + 8 * (len(qwords) - 1), 8, qwords[-1])
    settle(a, b)
    assert sent(a) == 2 and arrived(b, 2) == [1, 2]


def test_a_packet_waiting_for_link_credits_is_not_overtaken(fabric, monkeypatch):
    """The peer's buffer is full when the first packet completes: it falls
    back to the launcher, which waits for room. The peer drains; before the
    launcher resumes, a second small packet completes on the store's thread."""
    scheduler, a, b = fabric
    inline(a)
    hw = a.kernel_contexts[0]
    port = a.device.port
    room = [False]
    monkeypatch.setattr(port, "peer_has_room", lambda: room[0])
    first, second = packet_of(a, b, 1, marker=1), packet_of(a, b, 1, marker=2)
    a.driver.pio_copy(hw, pbc_for(first), first)
    settle(a, b)
    assert sent(a) == 0 and a.stats()["pio"]["inline_launches"] == 0, "it waits for credits, nothing is dropped"
    room[0] = True  # drained; the link has not told the port yet
    a.driver.pio_copy(hw, pbc_for(second), second)
    port.room()
    settle(a, b)
    assert sent(a) == 2 and arrived(b, 2) == [1, 2]


def credit_scenario(mode: str) -> dict:
    """Three small packets, the last asking for a credit return in its PBC,
    with the credit interrupt on: what the driver can see afterwards."""
    with pair() as (_, a, b):
        a.device.set_option("pio-launch", mode)
        hw = a.kernel_contexts[0]
        ctrl = a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL)
        a.driver.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL, ctrl | cr.SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK)
        for n, blocks in enumerate((1, 2, 1)):
            packet = packet_of(a, b, blocks, marker=n)
            pbc = pbc_for(packet) | (PBC.encode(credit_return=1) if n == 2 else 0)
            a.driver.pio_copy(hw, pbc, packet)
        settle(a, b)
        source = 576 + hw
        return {"credit word": a.driver.credit_return(hw),
                "CREDIT_STATUS": a.driver.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_STATUS),
                "credit interrupt": a.driver.read_csr(cr.CCE_INT_STATUS + 8 * (source // 64)) >> (source % 64) & 1,
                "arrived": arrived(b, 3), "inline": a.stats()["pio"]["inline_launches"]}


def test_the_credit_return_is_the_same_in_both_modes():
    engine, inline_ = credit_scenario("engine"), credit_scenario("inline")
    assert (engine.pop("inline"), inline_.pop("inline")) == (0, 3)
    assert inline_ == engine
    assert engine["credit word"]["counter"] == 4 and engine["credit word"]["due_to_pbc"] == 1
    assert engine["credit interrupt"] == 1 and engine["arrived"] == [0, 1, 2]


def halt_scenario(mode: str) -> dict:
    """A user context before SET_PKEY refuses every packet (its integrity
    checks): a one-block UD packet halts it."""
    with pair() as (_, a, b):
        a.device.set_option("pio-launch", mode)
        a.driver.assign_ctxt(USER_CTXT, USER_SC, 64, base=152, jkey=0x1234)
        packet = packet_of(a, b, 1)
        a.driver.pio_copy(USER_SC, pbc_for(packet), packet)
        settle(a, b)
        return {"STATUS": a.driver.read_kctxt_csr(USER_SC, cr.SEND_CTXT_STATUS),
                "ERR_STATUS": a.driver.read_kctxt_csr(USER_SC, cr.SEND_CTXT_ERR_STATUS),
                "EGRESS_ERR_SOURCE": a.driver.read_csr(cr.SEND_EGRESS_ERR_SOURCE),
                "credit word": a.driver.credit_return(USER_SC),
                "sent": sent(a), "refused": a.stats()["pio"]["contexts"][USER_SC]["refused"],
                "internal errors": a.stats()["internal_errors"], "inline": a.stats()["pio"]["inline_launches"]}


def test_the_integrity_halt_is_the_same_in_both_modes():
    engine, inline_ = halt_scenario("engine"), halt_scenario("inline")
    assert (engine.pop("inline"), inline_.pop("inline")) == (0, 1), "the refused packet was launched inline"
    assert inline_ == engine
    assert engine["STATUS"] & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK
    assert engine["ERR_STATUS"] == cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK
    assert engine["credit word"]["status"] == 1 and engine["credit word"]["due_to_error"] == 1
    assert engine["sent"] == 0 and engine["refused"] == 1 and engine["internal errors"] == []


def test_the_mode_is_a_device_option_that_changes_while_serving_and_survives_a_reset(fabric):
    _, a, b = fabric
    with pytest.raises(ValueError, match="engine or inline"):
        a.device.set_option("pio-launch", "socket")
    with pytest.raises(ValueError, match="no option"):
        a.device.set_option("icode", "simulator")
    inline(a)
    a.device.reset()
    assert a.stats()["pio"]["launch"] == "inline"


def test_vfnic_serve_option_pio_launch_reaches_every_device_and_not_the_factory():
    from devmodel import registry

    assert registry.DEVICES["hfi1"].runtime_options["pio-launch"][0] == LAUNCH_MODES
    assert "pio-launch" not in registry.parse_options("hfi1", ["pio-launch=inline"])
    devices = registry.create_fabric("hfi1", 2, ["pio-launch=inline", "icode=simulator"])
    try:
        assert [d.stats()["pio"]["launch"] for d in devices] == ["inline", "inline"]
    finally:
        for device in devices:
            device.close()
    with pytest.raises(registry.OptionError, match="takes engine or inline"):
        registry.parse_options("hfi1", ["pio-launch=socket"])
