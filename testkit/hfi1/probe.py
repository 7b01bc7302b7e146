"""The hfi1 driver's probe walk (init_one), its hfi1_init and remove_one
(rmmod), as sequences of GuestDriver steps: Linux 6.12 hfi1 init.c init_one
-> hfi1_init_dd -> hfi1_init -> sdma_start; remove_one -> shutdown_device."""
from __future__ import annotations

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.chip_registers import CSR_OFFSETS
from testkit.hfi1.guest import (
    ALL_ONES,
    IS_DC_START,
    REASON_REBOOT,
    SC_ACK,
    SC_KERNEL,
    SC_VL15,
    SDMA_CHECK_MASK,
    GuestDriver,
)
from testkit.host import GUEST_BASE

NUM_VLS = 8
N_KRCV_QUEUES = 3  # control context + DEFAULT_KRCVQS
CREDIT_RETURN_BASE = GUEST_BASE  # the credit-return page lives at the start of guest memory
DC8051_SOURCE = IS_DC_START + 2
#: init_sc2vl_tables: SC0-7 on VL0-7, SC15 on VL15, every other SC on VL0 (a byte per SC on the send
#: side, a nibble per SC in the DC)
SC2VL_TABLES = {"SEND_SC2VLT0": 0x0706050403020100, "SEND_SC2VLT1": 0x0F00000000000000, "SEND_SC2VLT2": 0,
                "SEND_SC2VLT3": 0, "DCC_CFG_SC_VL_TABLE_15_0": 0xF000000076543210, "DCC_CFG_SC_VL_TABLE_31_16": 0}


def read_all_counters(driver: GuestDriver, engines: int, contexts: int) -> None:
    """What init_cntrs, the synth-stats timer and sysfs read (dev_cntrs, port_cntrs)."""
    offsets = [cr.CCE_COUNTER_ARRAY32 + 8 * i for i in range(3)]
    offsets += [cr.CCE_INT_COUNTER_ARRAY32 + 8 * i for i in range(6)]
    offsets += [cr.RCV_COUNTER_ARRAY32 + 8 * i for i in (0, 2, 6, 9, 10, 18, 19, 20, 22, 23)]
    offsets += [cr.RCV_COUNTER_ARRAY64 + 8 * i for i in (0, 1)]
    offsets += [cr.SEND_COUNTER_ARRAY32 + 8 * i for i in range(7)]
    offsets += [cr.SEND_COUNTER_ARRAY64 + 8 * i for i in (0, 1, 2)]
    offsets += [cr.SEND_COUNTER_ARRAY64 + 8 * (first + vl) for first in (3, 12, 21) for vl in range(9)]
    offsets += [CSR_OFFSETS[n] for n in CSR_OFFSETS if n.startswith(("DCC_ERR_", "DCC_PRF_")) and n.endswith("_CNT")]
    offsets += [CSR_OFFSETS[n] + 8 * vl for n in CSR_OFFSETS if n.startswith("DCC_PRF_PORT_VL_") for vl in range(9)]
    offsets += [cr.RCV_HDR_OVFL_CNT + 0x100 * c for c in range(contexts)]
    offsets += [cr.SEND_DMA_DESC_FETCHED_CNT + 0x100 * e for e in range(engines)]
    for offset in offsets:
        driver.read_csr(offset)
    for name in CSR_OFFSETS:
        if name.startswith(("DC_LCB_ERR_INFO_", "DC_LCB_PRF_", "DC_LCB_PG_")):
            driver.read_lcb_csr(CSR_OFFSETS[name])


def probe(driver: GuestDriver) -> dict:
    """init_one up to hfi1_init: returns what the driver learnt."""
    learnt = {}
    driver.hfi1_pcie_ddinit()
    assert driver.base2_start <= cr.RXE + cr.RXE_PER_CONTEXT_OFFSET, "RcvArray runs into the user CSRs"
    assert driver.check_int_registers(), "Interrupt registers not properly mapped by VMM"
    rev2 = driver.read_csr(cr.CCE_REVISION2)
    learnt["icode"] = driver.icode = (rev2 >> cr.CCE_REVISION2_IMPL_CODE_SHIFT) & 0xFF
    learnt["guid"] = driver.read_guid()
    driver.init_chip()

    driver.eprom_init()  # pcie_speeds() is config space only
    platform = driver.eprom_read_platform_config()
    learnt["tables"] = tables = driver.parse_platform_config(platform)
    learnt["port_type"] = driver.get_platform_config_field(tables, 2, 0, 1)
    if driver.silicon:
        driver.obtain_firmware()  # hfi1_firmware_init; the Gen3 transition is skipped at 8 GT/s

    # init_early_variables -> write_uninitialized_csrs_and_memories
    for i in range(96):
        driver.write_csr(cr.CCE_INT_MAP + 8 * i, 0)
    for i in range(driver.chip_send_contexts()):
        driver.write_kctxt_csr(i, cr.SEND_CTXT_CREDIT_RETURN_ADDR, 0)
    for i in range(driver.chip_rcv_contexts()):
        driver.write_kctxt_csr(i, cr.RCV_HDR_ADDR, 0)
        driver.write_kctxt_csr(i, cr.RCV_HDR_TAIL_ADDR, 0)
        for j in range(32):
            driver.write_uctxt_csr(i, cr.RCV_TID_FLOW_TABLE + 8 * j, 0)
    i = 0
    while i < driver.chip_rcv_array_count():  # hfi1_put_tid(PT_INVALID_FLUSH) through the WC map
        driver.dev.bar_write(0, cr.RCV_ARRAY + 8 * i, 8, cr.RCV_ARRAY_RT_WRITE_ENABLE_SMASK)
        i += 1
    for i in range(32):
        driver.write_csr(cr.RCV_QP_MAP_TABLE + 8 * i, 0)
    for i in range(4):  # set_partition_keys
        driver.write_csr(cr.RCV_PARTITION_KEY + 8 * i, 0xFFFF if i == 0 else 0)
    driver.write_csr(cr.RCV_CTRL, driver.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_PARTITION_KEY_ENABLE_SMASK)
    for name, value in SC2VL_TABLES.items():  # init_sc2vl_tables
        driver.write_csr(CSR_OFFSETS[name], value)

    # set_up_context_variables
    learnt["send_contexts"] = driver.chip_send_contexts()
    learnt["rcv_contexts"] = driver.chip_rcv_contexts()
    learnt["pio_blocks"] = driver.read_csr(cr.SEND_PIO_MEM_SIZE) // 64 - 1
    learnt["sdma_engines"] = driver.chip_sdma_engines()
    learnt["sdma_credits"] = driver.read_csr(cr.SEND_DMA_MEM_SIZE) // (learnt["sdma_engines"] * 64)

    # init_rxe
    driver.write_csr(cr.RCV_ERR_MASK, ALL_ONES)
    for rule in range(4):
        driver.read_csr(cr.RCV_RSM_CFG + 8 * rule)  # has_rsm_rule
    driver.write_csr(cr.RCV_RSM_CFG, 1)
    driver.write_csr(cr.RCV_RSM_SELECT, 0)
    driver.write_csr(cr.RCV_RSM_MATCH, 0)
    for i in range(32):
        driver.write_csr(cr.RCV_RSM_MAP_TABLE + 8 * i, 0x0201000201000201)
    driver.write_csr(cr.RCV_CTRL, driver.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_RSM_ENABLE_SMASK)
    driver.write_csr(cr.RCV_BYPASS, driver.read_csr(cr.RCV_BYPASS) | 4 << cr.RCV_BYPASS_HDR_SIZE_SHIFT)
    # init_txe, init_other, init_kdeth_qp
    for name in ("SEND_PIO_ERR_MASK", "SEND_DMA_ERR_MASK", "SEND_ERR_MASK", "SEND_EGRESS_ERR_MASK"):
        driver.write_csr(CSR_OFFSETS[name], ALL_ONES)
    if driver.silicon:
        driver.write_csr(cr.SEND_CM_TIMER_CTRL, 100)  # HFI1_CREDIT_RETURN_RATE
    for i in range(driver.chip_send_contexts()):
        driver.write_kctxt_csr(i, cr.SEND_CTXT_ERR_MASK, ALL_ONES)
    for i in range(driver.chip_sdma_engines()):
        driver.write_kctxt_csr(i, cr.SEND_DMA_ENG_ERR_MASK, ALL_ONES)
    driver.write_csr(cr.SEND_CM_LOCAL_AU_TABLE0_TO3, 0x0000000400020001)
    driver.write_csr(cr.SEND_CM_LOCAL_AU_TABLE4_TO7, 0x0000004000200010)
    for name in ("CCE_ERR_MASK", "DCC_ERR_FLG_EN", "DC_DC8051_ERR_EN"):
        driver.write_csr(CSR_OFFSETS[name], ALL_ONES)
    driver.write_csr(cr.MISC_ERR_MASK, 0x1FFF)
    driver.write_csr(cr.SEND_BTH_QP, 0x80 << cr.SEND_BTH_QP_KDETH_QP_SHIFT)
    driver.write_csr(cr.RCV_BTH_QP, 0x80 << cr.RCV_BTH_QP_KDETH_QP_SHIFT)

    # init_send_contexts, hfi1_create_kctxts (ACK contexts), init_pervl_scs (VL15 + 2 per VL)
    contexts = learnt["send_contexts"]
    ack = [contexts - 1 - i for i in range(N_KRCV_QUEUES)]
    vl15 = contexts - 1 - N_KRCV_QUEUES
    kernel = [vl15 - 1 - i for i in range(2 * NUM_VLS)]
    base = 0
    for hw, credits, kind in [(h, 32, SC_ACK) for h in ack] + [(vl15, 102, SC_VL15)] \
            + [(h, 18, SC_KERNEL) for h in kernel]:
        driver.sc_alloc(hw, credits, base, CREDIT_RETURN_BASE + 64 * (hw // 8), kind)
        base += credits
    for hw, kind in [(vl15, SC_VL15)] + [(h, SC_KERNEL) for h in kernel]:
        driver.sc_enable(hw)
        driver.set_check_vl(hw, kind)
    driver.enabled_send_contexts = [vl15] + kernel
    learnt["ack_contexts"] = ack

    # sdma_init -> init_sdma_regs
    driver.num_sdma = learnt["sdma_engines"]
    for e in range(driver.num_sdma):
        driver.write_kctxt_csr(e, cr.SEND_DMA_BASE_ADDR, CREDIT_RETURN_BASE + 0x10000 + 0x8000 * e)
        driver.sdma_hw_start_up(e)
        driver.write_kctxt_csr(e, cr.SEND_DMA_RELOAD_CNT, 0x100)
        driver.write_kctxt_csr(e, cr.SEND_DMA_DESC_CNT, 0)
        driver.write_kctxt_csr(e, cr.SEND_DMA_HEAD_ADDR, CREDIT_RETURN_BASE + 0x800 + 64 * e)
        driver.write_kctxt_csr(e, cr.SEND_DMA_MEMORY, learnt["sdma_credits"] << 16 | learnt["sdma_credits"] * e)
        driver.write_kctxt_csr(e, cr.SEND_DMA_ENG_ERR_MASK, ALL_ONES)
        driver.write_kctxt_csr(e, cr.SEND_DMA_CHECK_ENABLE, SDMA_CHECK_MASK)  # set_sdma_integrity
        driver.write_kctxt_csr(e, cr.SEND_DMA_CHECK_OPCODE, 0)

    driver.set_up_interrupts(N_KRCV_QUEUES)
    if driver.silicon:  # load_firmware: fabric SerDes, then the 8051; each authenticated by the chip
        learnt["load_firmware"] = driver.load_firmware()
        if learnt["load_firmware"]:
            return learnt
    learnt["firmware"] = driver.dump_fw_version()  # (on the simulator: no loads, versions only)
    learnt["thermal_init"] = driver.thermal_init()
    read_all_counters(driver, learnt["sdma_engines"], learnt["rcv_contexts"])  # init_cntrs
    return learnt


def hfi1_init(driver: GuestDriver, learnt: dict) -> None:
    """hfi1_init(dd, 0): kernel receive contexts, set_mtu, enable_chip, interrupts, bringup_serdes."""
    for c in range(N_KRCV_QUEUES):
        driver.write_kctxt_csr(c, cr.RCV_HDR_CNT, 2048 >> 5)
        driver.write_kctxt_csr(c, cr.RCV_HDR_ENT_SIZE, 0x2)
        driver.write_kctxt_csr(c, cr.RCV_HDR_SIZE, 9)
        driver.write_kctxt_csr(c, cr.RCV_HDR_TAIL_ADDR, CREDIT_RETURN_BASE + 0x4000)
        for i in range(8):  # eager buffers
            driver.dev.bar_write(0, cr.RCV_ARRAY + 8 * (c * 64 + i), 8, 1 << 63 | 0x100 + i)
    driver.write_csr(cr.SEND_LEN_CHECK0, 0x0)  # set_mtu
    driver.write_csr(cr.SEND_LEN_CHECK1, 0x0)
    for hw in learnt["ack_contexts"]:
        driver.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL, 15)
        driver.sc_return_credits(hw)
    port = driver.read_csr(cr.DCC_CFG_PORT_CONFIG)
    driver.write_csr(cr.DCC_CFG_PORT_CONFIG, (port & ~cr.DCC_CFG_PORT_CONFIG_MTU_CAP_SMASK) | 6 << 32)
    # enable_chip
    sendctrl = driver.read_csr(cr.SEND_CTRL)
    driver.write_csr(cr.SEND_CTRL, sendctrl | cr.SEND_CTRL_SEND_ENABLE_SMASK)
    for c in range(N_KRCV_QUEUES):  # hfi1_rcvctrl(ENB | INTRAVAIL_ENB ...)
        ctrl = driver.read_kctxt_csr(c, cr.RCV_CTXT_CTRL)
        driver.write_kctxt_csr(c, cr.RCV_HDR_ADDR, CREDIT_RETURN_BASE + 0x20000 + 0x10000 * c)
        driver.write_uctxt_csr(c, cr.RCV_HDR_HEAD, 0)
        driver.write_uctxt_csr(c, cr.RCV_EGR_INDEX_HEAD, 0)
        driver.write_kctxt_csr(c, cr.RCV_EGR_CTRL, 1 << 16 | 8 * c)
        driver.write_kctxt_csr(c, cr.RCV_TID_CTRL, 0)
        if c == 0:
            driver.write_csr(cr.RCV_VL15, 0)
        driver.set_intr_bits(256 + c, 256 + c, True)
        driver.write_kctxt_csr(c, cr.RCV_CTXT_CTRL, ctrl | cr.RCV_CTXT_CTRL_ENABLE_SMASK
                               | cr.RCV_CTXT_CTRL_INTR_AVAIL_SMASK)
        assert driver.read_kctxt_csr(c, cr.RCV_CTXT_STATUS) == 0, "receive context blocked"
        driver.write_kctxt_csr(c, cr.RCV_AVAIL_TIME_OUT, 0x10)
        driver.write_uctxt_csr(c, cr.RCV_HDR_HEAD, 16 << 32)
        driver.sc_enable(learnt["ack_contexts"][c])
    # enable_general_intr
    for first, last in ((0, 2), (4, 7), (32, 191), (240, 241), (244, 244), (248, 255), (576, 735)):
        driver.set_intr_bits(first, last, True)
    # init_qsfp_int
    driver.write_csr(cr.ASIC_QSFP1_CLEAR, 0x18)
    driver.write_csr(cr.ASIC_QSFP1_MASK, 0x18)
    driver.write_csr(cr.ASIC_QSFP1_MASK, driver.read_csr(cr.ASIC_QSFP1_MASK) & ~0x8)
    present = not driver.read_csr(cr.ASIC_QSFP1_IN) & 0x10
    driver.write_csr(cr.ASIC_QSFP1_INVERT, 0x8 if present else 0x18)
    driver.set_intr_bits(242, 242, True)
    # bringup_serdes
    driver.write_csr(cr.RCV_CTRL, driver.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_EXTENDED_PSN_ENABLE_SMASK)
    driver.init_lcb()
    driver.start_link(learnt["tables"])


def remove_one(driver: GuestDriver, learnt: dict) -> None:
    """remove_one -> shutdown_device -> hfi1_quiet_serdes -> ... -> postinit_cleanup."""
    driver.set_intr_bits(0, 767, False)
    for c in range(N_KRCV_QUEUES):
        driver.write_csr(cr.RCV_VL15, 0)
        driver.write_kctxt_csr(c, cr.RCV_HDR_TAIL_ADDR, CREDIT_RETURN_BASE + 0x4000)
        ctrl = driver.read_kctxt_csr(c, cr.RCV_CTXT_CTRL)
        driver.write_kctxt_csr(c, cr.RCV_CTXT_CTRL, ctrl & ~cr.RCV_CTXT_CTRL_ENABLE_SMASK)
    for hw in driver.enabled_send_contexts + learnt["ack_contexts"]:
        driver.sc_disable(hw)
    driver.write_csr(cr.SEND_CTRL, driver.read_csr(cr.SEND_CTRL) & ~cr.SEND_CTRL_SEND_ENABLE_SMASK)
    driver.write_csr(cr.DCC_CFG_LED_CNTRL, 0)
    driver.remote_link_down_reason = REASON_REBOOT
    driver.goto_offline()  # hfi1_quiet_serdes -> set_link_state(HLS_DN_OFFLINE)
    driver.write_csr(cr.RCV_CTRL, driver.read_csr(cr.RCV_CTRL) & ~cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK)
    driver.sdma_exit()
    driver.clear_chip_resources()  # finish_chip_resources


def load_to_link_up(driver: GuestDriver) -> dict:
    """modprobe hfi1 as far as port Init: probe, hfi1_init, SDMA start, the
    interrupts that follow (SDMA halts, the 8051's LinkUp), handle_link_up."""
    learnt = probe(driver)
    hfi1_init(driver, learnt)
    driver.sdma_start()
    driver.service_interrupts(lambda: (all(s == "s20_idle" for s in driver.sdma_state.values())
                                       and driver.host_messages & (1 << 7)))
    driver.handle_link_up()
    return learnt
