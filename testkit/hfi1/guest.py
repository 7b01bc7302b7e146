"""The hfi1 driver's CSR sequences, re-enacted in Python for scenario tests.

Each method is named after the Linux 6.12 function it follows (chip.c, pcie.c,
firmware.c, eprom.c, pio.c, sdma.c, intr.c, init.c) and performs the same CSR
reads, writes and polls, with the driver's timeouts turned into exceptions so
that a model that would hang the guest fails the test instead. It is not a
driver: it keeps only the software state the sequences need.

Its time is its host's (`host.time`, testkit/host.py): simulated for a model
on a ManualScheduler, where a wait runs the devices' events and every CSR
read lets a microsecond pass; real for a model served over vfio-user.
"""
from __future__ import annotations

import zlib

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1 import firmware
from devmodel.hfi1.chip_registers import CSR_OFFSETS

ALL_ONES = (1 << 64) - 1
HCMD_SUCCESS = 2
HLS_UP = {"INIT", "ARMED", "ACTIVE"}
CR_SBUS, CR_EPROM, CR_THERM_INIT = 0x01, 0x02, 0x010000
ICODE_RTL_SILICON, ICODE_FUNCTIONAL_SIMULATOR = 0, 3
EBUSY, EINVAL, ETIMEDOUT, EIO = 16, 22, 110, 5
FABRIC_SERDES_BROADCAST, ALL_FABRIC_SERDES_BROADCAST, FABRIC_SERDES = 0xE4, 0xE1, (0x01, 0x02, 0x03, 0x04)
REASON_REBOOT = 35  # OPA_LINKDOWN_REASON_REBOOT: what rmmod and shutdown tell the neighbour
ALL_FROZE = 0xF
IS_SDMAENG_ERR_START, IS_SDMA_START, IS_SDMA_PROGRESS_START, IS_SDMA_IDLE_START = 16, 192, 208, 224
IS_DC_START, IS_RCVAVAIL_START, IS_RCVURGENT_START, IS_SENDCREDIT_START = 248, 256, 416, 576
IS_SENDCTXT_ERR_START = 32
EGRESS_ERR_INT = 6
#: SEND_EGRESS_ERR_STATUS TxSdma0..15DisallowedPacketErr (handle_egress_err's disallowed_pkt_err)
SDMA_DISALLOWED_PACKET_ERRS = 0xFFFF * cr.SEND_EGRESS_ERR_STATUS_TX_SDMA0_DISALLOWED_PACKET_ERR_SMASK
QSFP1_INT = 242
#: HOST_MSG bits (chip.h) and the LNI errors (FAILED_LNI)
BC_SMA_MSG, VERIFY_CAP_FRAME, LINKUP_ACHIEVED, LINK_GOING_DOWN = 1 << 2, 1 << 6, 1 << 7, 1 << 8
FAILED_LNI = 0x3FE0
#: chip.c misc_errs[]: the second tier of sources 0..7
GENERAL_ERRORS = {0: ("CCE_ERR_STATUS", "CCE_ERR_CLEAR"), 1: ("RCV_ERR_STATUS", "RCV_ERR_CLEAR"),
                  2: ("MISC_ERR_STATUS", "MISC_ERR_CLEAR"), 4: ("SEND_PIO_ERR_STATUS", "SEND_PIO_ERR_CLEAR"),
                  5: ("SEND_DMA_ERR_STATUS", "SEND_DMA_ERR_CLEAR"),
                  6: ("SEND_EGRESS_ERR_STATUS", "SEND_EGRESS_ERR_CLEAR"), 7: ("SEND_ERR_STATUS", "SEND_ERR_CLEAR")}


#: pio.c's send context types (sc_alloc's `type`)
SC_KERNEL, SC_VL15, SC_ACK, SC_USER = "kernel", "vl15", "ack", "user"
#: hfi.h hfi1_pkt_default_send_ctxt_mask with the default cap_mask (STATIC_RATE_CTRL set for kernel and
#: user, so hfi1_init_ctxt clears DisallowPbcStaticRateControl), B-step silicon (J_Key check on), a kernel
#: built without CONFIG_FAULT_INJECTION (DisallowPbcTest)
SC_CHECK_BASE = (cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_BAD_PKT_LEN_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_BYPASS_PACKETS_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_LONG_IB_PACKETS_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_BAD_PKT_LEN_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_PBC_TEST_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_BYPASS_PACKETS_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_TOO_SMALL_IB_PACKETS_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_IPV6_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_RAW_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_BYPASS_VL_MAPPING_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_VL_MAPPING_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_OPCODE_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_SLID_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_VL_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_ENABLE_SMASK
                 | cr.SEND_CTXT_CHECK_ENABLE_CHECK_JOB_KEY_SMASK)
HFI1_PKT_USER_SC_INTEGRITY = (cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_NON_KDETH_PACKETS_SMASK
                              | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK
                              | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_BYPASS_SMASK
                              | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_GRH_SMASK)
SC_CHECK_MASK = {SC_KERNEL: SC_CHECK_BASE, SC_USER: SC_CHECK_BASE | HFI1_PKT_USER_SC_INTEGRITY,
                 SC_VL15: SC_CHECK_BASE | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK,
                 SC_ACK: SC_CHECK_BASE | cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK}
#: hfi1_pkt_base_sdma_integrity, same caps
SDMA_CHECK_MASK = (cr.SEND_DMA_CHECK_ENABLE_DISALLOW_BYPASS_BAD_PKT_LEN_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_TOO_LONG_BYPASS_PACKETS_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_TOO_LONG_IB_PACKETS_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_BAD_PKT_LEN_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_TOO_SMALL_BYPASS_PACKETS_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_TOO_SMALL_IB_PACKETS_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_RAW_IPV6_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_DISALLOW_RAW_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_BYPASS_VL_MAPPING_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_VL_MAPPING_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_OPCODE_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_SLID_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_VL_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_ENABLE_SMASK
                   | cr.SEND_DMA_CHECK_ENABLE_CHECK_JOB_KEY_SMASK)
#: sc_alloc / init_pervl_scs: the VLs each kind may not send on (SEND_CTXT_CHECK_VL); ACK contexts keep 0
SC_CHECK_VL = {SC_KERNEL: 1 << 15, SC_USER: 1 << 15, SC_VL15: 0xFF, SC_ACK: 0}
USER_OPCODE_CHECK = 0xC0 << cr.SEND_CTXT_CHECK_OPCODE_MASK_SHIFT | 0xC0  # mask 0xC0, value 0xC0


class DriverTimeout(AssertionError):
    """The driver would have logged a timeout (or, for the no-timeout loops, hung)."""


def drive(drivers, until, timeout: float = 5.0, what: str = "the drivers to get there") -> None:
    """Let each driver handle its interrupts and link work, round robin,
    until `until()` (several devices driven from one thread, as their
    guests would run side by side); `timeout` is in the drivers' time."""
    clock = drivers[0].time
    deadline = clock.now() + timeout
    while not until():
        if not [d for d in drivers if d.step()]:
            if clock.now() > deadline:
                raise DriverTimeout(what)
            clock.wait(0.0005)


class GuestDriver:
    def __init__(self, device, host):
        self.dev = device
        self.host = host
        self.time = host.time
        self.hfi1_id = 0
        self.host_link_state = "OFFLINE"
        self.lcb_access_count = 0
        self.gi_mask = [ALL_ONES] * 12
        self.events: list[tuple[int, int]] = []  # (source, second-tier value) handled
        self.host_messages = 0
        self.sdma_state: dict[int, str] = {}
        self.p_senddmactrl: dict[int, int] = {}
        self.general_irqs_seen = host.irq.count(0)  # a driver loaded earlier handled those
        self.icode = ICODE_FUNCTIONAL_SIMULATOR
        self.dc8051_ver = (0, 0, 0)
        self.messages: list[str] = []  # what the driver would print (dd_dev_info/warn/err)
        self.neighbor_normal = False
        self.remote_link_down_reason = 0
        self.link_work: list[str] = []  # ppd->link_wq: one worker, in order
        self.link_errors = 0
        self.sc_kind: dict[int, str] = {}  # send context (hw) -> its type
        self.sc_halted: set[int] = set()  # SCF_HALTED: the error interrupt saw the halt
        self.egress_err_info: list[tuple[int, int]] = []  # (SEND_EGRESS_ERR_SOURCE, _INFO) read and cleared
        self.user_interrupts: list[tuple[int, str]] = []  # (receive context, what handle_user_interrupt did)
        self.user_waiting: dict[int, str] = {}  # receive context -> HFI1_CTXT_WAITING_RCV / _URG

    def say(self, message: str) -> None:
        self.messages.append(message)

    @property
    def silicon(self) -> bool:
        return self.icode == ICODE_RTL_SILICON

    def poll(self, fn, timeout: float, what: str):
        """Poll like the driver; `timeout` is the driver's, stretched to at least a
        second so that, on real time, a busy test machine is not mistaken for a
        missing handshake."""
        deadline = self.time.now() + max(timeout, 1.0)
        while True:
            value = fn()
            if value:
                return value
            if self.time.now() >= deadline:
                raise DriverTimeout(what)
            self.time.wait(0.0001)

    # -- csr access (chip.c / chip.h) -----------------------------------------------
    def read_csr(self, offset: int) -> int:
        value = self.dev.bar_read(0, offset, 8)
        self.time.mmio_read_done()
        return value

    def write_csr(self, offset: int, value: int) -> None:
        self.dev.bar_write(0, offset, 8, value & ALL_ONES)

    def read_kctxt_csr(self, ctxt: int, offset: int) -> int:
        return self.read_csr(offset + 0x100 * ctxt)

    def write_kctxt_csr(self, ctxt: int, offset: int, value: int) -> None:
        self.write_csr(offset + 0x100 * ctxt, value)

    def write_uctxt_csr(self, ctxt: int, offset: int, value: int) -> None:
        self.write_csr(offset + 0x1000 * ctxt, value)

    def chip_send_contexts(self) -> int:
        return self.read_csr(cr.SEND_CONTEXTS)

    def chip_rcv_contexts(self) -> int:
        return self.read_csr(cr.RCV_CONTEXTS)

    def chip_sdma_engines(self) -> int:
        return self.read_csr(cr.SEND_DMA_ENGINES)

    def chip_rcv_array_count(self) -> int:
        return self.read_csr(cr.RCV_ARRAY_CNT)

    # -- pcie.c ----------------------------------------------------------------------
    def hfi1_pcie_ddinit(self) -> None:
        self.revision = self.dev.bar_read(0, cr.CCE_REVISION, 8)
        assert self.revision != ALL_ONES, "Cannot read chip CSRs"
        self.rcv_array_count = self.dev.bar_read(0, cr.RCV_ARRAY_CNT, 8)
        self.base2_start = cr.RCV_ARRAY + 8 * self.rcv_array_count

    # -- chip.c: probe -----------------------------------------------------------------
    def check_int_registers(self) -> bool:
        mask = self.read_csr(cr.CCE_INT_MASK)
        self.write_csr(cr.CCE_INT_MASK, 0)
        ok = self.read_csr(cr.CCE_INT_MASK) == 0
        if ok:
            self.write_csr(cr.CCE_INT_CLEAR, ALL_ONES)
            ok = self.read_csr(cr.CCE_INT_STATUS) == 0
        if ok:
            self.write_csr(cr.CCE_INT_FORCE, ALL_ONES)
            ok = self.read_csr(cr.CCE_INT_STATUS) == ALL_ONES
        if ok:
            self.write_csr(cr.CCE_INT_CLEAR, ALL_ONES)
        self.write_csr(cr.CCE_INT_MASK, mask)
        return ok

    def read_guid(self) -> int:
        self.write_csr(cr.CCE_DC_CTRL, 0)
        self.read_csr(cr.CCE_DC_CTRL)
        self.base_guid = self.read_csr(cr.DC_DC8051_CFG_LOCAL_GUID)
        return self.base_guid

    def init_chip(self) -> None:
        self.write_csr(cr.SEND_CTRL, 0)
        for i in range(self.chip_send_contexts()):
            self.write_kctxt_csr(i, cr.SEND_CTXT_CTRL, 0)
        for i in range(self.chip_sdma_engines()):
            self.write_kctxt_csr(i, cr.SEND_DMA_CTRL, 0)
        self.write_csr(cr.RCV_CTRL, 0)
        for _ in range(self.chip_rcv_contexts()):
            self.write_csr(cr.RCV_CTXT_CTRL, 0)  # sic: context 0, every time
        for i in range(12):
            self.write_csr(cr.CCE_INT_MASK + 8 * i, 0)
        self.write_csr(cr.CCE_DC_CTRL, cr.CCE_DC_CTRL_DC_RESET_SMASK)
        self.read_csr(cr.CCE_DC_CTRL)
        self.dev.reset()  # pcie_flr(): the PCI layer turns the FLR into reset()
        self.write_csr(cr.CCE_DC_CTRL, 0)
        self.write_csr(cr.DCC_CFG_LED_CNTRL, cr.DCC_CFG_LED_CNTRL_LED_CNTRL_SMASK)  # setextled(dd, 0)
        self.write_csr(cr.ASIC_QSFP1_OUT, 0x1F)
        self.write_csr(cr.ASIC_QSFP2_OUT, 0x1F)
        self.clear_chip_resources()

    # -- firmware.c: mutex, resources, SBus, 8051 -----------------------------------------
    def acquire_hw_mutex(self) -> bool:
        mask = 1 << self.hfi1_id
        if self.read_csr(cr.ASIC_CFG_MUTEX) & 0xFF == mask:
            return True
        for attempt in range(2):
            self.write_csr(cr.ASIC_CFG_MUTEX, mask)
            if self.read_csr(cr.ASIC_CFG_MUTEX) & 0xFF == mask:
                return True
            if attempt == 0:
                self.write_csr(cr.ASIC_CFG_MUTEX, 0)  # "break mutex and retry"
        return False

    def release_hw_mutex(self) -> None:
        if self.read_csr(cr.ASIC_CFG_MUTEX) & 0xFF == 1 << self.hfi1_id:
            self.write_csr(cr.ASIC_CFG_MUTEX, 0)

    def acquire_chip_resource(self, resource: int, dynamic: bool = True) -> bool:
        all_bits = resource | resource << 8 if dynamic else resource
        mine = resource << (8 * self.hfi1_id) if dynamic else resource
        assert self.acquire_hw_mutex(), "hardware mutex stuck"
        scratch = self.read_csr(cr.ASIC_CFG_SCRATCH)
        free = not scratch & all_bits
        if free:
            self.write_csr(cr.ASIC_CFG_SCRATCH, scratch | mine)
            self.read_csr(cr.ASIC_CFG_SCRATCH)
        self.release_hw_mutex()
        return free

    def release_chip_resource(self, resource: int) -> None:
        assert self.acquire_hw_mutex(), "hardware mutex stuck"
        scratch = self.read_csr(cr.ASIC_CFG_SCRATCH)
        bit = resource << (8 * self.hfi1_id)
        assert scratch & bit, "releasing a resource that is not held"
        self.write_csr(cr.ASIC_CFG_SCRATCH, scratch & ~bit)
        self.read_csr(cr.ASIC_CFG_SCRATCH)
        self.release_hw_mutex()

    def clear_chip_resources(self) -> None:
        assert self.acquire_hw_mutex(), "hardware mutex stuck"
        scratch = self.read_csr(cr.ASIC_CFG_SCRATCH)
        self.write_csr(cr.ASIC_CFG_SCRATCH, scratch & ~(0xFF << (8 * self.hfi1_id)))
        self.read_csr(cr.ASIC_CFG_SCRATCH)
        self.release_hw_mutex()

    def sbus_request(self, receiver: int, address: int, command: int, data_in: int) -> None:
        self.write_csr(cr.ASIC_CFG_SBUS_REQUEST, data_in << 32 | command << 16 | address << 8 | receiver)

    def sbus_read(self, receiver: int, address: int, data_in: int) -> int:
        self.sbus_request(receiver, address, 0x22, data_in)
        for _ in range(100):
            reg = self.read_csr(cr.ASIC_STS_SBUS_RESULT)
            if (reg >> 2) & 0x7 == 4:  # SBUS_READ_COMPLETE
                return reg >> 32
        raise DriverTimeout("sbus_read: read failed")

    def dump_fw_version(self) -> dict:
        assert self.acquire_chip_resource(CR_SBUS)
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK)
        self.sbus_request(0xFD, 0x02, 0x21, 0)
        self.sbus_request(0xFD, 0x07, 0x21, 0x1)
        versions = {"sbus": self.sbus_read(0xFD, 0x08, 0x1), "pcie": [], "fabric": []}
        pcie_addrs = [0x08, 0x0A, 0x0C, 0x0E, 0x10, 0x12, 0x14, 0x16, 0x18, 0x1A, 0x1C, 0x1E, 0x20, 0x22, 0x24, 0x26]
        for kind, addrs in (("pcie", pcie_addrs), ("fabric", [0x01, 0x02, 0x03, 0x04])):
            for addr in addrs:
                self.sbus_request(addr, 0x03, 0x21, 0)
                versions[kind].append(self.sbus_read(addr, 0x04, 0x0))
        counters = self.read_csr(cr.ASIC_STS_SBUS_COUNTERS)  # clear_sbus_fast_mode
        assert counters & 0xFFFF == (counters >> 16) & 0xFFFF, "SBus counters never settle"
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, 0)
        self.release_chip_resource(CR_SBUS)
        return versions

    def sbus_request_slow(self, receiver: int, address: int, command: int, data_in: int) -> int:
        self.clear_sbus_fast_mode()
        self.sbus_request(receiver, address, command, data_in)
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_EXECUTE_SMASK)
        done = cr.ASIC_STS_SBUS_RESULT_DONE_SMASK | cr.ASIC_STS_SBUS_RESULT_RCV_DATA_VALID_SMASK
        for _ in range(101):
            if self.read_csr(cr.ASIC_STS_SBUS_RESULT) & done == done:
                break
        else:
            return -ETIMEDOUT
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, 0)
        for _ in range(101):
            if not self.read_csr(cr.ASIC_STS_SBUS_RESULT) & cr.ASIC_STS_SBUS_RESULT_DONE_SMASK:
                return 0
        return -62  # -ETIME

    def clear_sbus_fast_mode(self) -> None:
        for _ in range(101):
            counters = self.read_csr(cr.ASIC_STS_SBUS_COUNTERS)
            if counters & 0xFFFF == (counters >> 16) & 0xFFFF:
                break
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, 0)

    # -- firmware.c on RTL silicon: downloads, the RSA engine, the 8051 -------------------------
    def obtain_firmware(self, files: dict[str, bytes] | None = None) -> None:
        """__obtain_firmware: the four files (vfnic's by default), each checked
        as obtain_one_firmware checks it (FirmwareError otherwise)."""
        files = files or firmware.firmware_files()
        self.fw = {image: firmware.parse_image(files[image.filename]) for image in firmware.Image}

    def write_rsa_data(self, base: int, value: int, qwords: int = 32) -> None:
        for i in range(qwords):
            self.write_csr(base + 8 * i, (value >> (64 * i)) & ALL_ONES)

    def load_security_variables(self, image: firmware.ParsedImage) -> None:
        self.write_rsa_data(cr.MISC_CFG_RSA_MODULUS, image.modulus)
        self.write_rsa_data(cr.MISC_CFG_RSA_R2, image.r2)
        self.write_rsa_data(cr.MISC_CFG_RSA_MU, image.mu, 1)
        for i in range(0, 128, 8):  # write_streamed_rsa_data: 16 writes to one address
            self.write_csr(cr.MISC_CFG_SHA_PRELOAD, int.from_bytes(image.header[i:i + 8], "little"))

    def rsa_status(self) -> int:
        return (self.read_csr(cr.MISC_CFG_FW_CTRL) >> cr.MISC_CFG_FW_CTRL_RSA_STATUS_SHIFT) & 0x3

    def run_rsa(self, who: str, image: firmware.ParsedImage) -> int:
        self.write_rsa_data(cr.MISC_CFG_RSA_SIGNATURE, image.signature)
        self.write_csr(cr.MISC_CFG_RSA_CMD, 1)  # RSA_CMD_INIT
        if self.rsa_status() != 0:
            self.say(f"{who} security engine not idle - giving up")
            return -EBUSY
        self.write_csr(cr.MISC_CFG_RSA_CMD, 2)  # RSA_CMD_START
        deadline = self.time.now() + 1.0  # RSA_ENGINE_TIMEOUT is 100 ms; stretched
        while True:
            status = self.rsa_status()
            if status == 0:
                self.say(f"{who} firmware security bad idle state")
                ret = -EINVAL
                break
            if status in (2, 3):
                ret = 0 if status == 2 else -EINVAL
                break
            if self.time.now() > deadline:
                self.say(f"{who} firmware security time out")
                ret = -ETIMEDOUT
                break
        auth_errors = (cr.MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK
                       | cr.MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK)
        self.write_csr(cr.MISC_ERR_CLEAR, auth_errors)
        reg = self.read_csr(cr.MISC_ERR_STATUS)
        if ret:
            if reg & cr.MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK:
                self.say(f"{who} firmware authorization failed")
            if reg & cr.MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK:
                self.say(f"{who} firmware key mismatch")
        return ret

    def set_serdes_broadcast(self, bg1: int, bg2: int, addrs) -> None:
        for addr in reversed(addrs):
            self.sbus_request(addr, 0xFD, 0x21, bg1 << 4 | bg2 << 16)

    def load_fabric_serdes_firmware(self, image: firmware.ParsedImage) -> int:
        self.say("Downloading fabric firmware")
        ra = FABRIC_SERDES_BROADCAST
        self.load_security_variables(image)
        self.sbus_request(ra, 0x07, 0x21, 0x00000011)
        self.sbus_request(ra, 0x07, 0x21, 0x00000010)
        self.sbus_request(ra, 0x00, 0x21, 0x40000000)
        for i in range(0, len(image.payload), 4):
            self.sbus_request(ra, 0x0A, 0x21, int.from_bytes(image.payload[i:i + 4], "little"))
        self.sbus_request(ra, 0x00, 0x21, 0x00000000)
        self.sbus_request(ra, 0x0B, 0x21, 0x000C0000)
        err = self.run_rsa("fabric serdes", image)
        if err:
            return err
        self.sbus_request(ra, 0x07, 0x21, 0x00000002)
        self.sbus_request(ra, 0x08, 0x21, 0x00000000)
        return 0

    def write_8051(self, code: bool, start: int, data: bytes) -> None:
        setup = cr.DC_DC8051_CFG_RAM_ACCESS_SETUP_AUTO_INCR_ADDR_SMASK
        if code:
            setup |= cr.DC_DC8051_CFG_RAM_ACCESS_SETUP_RAM_SEL_SMASK
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_SETUP, setup)
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_CTRL,
                       (start & 0x7FFF) | cr.DC_DC8051_CFG_RAM_ACCESS_CTRL_WRITE_ENA_SMASK)
        for offset in range(0, len(data), 8):
            self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_WR_DATA, int.from_bytes(data[offset:offset + 8], "little"))
            for _ in range(101):  # 100 x udelay(1)
                if self.read_csr(cr.DC_DC8051_CFG_RAM_ACCESS_STATUS) & (1 << 16):
                    break
            else:
                raise DriverTimeout("timeout writing 8051 data")
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_CTRL, 0)
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_SETUP, 0)

    def wait_fm_ready(self, timeout: float) -> bool:
        if not self.silicon:
            return True
        deadline = self.time.now() + timeout
        while (self.read_csr(cr.DC_DC8051_STS_CUR_STATE) >> 16) & 0xFF != 0xA0:
            if self.time.now() > deadline:
                return False
            self.time.wait(0.002)
        return True

    def read_misc_status(self) -> tuple[int, int, int]:
        status = self.read_8051_config(0x0E, 4)
        patch = self.read_8051_config(0x16, 4)
        return status >> 24 & 0xFF, status >> 16 & 0xFF, patch >> 24 & 0xFF

    def write_host_interface_version(self) -> int:
        frame = self.read_8051_config(0x0B, 4) & ~(0xFF << 16)
        return self.load_8051_config(0x0B, 4, frame | 1 << 16)

    def load_8051_firmware(self, image: firmware.ParsedImage) -> int:
        self.write_csr(cr.DC_DC8051_CFG_RST, 0x1F)  # M8051W | CRAM | DRAM | IRAM | SFR
        self.write_csr(cr.DC_DC8051_CFG_RST, 0x01)
        self.load_security_variables(image)
        self.write_csr(cr.MISC_CFG_FW_CTRL, 0)
        self.write_8051(True, 0, image.payload)
        self.write_csr(cr.MISC_CFG_FW_CTRL, cr.MISC_CFG_FW_CTRL_FW_8051_LOADED_SMASK)
        ret = self.run_rsa("8051", image)
        if ret:
            return ret
        self.write_csr(cr.DC_DC8051_CFG_RST, 0)
        if not self.wait_fm_ready(5.0):
            self.say(f"8051 start timeout, current state {self.read_csr(cr.DC_DC8051_STS_CUR_STATE) >> 16 & 0xFF:#x}")
            return -ETIMEDOUT
        self.dc8051_ver = self.read_misc_status()
        self.say("8051 firmware version %d.%d.%d" % self.dc8051_ver)
        ret = self.write_host_interface_version()
        if ret != HCMD_SUCCESS:
            self.say(f"Failed to set host interface version, return {ret:#x}")
            return -EIO
        return 0

    def load_firmware(self) -> int:
        """firmware.c load_firmware on RTL silicon (no alternate files to retry with)."""
        assert self.acquire_chip_resource(CR_SBUS)
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK)
        self.set_serdes_broadcast(ALL_FABRIC_SERDES_BROADCAST, FABRIC_SERDES_BROADCAST, FABRIC_SERDES)
        ret = self.load_fabric_serdes_firmware(self.fw[firmware.Image.FABRIC])
        self.clear_sbus_fast_mode()
        self.release_chip_resource(CR_SBUS)
        if ret:
            return ret
        return self.load_8051_firmware(self.fw[firmware.Image.DC8051])

    def fabric_serdes_reset(self) -> None:
        assert self.acquire_chip_resource(CR_SBUS)
        self.write_csr(cr.ASIC_CFG_SBUS_EXECUTE, cr.ASIC_CFG_SBUS_EXECUTE_FAST_MODE_SMASK)
        self.load_fabric_serdes_firmware(self.fw[firmware.Image.FABRIC])
        self.clear_sbus_fast_mode()
        self.release_chip_resource(CR_SBUS)

    def thermal_init(self) -> int:
        if not self.silicon or self.read_csr(cr.ASIC_CFG_SCRATCH) & CR_THERM_INIT:
            return 0
        assert self.acquire_chip_resource(CR_SBUS)
        self.say("Initializing thermal sensor")
        self.write_csr(cr.ASIC_CFG_THERM_POLL_EN, 0)
        ret = 0
        for address, command, data in ((0x0, 0x20, 0), (0x0, 0x21, 0x1), (0x1, 0x21, 0x32), (0x3, 0x21, 0x1),
                                       (0x0, 0x21, 0x2)):
            ret = self.sbus_request_slow(0x4F, address, command, data)
            if ret:
                self.say("Thermal sensor initialization failed")
                break
        else:
            self.write_csr(cr.ASIC_CFG_THERM_POLL_EN, 0x1)
            assert self.acquire_chip_resource(CR_THERM_INIT, dynamic=False)
        self.release_chip_resource(CR_SBUS)
        return ret

    def do_8051_command(self, kind: int, in_data: int, lcb_value: int = 0) -> tuple[int, int]:
        if kind == 0x08:  # HCMD_WRITE_LCB_CSR: bits 63:40 of the value travel in EXT_DEV_0
            in_data |= (lcb_value & 0xFFFFFFFFFF) << 8
            ext = self.read_csr(cr.DC_DC8051_CFG_EXT_DEV_0) & cr.DC_DC8051_CFG_EXT_DEV_0_COMPLETED_SMASK
            self.write_csr(cr.DC_DC8051_CFG_EXT_DEV_0, ext | (lcb_value >> 40 & 0xFF) << 8 | (lcb_value >> 48) << 16)
        reg = kind << 8 | (in_data & 0xFFFFFFFFFFFF) << 16
        self.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, reg)
        self.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, reg | cr.DC_DC8051_CFG_HOST_CMD_0_REQ_NEW_SMASK)
        reg = self.poll(lambda: (r := self.read_csr(cr.DC_DC8051_CFG_HOST_CMD_1)) & 1 and r, 1.0,
                   f"8051 host command {kind} timeout")
        out = reg >> 16
        if kind == 0x07:  # HCMD_READ_LCB_CSR: the top 16 bits are in EXT_DEV_1
            out |= (self.read_csr(cr.DC_DC8051_CFG_EXT_DEV_1) & 0xFFFF0000) << 32
        self.write_csr(cr.DC_DC8051_CFG_HOST_CMD_0, 0)
        return (reg >> 8) & 0xFF, out

    def load_8051_config(self, field: int, lane: int, data: int) -> int:
        return self.do_8051_command(0x01, field << 40 | lane << 32 | data)[0]

    def read_8051_data(self, addr: int) -> int:
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_SETUP, 0)
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_CTRL, addr & 0x7FFF)
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_CTRL,
                       (addr & 0x7FFF) | cr.DC_DC8051_CFG_RAM_ACCESS_CTRL_READ_ENA_SMASK)
        self.poll(lambda: self.read_csr(cr.DC_DC8051_CFG_RAM_ACCESS_STATUS) & (1 << 16), 0.01, "timeout reading 8051 data")
        value = self.read_csr(cr.DC_DC8051_CFG_RAM_ACCESS_RD_DATA)
        self.write_csr(cr.DC_DC8051_CFG_RAM_ACCESS_CTRL, 0)
        return value

    def read_8051_config(self, field: int, lane: int) -> int:
        addr = (4 * 0x17 + lane * 4 * 8 if lane < 4 else 0) + 4 * field
        big = self.read_8051_data(addr)
        return (big >> 32) & 0xFFFFFFFF if addr & 4 else big & 0xFFFFFFFF

    # -- eprom.c / platform ----------------------------------------------------------------
    def eprom_init(self) -> None:
        assert self.acquire_chip_resource(CR_EPROM), "EPROM resource busy"
        self.write_csr(cr.ASIC_EEP_CTL_STAT, cr.ASIC_EEP_CTL_STAT_EP_RESET_SMASK)
        self.write_csr(cr.ASIC_EEP_CTL_STAT, 0x2 << cr.ASIC_EEP_CTL_STAT_RATE_SPI_SHIFT)
        self.write_csr(cr.ASIC_EEP_ADDR_CMD, 0xAB << 24)
        self.release_chip_resource(CR_EPROM)

    def read_page(self, offset: int) -> bytes:
        self.write_csr(cr.ASIC_EEP_ADDR_CMD, 0x03 << 24 | offset)
        page = b"".join((self.read_csr(cr.ASIC_EEP_DATA) & 0xFFFFFFFF).to_bytes(4, "little") for _ in range(64))
        self.write_csr(cr.ASIC_EEP_ADDR_CMD, 0)
        return page

    def eprom_read_platform_config(self) -> bytes | None:
        assert self.acquire_chip_resource(CR_EPROM)
        try:
            directory = self.read_page(128 * 1024 - 256)
            assert directory[-4:] != b"eprm", "segment format not expected"
            partition = b"".join(self.read_page(128 * 1024 + 256 * i) for i in range(16))
            if not partition.startswith(b"APO="):
                return None
            end = partition.find(b"egamiAPO")
            return partition[:end if end >= 0 else len(partition)]
        finally:
            self.release_chip_resource(CR_EPROM)

    @staticmethod
    def parse_platform_config(data: bytes) -> dict:
        """parse_platform_config(): (type, is_data) -> table dwords, with its checks."""
        words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
        assert words[0] == 0x3D4F5041, "Bad config file"
        assert words[1] * 4 == len(data), "file length mismatch"
        tables, i = {}, 2
        while i < len(words):
            header, inverse = words[i], words[i + 1]
            assert header == ~inverse & 0xFFFFFFFF, f"Failed validation at offset {i}"
            length, kind, record = (header >> 16) & 0xFFF, header >> 28, header & 0x3F
            table = words[i + 2:i + 2 + length]
            crc = zlib.crc32(b"".join(w.to_bytes(4, "little") for w in table))
            assert crc == words[i + 2 + length], f"Failed CRC check at offset {i}"
            tables[(kind, bool(record))] = table
            i += 3 + length
        return tables

    @staticmethod
    def get_platform_config_field(tables: dict, kind: int, index: int, field: int, hfi1_id: int = 0) -> int:
        meta = tables[(kind, False)][field]
        start, length = meta & 0x7FFF, meta >> 16
        data = tables[(kind, True)]
        if kind == 2:  # port table: 4 dwords per HFI
            data = data[4 * hfi1_id:]
        elif kind != 1:
            data = data[index:]
        return (data[start // 32] >> (start % 32)) & ((1 << length) - 1)

    # -- interrupts (chip.c, msix.c) -----------------------------------------------------------
    def set_intr_bits(self, first: int, last: int, enable: bool) -> None:
        for reg in range(first // 64, last // 64 + 1):
            bits = 0
            for src in range(max(first, 64 * reg), min(last, 64 * reg + 63) + 1):
                bits |= 1 << (src % 64)
            value = self.read_csr(cr.CCE_INT_MASK + 8 * reg)
            self.write_csr(cr.CCE_INT_MASK + 8 * reg, value | bits if enable else value & ~bits)

    def clear_all_interrupts(self) -> None:
        for i in range(12):
            self.write_csr(cr.CCE_INT_CLEAR + 8 * i, ALL_ONES)
        for name in ("CCE_ERR_CLEAR", "MISC_ERR_CLEAR", "RCV_ERR_CLEAR", "SEND_ERR_CLEAR", "SEND_PIO_ERR_CLEAR",
                     "SEND_DMA_ERR_CLEAR", "SEND_EGRESS_ERR_CLEAR"):
            self.write_csr(CSR_OFFSETS[name], ALL_ONES)
        for i in range(self.chip_send_contexts()):
            self.write_kctxt_csr(i, cr.SEND_CTXT_ERR_CLEAR, ALL_ONES)
        for i in range(self.chip_sdma_engines()):
            self.write_kctxt_csr(i, cr.SEND_DMA_ENG_ERR_CLEAR, ALL_ONES)
        for name in ("DCC_ERR_FLG_CLR", "DC_LCB_ERR_CLR", "DC_DC8051_ERR_CLR"):
            self.write_csr(CSR_OFFSETS[name], ALL_ONES)

    def remap_intr(self, source: int, vector: int) -> None:
        self.gi_mask[source // 64] &= ~(1 << (source % 64))
        m, n = divmod(source, 8)
        reg = self.read_csr(cr.CCE_INT_MAP + 8 * m) & ~(0xFF << (8 * n))
        self.write_csr(cr.CCE_INT_MAP + 8 * m, reg | vector << (8 * n))

    def set_up_interrupts(self, n_krcv_queues: int) -> None:
        self.set_intr_bits(0, 767, False)
        self.clear_all_interrupts()
        self.gi_mask = [ALL_ONES] * 12
        for i in range(96):
            self.write_csr(cr.CCE_INT_MAP + 8 * i, 0)
        engines = self.chip_sdma_engines()
        for e in range(engines):  # msix_request_sdma_irq + enable_sdma_srcs
            for start in (IS_SDMA_START, IS_SDMA_PROGRESS_START, IS_SDMA_IDLE_START):
                self.remap_intr(start + e, 1 + e)
            for start in (IS_SDMA_START, IS_SDMA_PROGRESS_START, IS_SDMA_IDLE_START, IS_SDMAENG_ERR_START):
                self.set_intr_bits(start + e, start + e, True)
        for c in range(n_krcv_queues):
            self.remap_intr(IS_RCVAVAIL_START + c, 1 + engines + c)

    def interrupt_clear_down(self, status: int, clear: int, ctxt: int = 0) -> list[int]:
        seen = []
        for _ in range(21):
            reg = self.read_kctxt_csr(ctxt, status)
            if reg == 0:
                return seen
            self.write_kctxt_csr(ctxt, clear, reg)
            seen.append(reg)
        raise AssertionError(f"Repeating {status:#x} bits - the device does not clear them")

    def general_interrupt(self) -> list[int]:
        """MSI-X vector 0: scan, clear, dispatch; returns the sources handled."""
        pending = []
        for i in range(12):
            if not self.gi_mask[i]:
                continue
            reg = self.read_csr(cr.CCE_INT_STATUS + 8 * i) & self.gi_mask[i]
            if reg:
                self.write_csr(cr.CCE_INT_CLEAR + 8 * i, reg)
                pending += [64 * i + b for b in range(64) if reg >> b & 1]
        for source in pending:
            self.is_interrupt(source)
        return pending

    def step(self) -> bool:
        """Handle the general interrupts raised so far, then the link work
        they queued; False if there was nothing to do."""
        raised, progressed = self.host.irq.count(0), False
        while self.general_irqs_seen < raised:
            self.general_irqs_seen += 1
            self.general_interrupt()
            progressed = True
        if self.link_work:
            self.run_link_work()
            progressed = True
        return progressed

    def service_interrupts(self, until, timeout: float = 2.0) -> None:
        """Run the general handler each time MSI-X vector 0 fires, until `until()`."""
        deadline = self.time.now() + timeout
        while not until():
            self.host.irq.wait_for(0, self.general_irqs_seen + 1, timeout=max(0.0, deadline - self.time.now()))
            self.general_irqs_seen += 1
            self.general_interrupt()

    def is_interrupt(self, source: int) -> None:
        if source < 8 and source in GENERAL_ERRORS:
            status, clear = GENERAL_ERRORS[source]
            for flags in self.interrupt_clear_down(CSR_OFFSETS[status], CSR_OFFSETS[clear]):
                self.events.append((source, flags))
                if source == EGRESS_ERR_INT and flags & SDMA_DISALLOWED_PACKET_ERRS:
                    self.handle_send_egress_err_info()
        elif IS_SDMAENG_ERR_START <= source < IS_SDMAENG_ERR_START + 16:
            engine = source - IS_SDMAENG_ERR_START
            for status in self.interrupt_clear_down(cr.SEND_DMA_ENG_ERR_STATUS, cr.SEND_DMA_ENG_ERR_CLEAR, engine):
                self.events.append((source, status))
                self.sdma_engine_error(engine, status)
        elif source == IS_DC_START + 2:
            for flags in self.interrupt_clear_down(cr.DC_DC8051_ERR_FLG, cr.DC_DC8051_ERR_CLR):
                self.events.append((source, flags))
                if flags & cr.DC_DC8051_ERR_FLG_SET_BY_8051_SMASK:
                    self.handle_8051_interrupt(self.read_csr(cr.DC_DC8051_DBG_ERR_INFO_SET_BY_8051))
        elif IS_SENDCTXT_ERR_START <= source < IS_SENDCTXT_ERR_START + self.chip_send_contexts():
            status = self.is_sendctxt_err_int(source - IS_SENDCTXT_ERR_START)
            self.events.append((source, status))
        elif IS_RCVAVAIL_START <= source < IS_RCVURGENT_START + (IS_RCVURGENT_START - IS_RCVAVAIL_START):
            self.events.append((source, 0))
            self.handle_user_interrupt((source - IS_RCVAVAIL_START) % (IS_RCVURGENT_START - IS_RCVAVAIL_START))
        elif source == QSFP1_INT:
            for flags in self.interrupt_clear_down(cr.ASIC_QSFP1_STATUS, cr.ASIC_QSFP1_CLEAR):
                self.events.append((source, flags))
        else:
            self.events.append((source, 0))

    def handle_8051_interrupt(self, info: int) -> None:
        """chip.c handle_8051_interrupt: queue the link work the message asks for, in its order."""
        host_msg, error = info & 0xFFFF, info >> 16 & 0xFFFFFFFF
        self.host_messages |= host_msg
        self.link_errors |= error
        queue_link_down = False
        if error & FAILED_LNI and self.host_link_state in ("POLL", "VERIFY_CAP", "GOING_UP"):
            queue_link_down = True
        if host_msg & BC_SMA_MSG:
            self.link_work.append("handle_sma_message")
        if host_msg & LINKUP_ACHIEVED:
            self.say("8051: Link up")
            self.link_work.append("handle_link_up")
        if host_msg & VERIFY_CAP_FRAME:
            self.link_work.append("handle_verify_cap")
        if host_msg & LINK_GOING_DOWN:
            self.say("8051: Link down")
            queue_link_down = True
        if queue_link_down and self.host_link_state not in ("GOING_OFFLINE", "LINK_COOLDOWN") \
                and "handle_link_down" not in self.link_work:
            self.link_work.append("handle_link_down")

    # -- link (chip.c) -----------------------------------------------------------------------
    def init_lcb(self) -> None:
        """bringup_serdes -> init_lcb: LCB cclk loopback set-up, not on the simulator."""
        if not self.silicon:
            return
        for name, value in (("DC_LCB_CFG_TX_FIFOS_RESET", 1), ("DC_LCB_CFG_LANE_WIDTH", 0),
                            ("DC_LCB_CFG_REINIT_AS_SLAVE", 0), ("DC_LCB_CFG_CNT_FOR_SKIP_STALL", 0x110),
                            ("DC_LCB_CFG_CLK_CNTR", 0x08), ("DC_LCB_CFG_LOOPBACK", 0x02),
                            ("DC_LCB_CFG_TX_FIFOS_RESET", 0)):
            self.write_csr(CSR_OFFSETS[name], value)

    def tune_serdes(self, tables: dict | None = None) -> None:
        """platform.c tune_serdes for a FIXED port: apply_tunings (passive)."""
        if not self.silicon:
            return
        atten = 0
        if tables is not None:
            atten = self.get_platform_config_field(tables, 2, 0, 10) + self.get_platform_config_field(tables, 2, 0, 11)
        tuning = self.read_8051_config(0x02, 4) & ~(0xFF << 24)  # LINK_TUNING_PARAMETERS, passive (0)
        if self.load_8051_config(0x02, 4, tuning) != HCMD_SUCCESS:
            self.say("apply_tunings: Failed to set tuning method")
        for lane in range(4):  # apply_tx_lanes(CHANNEL_LOSS_SETTINGS)
            if self.load_8051_config(0x05, lane, atten << 16 | atten << 24) != HCMD_SUCCESS:
                self.say(f"Setting channel loss: apply_tx_lanes for lane {lane} failed")

    def set_local_link_attributes(self) -> None:
        if self.silicon:
            self.fabric_serdes_reset()
        tx = self.read_8051_config(0x06, 4)  # read_tx_settings
        assert self.load_8051_config(0x06, 4, (tx & ~0xFF & ~(0xFF << 24)) | 0xF | 2 << 24) == HCMD_SUCCESS
        frame = self.read_8051_config(0x0B, 4)  # write_host_interface_version
        assert self.load_8051_config(0x0B, 4, (frame & ~(0xFF << 16)) | 1 << 16) == HCMD_SUCCESS
        assert self.load_8051_config(0x07, 4, 1 << 4) == HCMD_SUCCESS  # VERIFY_CAP_LOCAL_PHY
        assert self.load_8051_config(0x08, 4, 3 | 1 << 3 | 272 << 8 | 3 << 20) == HCMD_SUCCESS
        misc_bits = 1 << 3 if self.dc8051_ver >= (1, 25, 0) else 0  # EXT_CFG_LCB_RESET_SUPPORTED
        assert self.load_8051_config(0x09, 4, misc_bits << 24 | 0xF) == HCMD_SUCCESS  # widths 1X-4X
        assert self.load_8051_config(0x0A, 4, 0x24F0 << 8 | 0x11) == HCMD_SUCCESS

    def start_link(self, tables: dict | None = None) -> None:
        """start_link: tune_serdes, then set_link_state(HLS_DN_POLL) (from Offline)."""
        self.tune_serdes(tables)
        self.write_csr(cr.DCC_CFG_LED_CNTRL, 0)
        if self.host_link_state != "OFFLINE":
            self.goto_offline()
        self.set_local_link_attributes()
        code, _ = self.do_8051_command(0x03, 0x20)  # CHANGE_PHY_STATE(PLS_POLLING)
        assert code == HCMD_SUCCESS, "Failed to transition to Polling link state"
        self.host_link_state = "POLL"
        self.polling_state_read = self.read_csr(cr.DC_DC8051_STS_CUR_STATE) & 0xFF  # log_physical_state
        if self.polling_state_read != 0x20:
            self.say(f"anticipated phy link state 0x20, read {self.polling_state_read:#x}")

    def acquire_lcb_access(self) -> None:
        assert self.host_link_state in HLS_UP
        if self.lcb_access_count == 0:
            assert self.do_8051_command(0x05, 0x1 << 40)[0] == HCMD_SUCCESS
            self.write_csr(cr.DC_DC8051_CFG_CSR_ACCESS_SEL, 0x3)
        self.lcb_access_count += 1

    def release_lcb_access(self) -> None:
        if self.lcb_access_count == 1:
            self.write_csr(cr.DC_DC8051_CFG_CSR_ACCESS_SEL, 0x2)
            assert self.do_8051_command(0x05, 0x2 << 40)[0] == HCMD_SUCCESS
        self.lcb_access_count -= 1

    def read_lcb_csr(self, offset: int) -> int:
        if self.host_link_state in HLS_UP:
            if self.silicon:  # read_lcb_via_8051: HCMD_READ_LCB_CSR
                code, value = self.do_8051_command(0x07, (offset - cr.DC_LCB_CFG_RUN) >> 3)
                assert code == HCMD_SUCCESS, "HCMD_READ_LCB_CSR failed"
                return value
            self.acquire_lcb_access()  # the simulator flavour (the 6.12 deadlock, see docs/hfi1.md)
            try:
                return self.read_csr(offset)
            finally:
                self.release_lcb_access()
        return self.read_csr(offset)

    def write_lcb_csr(self, offset: int, value: int) -> None:
        if self.host_link_state in HLS_UP:
            if self.silicon and self.dc8051_ver >= (0, 20, 0):  # write_lcb_via_8051: HCMD_WRITE_LCB_CSR
                code, _ = self.do_8051_command(0x08, (offset - cr.DC_LCB_CFG_RUN) >> 3, value)
                assert code == HCMD_SUCCESS, "HCMD_WRITE_LCB_CSR failed"
                return
            self.acquire_lcb_access()
            self.write_csr(offset, value)
            self.release_lcb_access()
            return
        self.write_csr(offset, value)

    def lcb_shutdown(self) -> None:
        self.write_csr(cr.DC_LCB_CFG_RUN, 0)
        self.write_csr(cr.DC_LCB_CFG_TX_FIFOS_RESET, 1)
        err_en = self.read_csr(cr.DC_LCB_ERR_EN)
        reset = self.read_csr(cr.DCC_CFG_RESET)
        self.write_csr(cr.DCC_CFG_RESET, reset | cr.DCC_CFG_RESET_RESET_LCB | cr.DCC_CFG_RESET_RESET_RX_FPE)
        self.read_csr(cr.DCC_CFG_RESET)
        self.write_csr(cr.DCC_CFG_RESET, reset)
        self.write_csr(cr.DC_LCB_ERR_EN, err_en)

    def handle_verify_cap(self) -> None:
        """handle_verify_cap: set_link_state(HLS_VERIFY_CAP), read the peer's
        frames, set up the LCB and the credits, CHANGE_PHY_STATE(LinkUp)."""
        assert self.host_link_state == "POLL", f"unexpected state transition from {self.host_link_state} to VERIFY_CAP"
        self.host_link_state = "VERIFY_CAP"
        state = self.read_csr(cr.DC_DC8051_STS_CUR_STATE) & 0xFF  # log_physical_state(PLS_CONFIGPHY_VERIFYCAP)
        if state != 0x46:
            self.say(f"anticipated phy link state 0x46, read {state:#x}")
        self.lcb_shutdown()
        phy, fabric = self.read_8051_config(0x0F, 4), self.read_8051_config(0x10, 4)
        width = self.read_8051_config(0x11, 4)
        device = self.read_8051_config(0x15, 4)
        tx_settings, lni = self.read_8051_config(0x06, 4), self.read_8051_config(0x0C, 4)  # get_link_widths
        self.peer_capabilities = {"continuous_updates": phy >> 4 & 1, "vau": fabric & 7, "z": fabric >> 3 & 1,
                                  "vcu": fabric >> 4 & 7, "vl15buf": fabric >> 8 & 0xFFF, "crc": fabric >> 20 & 7,
                                  "remote_tx_rate": width >> 16 & 0xFF, "widths": width & 0xFFFF,
                                  "device_id": device >> 8 & 0xFFFF, "device_rev": device & 0xFF,
                                  "active_tx_lanes": tx_settings & 0xFF, "active_rx_lanes": lni >> 16 & 0xFF}
        self.say("Peer Fabric: vAU %(vau)d, Z %(z)d, vCU %(vcu)d, vl15 credits %(vl15buf)#x, CRC sizes %(crc)#x"
                 % self.peer_capabilities)
        rate = self.peer_capabilities["remote_tx_rate"] & 2  # local tx rate: 25G only
        if not rate:
            self.say(f"handle_verify_cap: unexpected remote tx rate {self.peer_capabilities['remote_tx_rate']}, "
                     "using 25Gb")
        vau = self.peer_capabilities["vau"] or 1  # set_up_vau
        credit = self.read_csr(cr.SEND_CM_GLOBAL_CREDIT)
        self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, (credit & ~cr.SEND_CM_GLOBAL_CREDIT_AU_SMASK) | vau << 16)
        credit = self.read_csr(cr.SEND_CM_GLOBAL_CREDIT)  # set_up_vl15(dd, 0)
        credit &= ~(cr.SEND_CM_GLOBAL_CREDIT_TOTAL_CREDIT_LIMIT_SMASK | cr.SEND_CM_GLOBAL_CREDIT_SHARED_LIMIT_SMASK)
        self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, credit)
        self.write_csr(cr.SEND_CM_CREDIT_VL15, 0)
        self.vl15buf_cached = self.peer_capabilities["vl15buf"]
        self.write_csr(cr.DC_LCB_CFG_CRC_MODE, 0)  # 14b CRC is the lowest in common: LCB_CRC_14B
        self.write_csr(cr.SEND_CM_CTRL, self.read_csr(cr.SEND_CM_CTRL) & ~cr.SEND_CM_CTRL_FORCE_CREDIT_MODE_SMASK)
        self.write_csr(cr.SEND_CM_REMOTE_AU_TABLE0_TO3, 0x0000000400020001)  # assign_remote_cm_au_table
        self.write_csr(cr.SEND_CM_REMOTE_AU_TABLE4_TO7, 0x0000004000200010)
        self.write_csr(cr.DC_LCB_CFG_TX_FIFOS_RESET, 0)
        self.write_csr(cr.DC_LCB_ERR_EN, 0)
        self.write_csr(cr.DC_DC8051_CFG_CSR_ACCESS_SEL, cr.DC_DC8051_CFG_CSR_ACCESS_SEL_DCC_SMASK)  # set_8051_lcb_access
        code, _ = self.do_8051_command(0x03, 0x50)  # set_link_state(HLS_GOING_UP)
        if code != HCMD_SUCCESS:
            self.say(f"Failed to transition to link up state, return {code:#x}")
            return
        self.host_link_state = "GOING_UP"

    def handle_link_up(self) -> None:
        """set_link_state(HLS_UP_INIT), then read_ltp_rtt and clear_linkup_counters."""
        wanted = "GOING_UP" if self.silicon else "POLL"
        assert self.host_link_state == wanted, \
            f"unexpected state transition from {self.host_link_state} to INIT"
        self.poll(lambda: self.read_csr(cr.DC_DC8051_STS_CUR_STATE) & 0xFF == 0x50, 1.0,
             "physical state did not change to LINK-UP")
        self.poll(lambda: (self.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48) & 7 == 2, 1.0,
             "logical state did not change to INIT")
        self.write_csr(cr.RCV_CTRL, self.read_csr(cr.RCV_CTRL) | cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK)
        self.handle_linkup_change_up()
        self.host_link_state = "INIT"
        self.ltp_rtt = self.read_lcb_csr(cr.DC_LCB_STS_ROUND_TRIP_LTP_CNT)
        for name in ("DC_LCB_ERR_INFO_SEQ_CRC_CNT", "DC_LCB_ERR_INFO_REINIT_FROM_PEER_CNT",
                     "DC_LCB_ERR_INFO_RX_REPLAY_CNT"):  # clear_linkup_counters
            self.write_lcb_csr(CSR_OFFSETS[name], 0)
        self.write_csr(cr.DCC_ERR_PORTRCV_ERR_CNT, 0)
        self.write_csr(cr.RCV_COUNTER_ARRAY32 + 8 * cr.RCV_BUF_OVFL_CNT, 0)
        if self.silicon:  # set_up_vl15(dd, vl15buf_cached)
            credit = self.read_csr(cr.SEND_CM_GLOBAL_CREDIT)
            credit &= ~(cr.SEND_CM_GLOBAL_CREDIT_TOTAL_CREDIT_LIMIT_SMASK
                        | cr.SEND_CM_GLOBAL_CREDIT_SHARED_LIMIT_SMASK)
            self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, credit | self.vl15buf_cached << 32)
            self.write_csr(cr.SEND_CM_CREDIT_VL15, self.vl15buf_cached)

    def handle_linkup_change_up(self) -> None:
        if not self.silicon:  # VerifyCap did this on silicon
            credit = self.read_csr(cr.SEND_CM_GLOBAL_CREDIT)  # set_up_vau
            self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, (credit & ~cr.SEND_CM_GLOBAL_CREDIT_AU_SMASK) | 3 << 16)
            credit = self.read_csr(cr.SEND_CM_GLOBAL_CREDIT)  # set_up_vl15
            credit &= ~(cr.SEND_CM_GLOBAL_CREDIT_TOTAL_CREDIT_LIMIT_SMASK
                        | cr.SEND_CM_GLOBAL_CREDIT_SHARED_LIMIT_SMASK)
            self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, credit | 272 << 32)
            self.write_csr(cr.SEND_CM_CREDIT_VL15, 272)
            self.write_csr(cr.SEND_CM_REMOTE_AU_TABLE0_TO3, 0x0000000400020001 << 0)
            self.write_csr(cr.SEND_CM_REMOTE_AU_TABLE4_TO7, 0)
        self.neighbor = {
            "guid": self.read_csr(cr.DC_DC8051_STS_REMOTE_GUID),
            "type": self.read_csr(cr.DC_DC8051_STS_REMOTE_NODE_TYPE) & 0x3,
            "port": self.read_csr(cr.DC_DC8051_STS_REMOTE_PORT_NO) & 0xFF,
            "fm_security": self.read_csr(cr.DC_DC8051_STS_REMOTE_FM_SECURITY) & 0x1,
        }
        if self.neighbor["type"] != 0:  # set_mgmt_allowed for a switch
            self.mgmt_allowed = (self.read_8051_config(0x0D, 4) >> 23) & 1
        widths = self.read_8051_config(0x09, 4)  # get_linkup_widths
        self.link_width = {"tx": widths >> 12 & 0xF, "rx": widths >> 8 & 0xF}
        self.read_8051_config(0x06, 4)  # get_link_widths: TX_SETTINGS
        self.read_8051_config(0x0C, 4)  # LOCAL_LNI_INFO

    # -- Armed, Active: mad.c set_port_states and the SMA idle messages --------------------------
    def send_idle_sma(self, message: int) -> int:
        code, _ = self.do_8051_command(0x04, (message & 0xFFFFFFFFFF) << 8 | 0x3)  # IDLE_SMA
        if code != HCMD_SUCCESS:
            self.say(f"send idle message: data {(message << 8 | 3):#x}, err {code}")
        return code

    def set_port_armed(self) -> None:
        assert self.host_link_state == "INIT"
        port = self.read_csr(cr.DCC_CFG_PORT_CONFIG) & ~cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK
        self.write_csr(cr.DCC_CFG_PORT_CONFIG, port | 3 << cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT)
        self.poll(lambda: (self.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48) & 7 == 3, 1.0, "logical state not ARMED")
        self.host_link_state = "ARMED"
        if not self.silicon:
            self.neighbor_normal = True
        self.send_idle_sma(1)  # SMA_IDLE_ARM

    def set_port_active(self) -> bool:
        if not self.neighbor_normal:
            self.say("SubnSet(OPA_PortInfo) Cannot move to Active with NeighborNormal 0")
            return False
        port = self.read_csr(cr.DCC_CFG_PORT_CONFIG) & ~cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SMASK
        self.write_csr(cr.DCC_CFG_PORT_CONFIG, port | 4 << cr.DCC_CFG_PORT_CONFIG_LINK_STATE_SHIFT)
        self.poll(lambda: (self.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48) & 7 == 4, 1.0, "logical state not ACTIVE")
        self.host_link_state = "ACTIVE"
        self.send_idle_sma(2)  # SMA_IDLE_ACTIVE
        return True

    def handle_sma_message(self) -> None:
        code, message = self.do_8051_command(0x06, 0x3)  # read_idle_sma
        if code != HCMD_SUCCESS:
            self.say(f"read idle message: type 3, err {code}")
            return
        message >>= 8
        if message & 0xFF == 1:  # SMA_IDLE_ARM
            if self.host_link_state in ("INIT", "ARMED"):
                self.neighbor_normal = True
        elif message & 0xFF != 2:
            self.say(f"handle_sma_message: received unexpected SMA idle message {message:#x}")

    # -- the link_wq work items the 8051's messages queue ---------------------------------------
    def run_link_work(self) -> list[str]:
        """Run the work handle_8051_interrupt queued, in its order; what ran."""
        done = []
        while self.link_work:
            work = self.link_work.pop(0)
            done.append(work)
            getattr(self, work)()
        return done

    def handle_link_down(self) -> None:
        was_up = self.host_link_state in HLS_UP
        self.goto_offline()
        if was_up:
            reason = self.read_8051_config(0x16, 4) & 0xFF
            self.link_down_reason = reason
            if reason == 0xB:
                self.neighbor_down_reason = self.read_8051_config(0x14, 4) >> 16 & 0xFF
                self.say(f"Link down reason: Neighbor link down message {self.neighbor_down_reason}")
            elif reason == 0xA:
                self.say("Link down reason: Unexpected link down")
        self.neighbor_normal = False
        self.write_csr(cr.RCV_CTRL, self.read_csr(cr.RCV_CTRL) & ~cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK)
        self.start_link()

    def goto_offline(self) -> None:
        was_up = self.host_link_state in HLS_UP
        previous = self.host_link_state
        for name in ("DC_LCB_ERR_INFO_RX_REPLAY_CNT", "DC_LCB_ERR_INFO_SEQ_CRC_CNT",
                     "DC_LCB_ERR_INFO_REINIT_FROM_PEER_CNT"):  # update_lcb_cache
            if self.host_link_state in HLS_UP or self.host_link_state not in ("GOING_UP", "GOING_OFFLINE"):
                self.read_lcb_csr(CSR_OFFSETS[name])
        self.host_link_state = "GOING_OFFLINE"
        code, _ = self.do_8051_command(0x03, self.remote_link_down_reason << 8 | 0x90)
        assert code == HCMD_SUCCESS, "Failed to transition to Offline link state"
        self.poll(lambda: self.read_csr(cr.DC_DC8051_STS_CUR_STATE) & 0xF0 == 0x90, 10.0,
             "timeout waiting for phy link offline.quiet substates")
        self.write_csr(cr.DC_DC8051_CFG_CSR_ACCESS_SEL, 0x3)
        self.write_csr(cr.DC_LCB_ERR_EN, ALL_ONES)
        self.poll(lambda: (self.read_csr(cr.DCC_CFG_PORT_CONFIG) >> 48) & 7 == 1, 1.0, "logical state not Down")
        self.host_link_state = "LINK_COOLDOWN"
        assert self.wait_fm_ready(7.0), "After going offline, timed out waiting for the 8051 to become ready"
        self.host_link_state = "OFFLINE"
        self.remote_link_down_reason = 0
        if was_up:
            self.reset_link_credits()
            self.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_FREEZE_SMASK)  # start_freeze_handling
            self.sdma_freeze_notify()
            self.handle_freeze()
        elif previous in ("POLL", "VERIFY_CAP", "GOING_UP"):
            self.lni_states = (self.read_8051_config(0x12, 4), self.read_8051_config(0x13, 4))  # check_lni_states

    def reset_link_credits(self) -> None:
        for i in range(8):
            self.write_csr(cr.SEND_CM_CREDIT_VL + 8 * i, 0)
        self.write_csr(cr.SEND_CM_CREDIT_VL15, 0)
        self.write_csr(cr.SEND_CM_GLOBAL_CREDIT, 0)
        sendctrl = self.read_csr(cr.SEND_CTRL)  # pio_send_control(PSC_CM_RESET) -> __cm_reset
        self.write_csr(cr.SEND_CTRL, sendctrl | cr.SEND_CTRL_CM_RESET_SMASK)
        self.poll(lambda: not self.read_csr(cr.SEND_CTRL) & cr.SEND_CTRL_CM_RESET_SMASK, 1.0,
             "__cm_reset spins forever")

    def wait_for_freeze_status(self, freeze: bool) -> None:
        want = ALL_FROZE if freeze else 0
        self.poll(lambda: self.read_csr(cr.CCE_STATUS) & ALL_FROZE == want, 0.02,
             f"Time out waiting for SPC {'' if freeze else 'un'}freeze")

    def handle_freeze(self) -> None:
        self.wait_for_freeze_status(True)
        for ctxt in getattr(self, "enabled_send_contexts", []):  # pio_freeze -> sc_disable
            self.sc_disable(ctxt)
        self.sdma_freeze()
        self.write_csr(cr.RCV_CTRL, self.read_csr(cr.RCV_CTRL) & ~cr.RCV_CTRL_RCV_PORT_ENABLE_SMASK)
        self.write_csr(cr.CCE_CTRL, cr.CCE_CTRL_SPC_UNFREEZE_SMASK)
        self.wait_for_freeze_status(False)
        self.sdma_unfreeze()

    # -- send contexts (pio.c) -------------------------------------------------------------------
    def sc_alloc(self, hw: int, credits: int, base: int, credit_return: int, kind: str = SC_KERNEL) -> None:
        """sc_alloc + hfi1_init_ctxt; init_pervl_scs's CHECK_VL for VL15 and kernel contexts
        comes after their sc_enable (`set_check_vl`)."""
        self.sc_kind[hw] = kind
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CTRL, credits << 48 | base << 32)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_ENABLE, SC_CHECK_MASK[kind])  # set_pio_integrity
        self.write_kctxt_csr(hw, cr.SEND_CTXT_ERR_MASK, ALL_ONES)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_PARTITION_KEY, 0xFFFF)  # DEFAULT_PKEY
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_OPCODE, USER_OPCODE_CHECK if kind == SC_USER else 0)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_RETURN_ADDR, credit_return & 0xFFFFFFFFFFC0)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_CTRL, credits // 2)
        if kind == SC_USER:
            self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_VL, SC_CHECK_VL[kind])

    def set_check_vl(self, hw: int, kind: str) -> None:
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_VL, SC_CHECK_VL[kind])

    def sc_enable(self, hw: int) -> None:
        ctrl = self.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL)
        if ctrl & 1:
            return
        errors = self.read_kctxt_csr(hw, cr.SEND_CTXT_ERR_STATUS)
        if errors:
            self.write_kctxt_csr(hw, cr.SEND_CTXT_ERR_CLEAR, errors)
        self.write_csr(cr.SEND_PIO_INIT_CTXT, (hw & 0xFF) << 8 | cr.SEND_PIO_INIT_CTXT_PIO_SINGLE_CTXT_INIT_SMASK)
        reg = self.poll(lambda: (r := self.read_csr(cr.SEND_PIO_INIT_CTXT)) & 0x4 == 0 and (r | 1 << 63), 0.001,
                   "PIO send context init is stuck")
        assert not reg & 0x8, "PIO send context init had an error"
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CTRL, ctrl | 1)
        self.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL)

    def sc_disable(self, hw: int) -> None:
        ctrl = self.read_kctxt_csr(hw, cr.SEND_CTXT_CTRL)
        status = self.read_csr(cr.SEND_EGRESS_CTXT_STATUS + 8 * hw)  # sc_wait_for_packet_egress
        halted = self.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & 1
        assert status & 0x3FFF == 0 or halted, "packets never egress"
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CTRL, ctrl & ~1)

    def is_sendctxt_err_int(self, hw: int) -> int:
        """chip.c is_sendctxt_err_int: sc_stop(SCF_HALTED), the status read (not
        cleared: sc_enable does that), handle_send_egress_err_info for a
        disallowed packet; a kernel context's halt work restarts it, a user
        context waits for CTXT_RESET."""
        self.sc_halted.add(hw)
        status = self.read_kctxt_csr(hw, cr.SEND_CTXT_ERR_STATUS)
        if status & cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK:
            self.handle_send_egress_err_info()
        if self.sc_kind.get(hw) != SC_USER:
            self.sc_restart(hw)
        return status

    def handle_send_egress_err_info(self) -> None:
        """chip.c: SEND_EGRESS_ERR_SOURCE first, then INFO, cleared at once."""
        source = self.read_csr(cr.SEND_EGRESS_ERR_SOURCE)
        info = self.read_csr(cr.SEND_EGRESS_ERR_INFO)
        self.write_csr(cr.SEND_EGRESS_ERR_INFO, info)
        self.egress_err_info.append((source, info))

    def sc_restart(self, hw: int) -> None:
        """pio.c sc_restart: wait for the halt, sc_disable, sc_enable (which
        clears the errors and runs the PIO init engine)."""
        assert hw in self.sc_halted, "sc_restart bounces off a context that is not halted"
        self.poll(lambda: self.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK,
                  100e-6, f"sc_restart: context {hw} not halting, skipping")
        self.sc_disable(hw)
        self.sc_enable(hw)
        self.sc_halted.discard(hw)

    def ctxt_reset(self, hw: int) -> None:
        """file_ops.c ctxt_reset (HFI1_IOCTL_CTXT_RESET): only once the error
        interrupt marked the context halted (-ENOLCK otherwise), then
        sc_restart and a forced credit return."""
        if hw not in self.sc_halted:
            raise DriverTimeout(f"CTXT_RESET: send context {hw} never reported its halt (-ENOLCK)")
        self.sc_restart(hw)
        self.sc_return_credits(hw)

    def sc_return_credits(self, hw: int) -> None:
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_FORCE, 1)
        self.read_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_FORCE)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CREDIT_FORCE, 0)

    # -- user contexts (file_ops.c, intr.c) ----------------------------------------------------
    def hfi1_set_ctxt_jkey(self, hw: int, ctxt: int, jkey: int) -> None:
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_JOB_KEY, cr.SEND_CTXT_CHECK_JOB_KEY_MASK_SMASK | jkey)
        check = self.read_kctxt_csr(hw, cr.SEND_CTXT_CHECK_ENABLE)
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_ENABLE, check | cr.SEND_CTXT_CHECK_ENABLE_CHECK_JOB_KEY_SMASK)
        self.write_kctxt_csr(ctxt, cr.RCV_KEY_CTRL, cr.RCV_KEY_CTRL_JOB_KEY_ENABLE_SMASK | jkey)

    def hfi1_set_ctxt_pkey(self, hw: int, pkey: int) -> None:
        """HFI1_IOCTL_SET_PKEY (after the driver found `pkey` in the port's table)."""
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_PARTITION_KEY, pkey)
        check = self.read_kctxt_csr(hw, cr.SEND_CTXT_CHECK_ENABLE)
        check |= cr.SEND_CTXT_CHECK_ENABLE_CHECK_PARTITION_KEY_SMASK
        self.write_kctxt_csr(hw, cr.SEND_CTXT_CHECK_ENABLE, check & ~cr.SEND_CTXT_CHECK_ENABLE_DISALLOW_KDETH_PACKETS_SMASK)

    def set_rcv_intr(self, ctxt: int, which: int, enable: bool) -> None:
        """hfi1_rcvctrl's INTRAVAIL_ENB/DIS (the CCE mask and RCV_CTXT_CTRL.IntrAvail) or
        URGENT_ENB/DIS (the CCE mask only), `which` IS_RCVAVAIL_START or IS_RCVURGENT_START."""
        self.set_intr_bits(which + ctxt, which + ctxt, enable)
        if which == IS_RCVAVAIL_START:
            ctrl = self.read_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL)
            bit = cr.RCV_CTXT_CTRL_INTR_AVAIL_SMASK
            self.write_kctxt_csr(ctxt, cr.RCV_CTXT_CTRL, ctrl | bit if enable else ctrl & ~bit)

    def handle_user_interrupt(self, ctxt: int) -> None:
        """intr.c handle_user_interrupt: wake a process waiting in poll()."""
        waiting = self.user_waiting.pop(ctxt, None)
        if waiting == "rcv":
            self.set_rcv_intr(ctxt, IS_RCVAVAIL_START, False)
            self.user_interrupts.append((ctxt, "woke poll(ANYRCV), IntrAvail off"))
        elif waiting == "urgent":
            self.user_interrupts.append((ctxt, "woke poll(URGENT)"))
        else:
            self.user_interrupts.append((ctxt, "nobody waiting"))

    # -- SDMA (sdma.c) -------------------------------------------------------------------------
    def sdma_sendctrl(self, engine: int, enable=False, intenable=False, halt=False, cleanup=False) -> None:
        ctrl = (1 if enable else 0) | (8 if intenable else 0) | (2 if halt else 0)
        self.p_senddmactrl[engine] = ctrl
        self.write_kctxt_csr(engine, cr.SEND_DMA_CTRL, ctrl | (4 if cleanup else 0))

    def sdma_start(self) -> None:
        for e in range(self.num_sdma):
            self.sdma_state[e] = "s10_hw_start_up_halt_wait"
            self.sdma_sendctrl(e, halt=True)

    def sdma_engine_error(self, engine: int, status: int) -> None:
        if status & cr.SEND_DMA_ENG_ERR_STATUS_SDMA_HALT_ERR_SMASK and \
                self.sdma_state[engine] == "s10_hw_start_up_halt_wait":
            self.sdma_err_halt_wait(engine)

    def sdma_err_halt_wait(self, engine: int) -> None:
        self.poll(lambda: self.read_kctxt_csr(engine, cr.SEND_DMA_STATUS) & cr.SEND_DMA_STATUS_ENG_HALTED_SMASK, 0.01,
             f"SDMA engine {engine} - timeout waiting for engine to halt")
        self.sdma_state[engine] = "s15_hw_start_up_clean_wait"
        self.sdma_sendctrl(engine, intenable=True, cleanup=True)
        self.poll(lambda: self.read_kctxt_csr(engine, cr.SEND_DMA_STATUS) & cr.SEND_DMA_STATUS_ENG_CLEANED_UP_SMASK,
             1.0, f"sdma_hw_clean_up_task: engine {engine} never cleaned up (tasklet spins forever)")
        self.sdma_hw_start_up(engine)
        self.sdma_state[engine] = "s20_idle"
        self.sdma_sendctrl(engine, intenable=True)

    def sdma_hw_start_up(self, engine: int) -> None:
        self.write_kctxt_csr(engine, cr.SEND_DMA_LEN_GEN, (2048 // 64) << 6)
        self.write_kctxt_csr(engine, cr.SEND_DMA_LEN_GEN, (2048 // 64) << 6 | 4 << 16)
        self.write_kctxt_csr(engine, cr.SEND_DMA_TAIL, 0)
        self.write_kctxt_csr(engine, cr.SEND_DMA_ENG_ERR_CLEAR, 1 << 0)

    def sdma_freeze_notify(self) -> None:
        """e85_link_down: only engines that got out of s10 can acknowledge."""
        self.unfreeze_count = 0
        for e, state in self.sdma_state.items():
            if state in ("s20_idle", "s99_running"):
                self.sdma_state[e] = "s80_hw_freeze"
            else:
                self.unfreeze_count += 1

    def sdma_freeze(self) -> None:
        assert self.unfreeze_count == 0, \
            f"sdma_freeze waits forever: {self.unfreeze_count} engines never left s10"
        for e in self.sdma_state:
            self.read_kctxt_csr(e, cr.SEND_DMA_HEAD)  # sw clean up: sdma_make_progress
            self.sdma_state[e] = "s82_freeze_sw_clean"

    def sdma_unfreeze(self) -> None:
        for e in self.sdma_state:
            self.sdma_hw_start_up(e)
            self.sdma_state[e] = "s20_idle"
            self.sdma_sendctrl(e, intenable=True)

    def sdma_exit(self) -> None:
        for e in self.sdma_state:
            self.sdma_state[e] = "s00_hw_down"
            self.sdma_sendctrl(e)
