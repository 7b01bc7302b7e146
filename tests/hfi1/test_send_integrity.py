"""Send-side integrity checks (devmodel/hfi1/integrity.py): what a user
process can and cannot put on the wire from its send context, the halt and
the driver's CTXT_RESET recovery, the kernel's own contexts (the SMA's VL15
context, verbs) under the checks the driver sets, user SDMA, and a user
context's urgent and receive-available interrupts.

Two models back to back (testkit/hfi1/datapath.py), each with one user
context opened as the driver's ASSIGN_CTXT does: receive context 3, send
context 40, J_Key 0x1234. Packets are what PSM2 sends: KDETH eager packets
to the peer's receive context 3."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.formats import PBC, RcvType
from devmodel.hfi1.integrity import CHECKS, IntegrityChecker
from devmodel.hfi1.pio import SendContextState
from devmodel.regs import RegisterFile
from devmodel.wire import opa
from testkit.hfi1.datapath import pair, pbc_for, settle, ud_packet
from testkit.hfi1.guest import IS_RCVAVAIL_START, IS_RCVURGENT_START, DriverTimeout

USER_CTXT = 3  # receive context (0..2 are the kernel's)
USER_SC = 40  # its send context (the kernel's are 140..159)
CREDITS = 64
JKEY = 0x1234
CHECK_ENABLE = cr.SEND_CTXT_CHECK_ENABLE_CHECK_ENABLE_SMASK
PKEY = 0x8001  # the port's default partition, full member (what PSM2 asks SET_PKEY for)
KDETH_QP = opa.KDETH_QP_PREFIX << 16
GENERAL_VECTOR = 0
SEND_CTXT_ERR_SOURCE = 32
EGRESS_ERR_SOURCE = 6
INFO = {name: getattr(cr, f"SEND_EGRESS_ERR_INFO_{name}_ERR_SMASK") for name in (
    "VL", "JOB_KEY", "PARTITION_KEY", "SLID", "OPCODE", "VL_MAPPING", "RAW", "GRH", "BYPASS", "KDETH_PACKETS",
    "NON_KDETH_PACKETS", "TOO_SMALL_IB_PACKETS", "PBC_TEST", "BAD_PKT_LEN")}


@pytest.fixture
def fabric():
    with pair() as (scheduler, a, b):
        for node in (a, b):
            node.driver.assign_ctxt(USER_CTXT, USER_SC, CREDITS, base=152, jkey=JKEY)
        yield scheduler, a, b


def psm2_packet(src, dst, payload: bytes = bytes(32), *, sc: int = 0, slid: int | None = None, pkey: int = PKEY,
                opcode: int = 0xC0, dest_qp: int | None = None, jkey: int = JKEY, intr: int = 0,
                grh: bool = False) -> bytes:
    """A PSM2 eager packet as its PIO copy writes it (no ICRC): LRH, BTH with
    the KDETH QP prefix and the peer's context, KDETH, PSM2's 28-byte header
    rest, payload."""
    kdeth = opa.KDETH0.build(kver=1, sh=0, intr=intr, tid_ctrl=0, tid=0, om=0, offset=0) \
        + opa.KDETH1.build(hcrc=0, jkey=jkey)
    body = opa.BTH.build(opcode=opcode, pkey=pkey, dest_qp=KDETH_QP | USER_CTXT if dest_qp is None else dest_qp,
                         psn=1) + kdeth + bytes(28) + payload
    if grh:
        body = bytes([0x60]) + bytes(5) + bytes([opa.GRH_NEXT_HEADER_BTH, 1]) + bytes(32) + body
    lnh = opa.LNH_GRH if grh else opa.LNH_BTH
    return opa.LRH.build(sc=sc, lnh=lnh, dlid=dst.lid, slid=src.lid if slid is None else slid,
                         pkt_len=(opa.LRH_BYTES + len(body)) // 4 + 1) + body


def set_pkey(node, pkey: int = PKEY) -> None:
    node.driver.hfi1_set_ctxt_pkey(USER_SC, pkey)


def general_interrupts(node) -> None:
    """The guest's handler of MSI-X vector 0, once per message (send context
    and egress errors, user contexts' RcvAvail and RcvUrgent)."""
    driver = node.driver
    while driver.general_irqs_seen < node.irq.count(GENERAL_VECTOR):
        driver.general_irqs_seen += 1
        driver.general_interrupt()


def send(src, dst, packet: bytes, pbc: int | None = None, hw: int = USER_SC) -> None:
    src.driver.pio_copy(hw, pbc_for(packet) if pbc is None else pbc, packet)
    settle(src, dst)
    general_interrupts(src)


def received(node, ctxt: int = USER_CTXT) -> int:
    return node.stats()["rcv"]["contexts"].get(ctxt, {}).get("delivered", 0)


def halted(node, hw: int = USER_SC) -> bool:
    return bool(node.driver.read_kctxt_csr(hw, cr.SEND_CTXT_STATUS) & cr.SEND_CTXT_STATUS_CTXT_HALTED_SMASK)


def assert_refused(node, info: int, hw: int = USER_SC) -> None:
    """Halted with DisallowedPacket, and the driver's error interrupt saw the
    context and the failed checks where is_sendctxt_err_int reads them."""
    assert halted(node, hw)
    assert node.driver.read_kctxt_csr(hw, cr.SEND_CTXT_ERR_STATUS) == \
        cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK
    assert (SEND_CTXT_ERR_SOURCE + hw, cr.SEND_CTXT_ERR_STATUS_PIO_DISALLOWED_PACKET_ERR_SMASK) in node.driver.events
    assert node.driver.egress_err_info[-1] == (hw, info), \
        f"(SEND_EGRESS_ERR_SOURCE, _INFO) {node.driver.egress_err_info[-1]}, expected {(hw, info)}"


# -- user send contexts ---------------------------------------------------------------------

def test_nothing_leaves_a_user_context_before_set_pkey_and_psm2s_packets_do_after_it(fabric):
    """sc_alloc(SC_USER) disallows KDETH and non-KDETH packets alike; the
    SET_PKEY ioctl turns the P_Key check on and KDETH packets with it."""
    _, a, b = fabric
    send(a, b, psm2_packet(a, b))
    assert_refused(a, INFO["KDETH_PACKETS"])
    assert received(b) == 0 and b.stats()["rcv"]["received"] == 0, "nothing reached the wire"
    returned = a.driver.credit_return(USER_SC)
    assert returned["status"] and returned["due_to_error"], "the halt's credit return says so"
    a.driver.ctxt_reset(USER_SC)
    set_pkey(a)
    payload = bytes(range(64))
    send(a, b, psm2_packet(a, b, payload))
    assert not halted(a)
    rhf, _ = b.driver.hdrq_entry(USER_CTXT, 0)
    assert rhf["rcv_type"] == RcvType.EAGER and rhf["rcv_seq"] == 1 and not rhf["tid_err"]
    assert b.driver.eager_bytes(USER_CTXT, rhf, len(payload)) == payload
    assert a.driver.credit_return(USER_SC)["status"] == 0


def limited_member(node) -> None:
    set_pkey(node, PKEY & 0x7FFF)


def wrong_pkt_len(a, b) -> bytes:
    packet = psm2_packet(a, b)
    lrh = opa.LRH.parse(packet)
    return opa.LRH.build(**{**lrh, "pkt_len": lrh["pkt_len"] + 1}) + packet[opa.LRH_BYTES:]


FORGERIES = {
    # what the user's packet is, how it is built, what SEND_EGRESS_ERR_INFO says
    "an SMP on VL15, as the SMA would send it": (
        lambda a, b: ud_packet(opa.PERMISSIVE_LID, opa.PERMISSIVE_LID, 0, bytes(64), sc=15, pkey=0xFFFF),
        dict(vl=15), None, ("VL", "PARTITION_KEY", "OPCODE", "NON_KDETH_PACKETS")),
    "SC 15 on a data VL": (lambda a, b: psm2_packet(a, b, sc=15), {}, None, ("VL_MAPPING",)),
    "VL 15 for its SC": (lambda a, b: psm2_packet(a, b), dict(vl=15), None, ("VL", "VL_MAPPING")),
    "another partition's P_Key": (lambda a, b: psm2_packet(a, b, pkey=0x8002), {}, None, ("PARTITION_KEY",)),
    "full membership on a limited member's context": (
        lambda a, b: psm2_packet(a, b), {}, limited_member, ("PARTITION_KEY",)),
    "another node's SLID": (lambda a, b: psm2_packet(a, b, slid=b.lid), {}, None, ("SLID",)),
    "the permissive SLID off VL15": (lambda a, b: psm2_packet(a, b, slid=opa.PERMISSIVE_LID), {}, None, ("SLID",)),
    "another job's J_Key": (lambda a, b: psm2_packet(a, b, jkey=0x4321), {}, None, ("JOB_KEY",)),
    "a verbs opcode": (lambda a, b: psm2_packet(a, b, opcode=opa.Opcode.UD | opa.Opcode.SEND_ONLY), {}, None,
                       ("OPCODE",)),
    "a verbs QP": (lambda a, b: psm2_packet(a, b, dest_qp=0x12), {}, None, ("NON_KDETH_PACKETS",)),
    "a GRH": (lambda a, b: psm2_packet(a, b, grh=True), {}, None, ("GRH",)),
    "a raw packet": (lambda a, b: opa.LRH.build(sc=0, lnh=0, dlid=b.lid, slid=a.lid, pkt_len=9) + bytes(24), {},
                     None, ("RAW", "NON_KDETH_PACKETS")),
    "a PBC test bit": (lambda a, b: psm2_packet(a, b), dict(test_bad_icrc=1), None, ("PBC_TEST",)),
    "a PktLen the PBC disagrees with": (wrong_pkt_len, {}, None, ("BAD_PKT_LEN",)),
    "a packet too small for its GRH and BTH": (
        lambda a, b: opa.LRH.build(sc=0, lnh=opa.LNH_GRH, dlid=b.lid, slid=a.lid, pkt_len=6) + bytes(12), {}, None,
        ("TOO_SMALL_IB_PACKETS", "GRH", "NON_KDETH_PACKETS")),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_packet_its_checks_refuse_halts_the_user_context_and_reaches_nobody(fabric, forgery):
    _, a, b = fabric
    build, pbc_fields, setup, failed = FORGERIES[forgery]
    (setup or set_pkey)(a)
    packet = build(a, b)
    pbc = PBC.encode(insert_hcrc=2, length_dws=(len(packet) + 8) // 4, **pbc_fields)
    behind = psm2_packet(a, b)  # a good packet right behind it in the ring
    a.driver.pio_copy(USER_SC, pbc, packet)
    a.driver.pio_copy(USER_SC, pbc_for(behind), behind)
    settle(a, b)
    general_interrupts(a)
    info = 0
    for name in failed:
        info |= INFO[name]
    assert_refused(a, info)
    assert b.stats()["rcv"]["received"] == 0, f"{forgery}: something reached the wire"
    assert a.stats()["send"]["sent"] == 0
    assert a.stats()["pio"]["contexts"][USER_SC] == {"packets": 0, "dropped_writes": 0, "halted": True,
                                                     "halts": 1, "refused": 1}
    assert a.driver.credit_return(USER_SC)["status"]


def test_ctxt_reset_brings_a_halted_user_context_back_and_nothing_less_does(fabric):
    _, a, b = fabric
    set_pkey(a)
    context = a.device.pio.contexts[USER_SC]
    a.driver.pio_copy(USER_SC, pbc_for(psm2_packet(a, b, slid=b.lid)), psm2_packet(a, b, slid=b.lid))
    settle(a, b)
    with pytest.raises(DriverTimeout, match="-ENOLCK"):
        a.driver.ctxt_reset(USER_SC)  # before the error interrupt marked it halted
    general_interrupts(a)
    assert_refused(a, INFO["SLID"])
    assert context.state is SendContextState.HALTED
    send(a, b, psm2_packet(a, b))
    assert context.dropped_writes == 16 and received(b) == 0, "stores to a halted context are dropped"
    # disabling and enabling again without the PIO init engine leaves it halted
    ctrl = a.driver.read_kctxt_csr(USER_SC, cr.SEND_CTXT_CTRL)
    a.driver.write_kctxt_csr(USER_SC, cr.SEND_CTXT_CTRL, ctrl & ~cr.SEND_CTXT_CTRL_CTXT_ENABLE_SMASK)
    assert context.state is SendContextState.HALTED_DISABLED and halted(a)
    a.driver.write_kctxt_csr(USER_SC, cr.SEND_CTXT_CTRL, ctrl)
    assert context.state is SendContextState.HALTED and halted(a)
    a.driver.ctxt_reset(USER_SC)
    assert context.state is SendContextState.RUNNING and not halted(a)
    assert a.driver.read_kctxt_csr(USER_SC, cr.SEND_CTXT_ERR_STATUS) == 0
    settle(a, b)
    assert a.driver.credit_return(USER_SC) == \
        {"counter": 0, "status": 0, "due_to_error": 0, "due_to_threshold": 0, "due_to_pbc": 0, "due_to_force": 1}
    for n in range(3):
        send(a, b, psm2_packet(a, b, bytes([n]) * 32))
    assert received(b) == 3 and not halted(a)
    assert [b.driver.eager_bytes(USER_CTXT, b.driver.hdrq_entry(USER_CTXT, i)[0], 1) for i in range(3)] == \
        [b"\x00", b"\x01", b"\x02"]


def test_a_limited_members_packet_passes_a_full_members_check(fabric):
    """egress_pkey_check's rule: a limited-member P_Key (bit 15 clear) matches
    either membership of the same partition."""
    _, a, b = fabric
    set_pkey(a)
    send(a, b, psm2_packet(a, b, pkey=PKEY & 0x7FFF))
    assert received(b) == 1 and not halted(a)
    send(a, b, psm2_packet(a, b, pkey=0x8002))
    assert_refused(a, INFO["PARTITION_KEY"])


# -- the kernel's contexts ------------------------------------------------------------------

def test_the_sma_sends_on_its_vl15_context_and_verbs_on_its_data_context(fabric):
    """The checks init_pervl_scs leaves the kernel: SMPs only from the VL15
    context (from the permissive SLID too), data only on data VLs; a kernel
    context that sends what it may not halts and the driver's halt work
    restarts it by itself."""
    _, a, b = fabric
    smp = ud_packet(opa.PERMISSIVE_LID, opa.PERMISSIVE_LID, 0, bytes(64), sc=15, pkey=0xFFFF)
    send(a, b, smp, pbc_for(smp, vl=15), hw=a.vl15_context)
    verbs = ud_packet(b.lid, a.lid, 0x12, bytes(64))  # QP map: context 2
    send(a, b, verbs, hw=a.kernel_contexts[0])
    assert received(b, 0) == 1 and received(b, 2) == 1
    # an SMP from a data context: refused, and the driver restarts the context
    send(a, b, smp, pbc_for(smp, vl=15), hw=a.kernel_contexts[0])
    assert (a.kernel_contexts[0], INFO["VL"]) in a.driver.egress_err_info
    assert not halted(a, a.kernel_contexts[0]), "sc_halted -> sc_restart"
    assert received(b, 0) == 1
    # data from the VL15 context: refused too (its CHECK_VL allows VL15 only), and so is KDETH
    send(a, b, verbs, hw=a.vl15_context)
    assert (a.vl15_context, INFO["VL"]) in a.driver.egress_err_info
    kdeth = psm2_packet(a, b, sc=15, pkey=0xFFFF)
    send(a, b, kdeth, pbc_for(kdeth, vl=15), hw=a.vl15_context)
    assert (a.vl15_context, INFO["KDETH_PACKETS"]) in a.driver.egress_err_info
    assert received(b, 0) == 1 and received(b, 2) == 1
    send(a, b, smp, pbc_for(smp, vl=15), hw=a.vl15_context)
    send(a, b, verbs, hw=a.kernel_contexts[0])
    assert received(b, 0) == 2 and received(b, 2) == 2, "both back after their restarts"


def test_a_kernel_packet_too_short_for_its_headers_is_refused_by_its_context(fabric):
    _, a, b = fabric
    hw = a.kernel_contexts[0]
    short = opa.LRH.build(sc=0, lnh=opa.LNH_GRH, dlid=b.lid, slid=a.lid, pkt_len=(20 - 8) // 4 + 1) + bytes(12)
    send(a, b, short, hw=hw)
    assert (hw, INFO["TOO_SMALL_IB_PACKETS"] | INFO["BAD_PKT_LEN"]) in a.driver.egress_err_info
    assert a.stats()["send"]["sent"] == 0 and a.stats()["internal_errors"] == []


# -- user SDMA ----------------------------------------------------------------------------------

def test_an_sdma_packet_with_a_forged_slid_is_dropped_and_the_engine_goes_on(fabric):
    """The engines the kernel shares with user SDMA check SLIDs (sdma_update_lmc):
    a refused packet is dropped with TxSdma<e>DisallowedPacketErr and the
    engine moves on to the next."""
    _, a, b = fabric
    engine = 1
    forged = psm2_packet(a, b, bytes(64), slid=b.lid)
    a.driver.sdma_send(engine, pbc_for(forged), forged)
    settle(a, b)
    general_interrupts(a)
    status = cr.SEND_EGRESS_ERR_STATUS_TX_SDMA0_DISALLOWED_PACKET_ERR_SMASK << engine
    assert (EGRESS_ERR_SOURCE, status) in a.driver.events
    assert a.driver.egress_err_info == [(engine, INFO["SLID"])], "(SEND_EGRESS_ERR_SOURCE, _INFO)"
    assert a.driver.sdma_head(engine) == a.driver.sdma_tail[engine], "the head moved past it"
    assert received(b) == 0
    good = psm2_packet(a, b, bytes(range(64)))
    a.driver.sdma_send(engine, pbc_for(good), good)
    settle(a, b)
    assert received(b) == 1 and a.stats()["sdma"][engine]["refused"] == 1


# -- a user context's interrupts -------------------------------------------------------------

def test_a_process_in_poll_wakes_on_an_urgent_packet_only_while_urgent_is_enabled(fabric):
    """user_init enables the context's RcvUrgent (HFI1_RCVCTRL_URGENT_ENB):
    a packet with KDETH.Intr raises it and handle_user_interrupt wakes the
    process in poll(URGENT); poll(ANYRCV) turns RcvAvail on over an empty
    queue and the next packet wakes it. URGENT_DIS masks it again."""
    _, a, b = fabric
    set_pkey(a)
    general = b.irq.count(GENERAL_VECTOR)
    b.driver.poll_urgent(USER_CTXT)
    send(a, b, psm2_packet(a, b))  # not urgent
    general_interrupts(b)
    assert b.irq.count(GENERAL_VECTOR) == general and b.driver.user_interrupts == []
    send(a, b, psm2_packet(a, b, intr=1))
    general_interrupts(b)
    assert (IS_RCVURGENT_START + USER_CTXT, 0) in b.driver.events
    assert b.driver.user_interrupts == [(USER_CTXT, "woke poll(URGENT)")]
    assert b.stats()["rcv"]["contexts"][USER_CTXT]["urgent"] == 1
    b.driver.consume(USER_CTXT, 2)
    # poll(ANYRCV): nothing waits, so RcvAvail goes on; the next packet wakes the process
    assert not b.driver.poll_next(USER_CTXT)
    send(a, b, psm2_packet(a, b))
    general_interrupts(b)
    assert b.driver.user_interrupts[-1] == (USER_CTXT, "woke poll(ANYRCV), IntrAvail off")
    assert (IS_RCVAVAIL_START + USER_CTXT, 0) in b.driver.events
    # URGENT_DIS: an urgent packet lands, nobody is interrupted
    b.driver.set_rcv_intr(USER_CTXT, IS_RCVURGENT_START, False)
    b.driver.poll_urgent(USER_CTXT)
    general = b.irq.count(GENERAL_VECTOR)
    send(a, b, psm2_packet(a, b, intr=1))
    general_interrupts(b)
    assert b.irq.count(GENERAL_VECTOR) == general and received(b) == 4
    assert b.driver.user_interrupts[-1] == (USER_CTXT, "woke poll(ANYRCV), IntrAvail off")


# -- the checks' fast path ------------------------------------------------------------------------

@pytest.mark.parametrize("enable", [
    0, CHECK_ENABLE, CHECK_ENABLE | cr.SEND_CTXT_CHECK_ENABLE_CHECK_JOB_KEY_SMASK,
    *(CHECK_ENABLE | 1 << bit for bit in range(1, 22)), (1 << 22) - 1,
])
def test_the_checks_an_enable_value_turns_on_are_the_declared_ones(enable):
    """IntegrityChecker keeps, per CHECK_ENABLE value, the checks it turns
    on; they are CHECKS filtered by the value, in CHECKS' order, on the
    first packet and on every one after it."""
    checker = IntegrityChecker(RegisterFile("t"), "SEND_CTXT_CHECK", lambda _vl: 0)
    declared = tuple(check for check in CHECKS if enable & check.enable)
    assert checker.enabled(enable) == declared
    assert checker.enabled(enable) == declared, "from the cache"


def test_a_guest_cycling_through_enable_values_keeps_the_cache_bounded():
    checker = IntegrityChecker(RegisterFile("t"), "SEND_CTXT_CHECK", lambda _vl: 0)
    for value in range(1000):
        checker.enabled(CHECK_ENABLE | value << 1)
    assert len(checker._enabled) <= 64
