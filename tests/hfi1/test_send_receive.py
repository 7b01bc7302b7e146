"""Send-context credit returns, the PIO init engine, the send space and the RcvArray."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr

CR_DUE_TO_FORCE = 1 << 15


def credit_slot(host, hw: int, base: int) -> int:
    return int.from_bytes(host.dma.read(base + 8 * (hw & 7), 8), "little")


def test_forced_credit_return_is_written_to_the_contexts_slot(driver, host):
    base = host.dma.base + 64 * 19  # the credit_return group of contexts 152..159
    hw = 157
    host.dma.write(base + 8 * (hw & 7), b"\xee" * 8)
    driver.sc_alloc(hw, 32, 0, base)
    driver.sc_enable(hw)
    driver.sc_return_credits(hw)
    driver.dev.settle()  # the chip writes the credit word on its own time
    assert credit_slot(host, hw, base) == CR_DUE_TO_FORCE, "free counter 0, reason: forced"
    assert host.dma.read(base + 8 * ((hw & 7) - 1), 8) == bytes(8), "the neighbours' slots untouched"
    assert host.irq.triggered == []


def test_credit_return_interrupts_only_when_asked(driver, host):
    base, hw = host.dma.base + 0x200, 156
    driver.sc_alloc(hw, 32, 0, base)
    driver.remap_intr(576 + hw, 5)
    driver.set_intr_bits(576 + hw, 576 + hw, True)
    credit_ctrl = driver.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL)
    driver.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL, credit_ctrl | cr.SEND_CTXT_CREDIT_CTRL_CREDIT_INTR_SMASK)
    driver.sc_return_credits(hw)  # hfi1_sc_wantpiobuf_intr(sc, 1)
    driver.dev.settle()
    assert host.irq.triggered == [5]
    driver.sc_return_credits(hw)
    driver.dev.settle()  # the chip writes the credit word on its own time
    assert host.irq.triggered == [5], "source still pending: no second message"


def test_credit_return_to_unmapped_memory_is_dropped_not_fatal(driver, host):
    hw = 150
    driver.sc_alloc(hw, 32, 0, 0x4000_0000)  # outside the fake guest RAM: the access must not raise
    driver.sc_return_credits(hw)
    driver.dev.settle()  # the chip writes the credit word on its own time
    base = host.dma.base + 0x400
    driver.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_RETURN_ADDR, base)
    host.dma.write(base + 8 * (hw & 7), b"\xee" * 8)
    driver.sc_return_credits(hw)
    driver.dev.settle()  # the chip writes the credit word on its own time
    assert credit_slot(host, hw, base) == CR_DUE_TO_FORCE, "the context still returns credits afterwards"


def test_pio_init_engine_never_reports_busy_or_error(driver):
    driver.write_csr(cr.SEND_PIO_INIT_CTXT, cr.SEND_PIO_INIT_CTXT_PIO_ALL_CTXT_INIT_SMASK | 0xC)
    assert driver.read_csr(cr.SEND_PIO_INIT_CTXT) & 0xC == 0, "IN_PROGRESS and ERR are the engine's"


def test_rcv_array_is_storage_behind_its_own_window(device):
    entry = cr.RCV_ARRAY + 8 * 4095
    device.bar_write(0, entry, 8, 1 << 63 | 0xABC)
    device.bar_write(0, entry + 4, 4, 0x1)  # no WriteEnable (bit 63): the entry is left alone
    assert device.bar_read(0, entry, 8) == 1 << 63 | 0xABC
    device.bar_write(0, entry + 4, 4, 0x8000_0001)  # nor a lone upper half with it: no whole value
    assert device.bar_read(0, entry, 8) == 1 << 63 | 0xABC
    device.bar_write(0, entry, 4, 0xDEF)  # one store in two halves, low first: a whole value
    device.bar_write(0, entry + 4, 4, 0x8000_0001)
    assert device.bar_read(0, entry, 8) == 1 << 63 | 0x1_0000_0DEF
    assert device.stats()["undeclared_csr_accesses"] == 0


def test_rcv_buffer_init_is_a_self_clearing_command(driver):
    driver.write_csr(cr.RCV_CTRL, cr.RCV_CTRL_RX_RBUF_INIT_SMASK | cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK)
    assert driver.read_csr(cr.RCV_CTRL) == cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK
    assert driver.read_csr(cr.RCV_STATUS) & cr.RCV_STATUS_RX_RBUF_INIT_DONE_SMASK
