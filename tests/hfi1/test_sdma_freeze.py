"""Handshakes the driver waits on without a timeout: SDMA halt/clean-up, SPC freeze, CM reset."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr
from testkit.hfi1.guest import ALL_ONES, IS_SDMAENG_ERR_START

HALT, CLEANUP, INT_ENABLE, ENABLE = 0x2, 0x4, 0x8, 0x1
HALTED, CLEANED_UP = cr.SEND_DMA_STATUS_ENG_HALTED_SMASK, cr.SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK
ALL_FROZE = 0xF


def start_engines(driver, count: int) -> None:
    driver.num_sdma = count
    driver.set_up_interrupts(n_krcv_queues=3)
    for e in range(count):
        driver.write_kctxt_csr(e, cr.SEND_DMA_ENG_ERR_MASK, ALL_ONES)
    driver.sdma_start()


def test_halt_is_acknowledged_by_the_engine_error_interrupt(driver, host, device):
    start_engines(driver, 1)
    host.irq.wait_for(0)
    assert driver.read_kctxt_csr(0, cr.SEND_DMA_STATUS) & HALTED
    status = driver.read_kctxt_csr(0, cr.SEND_DMA_ENG_ERR_STATUS)
    assert status == cr.SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK
    assert device.intr.pending(IS_SDMAENG_ERR_START)


def test_every_engine_gets_from_halt_wait_to_idle(driver, host, device):
    engines = device.config.sdma_engines
    start_engines(driver, engines)
    driver.service_interrupts(lambda: all(s == "s20_idle" for s in driver.sdma_state.values()))
    for e in range(engines):
        assert driver.read_kctxt_csr(e, cr.SEND_DMA_STATUS) & (HALTED | CLEANED_UP) == HALTED | CLEANED_UP
        assert driver.read_kctxt_csr(e, cr.SEND_DMA_HEAD) == 0
        assert driver.read_kctxt_csr(e, cr.SEND_DMA_ENG_ERR_STATUS) == 0


def test_enable_after_clean_up_runs_the_engine(driver, host, device):
    start_engines(driver, 1)
    driver.service_interrupts(lambda: driver.sdma_state[0] == "s20_idle")
    driver.sdma_sendctrl(0, enable=True, intenable=True)  # sdma_all_running on Active
    assert driver.read_kctxt_csr(0, cr.SEND_DMA_STATUS) & (HALTED | CLEANED_UP) == 0
    assert device.stats()["sdma_engines"][0] == "running"


def test_clean_up_before_the_halt_completed_is_not_reported_done(driver, device):
    driver.write_kctxt_csr(0, cr.SEND_DMA_CTRL, CLEANUP | INT_ENABLE)
    assert device.settle()
    assert not driver.read_kctxt_csr(0, cr.SEND_DMA_STATUS) & CLEANED_UP


def test_spc_freeze_sets_all_froze_bits_and_unfreeze_clears_them(driver, device):
    driver.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_FREEZE_SMASK)
    driver.wait_for_freeze_status(True)
    assert all(engine.startswith("halted") for engine in device.stats()["sdma_engines"])
    driver.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_UNFREEZE_SMASK)
    driver.wait_for_freeze_status(False)
    assert driver.read_csr(cr.CCE_STATUS) & ALL_FROZE == 0
    status = driver.read_kctxt_csr(3, cr.SEND_DMA_STATUS)
    assert status & (HALTED | CLEANED_UP) == HALTED | CLEANED_UP, "a freeze is a halt plus a clean-up"


def test_freeze_halts_enabled_send_contexts_and_pio_init_clears_the_halt(driver, device):
    hw = 150
    driver.sc_alloc(hw, 32, 0, device.dma.base + 0x40)
    driver.sc_enable(hw)
    driver.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_FREEZE_SMASK)
    driver.wait_for_freeze_status(True)
    assert driver.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK
    assert not driver.read_kctxt_csr(hw - 1, cr.SEND_CTXT_STATUS), "disabled contexts are not halted"
    driver.sc_disable(hw)
    driver.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_UNFREEZE_SMASK)
    driver.wait_for_freeze_status(False)
    driver.sc_enable(hw)  # pio_kernel_unfreeze
    assert driver.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) == 0


def test_cm_reset_clears_itself(driver):
    driver.write_csr(cr.SEND_CTRL, cr.SEND_CTRL_SEND_ENABLE_SMASK)
    driver.reset_link_credits()
    assert driver.read_csr(cr.SEND_CTRL) == cr.SEND_CTRL_SEND_ENABLE_SMASK
    assert driver.read_csr(cr.SEND_CM_CREDIT_USED_STATUS) == 0
