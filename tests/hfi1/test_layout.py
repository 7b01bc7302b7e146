"""What the PCI layer and the driver's first reads see: identity, BAR0, MSI-X, capacities."""
from __future__ import annotations

import logging

import pytest

from devmodel.hfi1 import ChipConfig, Hfi1Device
from devmodel.hfi1 import chip_registers as cr
from devmodel.pci_layout import BarKind
from devmodel.worker import ManualScheduler

NUM_VLS = 8


def msix_request(sdma_engines: int, real_cpus: int, krcvqs: int = 2) -> int:
    """msix_initialize(): 1 general + 1 per SDMA engine + kernel receive contexts
    (control + krcvqs) + netdev contexts (one per real CPU of the node, at most 8)."""
    netdev = min(real_cpus, 8)
    return 1 + sdma_engines + (krcvqs + 1) + netdev


def test_pci_identity_is_a_discrete_wfr_b1_fabric_controller(device):
    identity = device.layout().identity
    assert (identity.vendor_id, identity.device_id) == (0x8086, 0x24F0)  # hfi1_pci_tbl, init_one check
    assert (identity.subsystem_vendor_id, identity.subsystem_id) == (0x8086, 0x2628)
    assert identity.class_code >> 8 == 0x0208  # network / fabric controller
    assert identity.revision & 0xF0 == 0x10  # B-step


def test_bar0_is_64_mib_as_hfi1_pcie_ddinit_demands(device):
    (bar,) = device.layout().bars
    assert bar.index == 0 and bar.kind is BarKind.MEM64 and not bar.prefetchable
    assert bar.size == cr.TXE + cr.TXE_PIO_SEND_OFFSET + 32 * 0x100000  # TXE_PIO_SEND + TXE_PIO_SIZE


def test_accesses_outside_bar0_are_ignored_and_counted_in_the_stats(device):
    for i in range(50):  # a guest (or a fuzzer) poking beyond the 64 MiB, or at another BAR
        device.bar_write(0, (64 << 20) + 8 * i, 8, i)
    assert device.bar_read(2, 0, 8) == 0
    assert device.stats()["warnings"]["accesses outside BAR0"] == 51


def test_msix_table_and_pba_sit_where_wfr_has_them(device):
    msix = device.layout().msix
    assert (msix.table_bar, msix.table_offset) == (0, cr.CCE_MSIX_TABLE_LOWER)
    assert (msix.pba_bar, msix.pba_offset) == (0, cr.CCE_MSIX_PBA_OFFSET)
    assert msix.vectors == cr.CCE_NUM_MSIX_VECTORS
    table_end, pba_end = msix.table_offset + 16 * msix.vectors, msix.pba_offset + 8 * ((msix.vectors + 63) // 64)
    assert table_end <= msix.pba_offset
    declared = [reg.offset for block in device.blocks for reg in block.registers]
    clashes = [hex(o) for o in declared if msix.table_offset <= o < table_end or msix.pba_offset <= o < pba_end]
    assert not clashes, "the PCI layer serves these ranges; no CSR may live there"


@pytest.mark.parametrize("real_cpus", [1, 2, 64])
def test_msix_vectors_cover_the_drivers_all_or_nothing_request(device, real_cpus):
    wanted = msix_request(device.config.sdma_engines, real_cpus)
    assert wanted <= device.layout().msix.vectors


def test_msix_table_holds_the_largest_request_the_driver_can_make(device):
    largest = cr.CCE_NUM_MSIX_VECTORS - 1  # msix_initialize refuses total >= CCE_NUM_MSIX_VECTORS
    assert largest <= device.layout().msix.vectors


def test_pcie_link_is_gen3_x16(device):
    link = device.layout().pcie_link
    assert (link.speed, link.width) == (3, 16)


def test_revision_registers_say_b_step_functional_simulator(device):
    revision = device.bar_read(0, cr.CCE_REVISION, 8)
    assert revision != (1 << 64) - 1
    minor = (revision >> cr.CCE_REVISION_CHIP_REV_MINOR_SHIFT) & cr.CCE_REVISION_CHIP_REV_MINOR_MASK
    assert minor & 0xF0 == 0x10, "is_bx(); an A-step minor would switch on the A0 workarounds"
    revision2 = device.bar_read(0, cr.CCE_REVISION2, 8)
    assert (revision2 >> cr.CCE_REVISION2_IMPL_CODE_SHIFT) & 0xFF == 3
    assert revision2 & cr.CCE_REVISION2_HFI_ID_MASK == 0


def test_capacities_satisfy_the_drivers_arithmetic(device):
    read = lambda offset: device.bar_read(0, offset, 8)  # noqa: E731
    rcv_contexts, send_contexts = read(cr.RCV_CONTEXTS), read(cr.SEND_CONTEXTS)
    engines, rcv_array = read(cr.SEND_DMA_ENGINES), read(cr.RCV_ARRAY_CNT)
    assert cr.RCV_ARRAY + 8 * rcv_array <= cr.RXE + cr.RXE_PER_CONTEXT_OFFSET
    assert rcv_array % 8 == 0 and rcv_array // 8 // rcv_contexts >= 1, "every context needs eager entries"
    assert 3 <= send_contexts - NUM_VLS - 1 and send_contexts <= 160 and rcv_contexts <= 160
    assert NUM_VLS <= engines <= 16
    total_blocks = read(cr.SEND_PIO_MEM_SIZE) // 64 - 1
    fixed = 3 * 32 + 102 + 2 * NUM_VLS * 18  # ACK, VL15, kernel (init_sc_pools_and_sizes)
    assert total_blocks - fixed >= rcv_contexts - 3, "one block per user context at least"
    assert read(cr.SEND_DMA_MEM_SIZE) // (engines * 64) > 0


def test_config_rejects_capacities_the_driver_would_trip_on():
    with pytest.raises(ValueError):
        ChipConfig(sdma_engines=4)
    with pytest.raises(ValueError):
        ChipConfig(rcv_array_count=0x100000 // 8 + 8)


def test_smaller_chip_shrinks_the_per_context_register_arrays():
    small = Hfi1Device(ChipConfig(rcv_contexts=16, send_contexts=32, rcv_array_count=2048),
                       worker=ManualScheduler().worker("small"))
    try:
        assert small.bar_read(0, cr.RCV_CONTEXTS, 8) == 16
        small.bar_read(0, cr.RCV_CTXT_CTRL + 0x100 * 16, 8)  # context 16 does not exist
        assert small.stats()["undeclared_csr_accesses"] == 1
    finally:
        small.close()


def test_closing_the_chip_writes_the_undeclared_accesses_it_held_back(caplog):
    chip = Hfi1Device(ChipConfig(rcv_contexts=16, send_contexts=32, rcv_array_count=2048),
                      worker=ManualScheduler().worker("closing"))
    with caplog.at_level(logging.WARNING):
        for context in range(16, 31):  # each a context that does not exist: 15 undeclared offsets
            chip.bar_read(0, cr.RCV_CTXT_CTRL + 0x100 * context, 8)
        chip.close()
    summaries = [r.getMessage() for r in caplog.records if "more undeclared offsets" in r.getMessage()]
    assert summaries and "(15 in all)" in summaries[-1]
