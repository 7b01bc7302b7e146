"""Kernel TID RDMA between two guests: Debian's unmodified hfi1 loaded with
`cap_mask` turning on TID_RDMA and OPFN (issue 13, item 5). Each RC QP
negotiates TID RDMA with its peer through OPFN (an IB_WR_OPFN
compare-and-swap on the QP's first exchange); from then on the driver turns
RDMA READ and WRITE requests of at least 256 KiB (page-aligned, page
multiples) into TID RDMA READ/WRITE: the receiving side programs expected
entries of its kernel receive context's RcvArray and a TidFlow entry, and
the data arrives as KDETH packets (opcodes 0xe0-0xe7) that the chip places
straight into the pages -- headers suppressed but for each segment's last
packet -- the same expected-receive hardware PSM2 uses from user contexts.

Checked three ways: perftest's ib_write_bw and ib_read_bw (RC) pass; the
driver's per-opcode receive counters (debugfs opcode_stats) count TID RDMA
opcodes; the chip's per-context counters count one expected placement per
KDETH data packet and one suppressed header per packet but the last of a
segment. NVMe over RDMA then moves 64 MiB both ways over TID RDMA with
sha256 checks (perftest checks no data). Recipe: docs/hfi1.md, "Kernel TID
RDMA".
"""
from __future__ import annotations

import re

import pytest

from images.lab import ulp
from images.lab.fabric import parse_perftest
from testkit.guest_checks import hfi1_dmesg_problems

pytestmark = pytest.mark.guest

#: common.h HFI1_CAP_* (uapi hfi1_user.h bit numbers)
CAP_SDMA, CAP_EXTENDED_PSN, CAP_HDRSUPP, CAP_TID_RDMA = 1 << 1, 1 << 3, 1 << 4, 1 << 5
CAP_MULTI_PKT_EGR, CAP_NODROP_RHQ_FULL, CAP_NODROP_EGR_FULL = 1 << 7, 1 << 8, 1 << 9
CAP_PRINT_UNIMPL, CAP_PKEY_CHECK, CAP_STATIC_RATE_CTRL = 1 << 11, 1 << 14, 1 << 15
CAP_OPFN, CAP_EARLY_CREDIT_RETURN, CAP_AIP = 1 << 16, 1 << 18, 1 << 19
CAP_USER_SHIFT = 24
#: HFI1_CAP_MASK_DEFAULT: the module parameter replaces the whole mask, so it
#: is the default's kernel and user bits plus TID_RDMA and OPFN
CAP_MASK_DEFAULT = (CAP_HDRSUPP | CAP_NODROP_RHQ_FULL | CAP_NODROP_EGR_FULL | CAP_SDMA | CAP_PRINT_UNIMPL
                    | CAP_STATIC_RATE_CTRL | CAP_PKEY_CHECK | CAP_MULTI_PKT_EGR | CAP_EXTENDED_PSN | CAP_AIP
                    | (CAP_HDRSUPP | CAP_MULTI_PKT_EGR | CAP_STATIC_RATE_CTRL | CAP_PKEY_CHECK
                       | CAP_EARLY_CREDIT_RETURN) << CAP_USER_SHIFT)
CAP_MASK = CAP_MASK_DEFAULT | CAP_TID_RDMA | CAP_OPFN

#: TID RDMA opcodes (ib_hdrs.h IB_OPCODE_TID_RDMA_*)
WRITE_REQ, WRITE_RESP, WRITE_DATA, WRITE_DATA_LAST, READ_REQ, READ_RESP, RESYNC, ACK = range(0xE0, 0xE8)
#: packets of a 256 KiB segment (TID_RDMA_MAX_SEGMENT_SIZE) at the QPs' 4096-byte MTU
SEGMENT_PACKETS = (256 << 10) // 4096
CLIENT, SERVER = 0, 1  # guest indexes as Fabric.run_pair uses them
#: perftest's QP timeout exponent (4.096 us << 20: 4.3 s; its default 14 is 67 ms). The TID RDMA
#: retry timer runs on the QP timeout too, and a TCG guest on a loaded host stalls longer than
#: 67 ms: a spurious TID retry (RESYNC) is then more than these tests are about
QP_TIMEOUT = 20
#: the chip's per-context counters that would mean it mishandled a TID packet
CHIP_FAULTS = ("tid_error", "dma_error", "job_key", "too_large", "held_overflow")


@pytest.fixture(scope="module")
def fabric(module_lab, report_figure):
    fabric = module_lab.active_fabric("tid rdma", report_figure, kernel_args=[f"hfi1.cap_mask={CAP_MASK:#x}"])
    for guest in fabric.guests:
        guest.run("mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug", check=True)
    return fabric


def received_opcodes(guest) -> dict[int, int]:
    """Packets received per BTH opcode since hfi1 loaded: the driver's
    debugfs opcode_stats ("e3 188/781328": opcode, packets/bytes)."""
    out = guest.run("cat /sys/kernel/debug/hfi1/hfi1_*/opcode_stats", check=True).stdout
    return {int(op, 16): int(packets) for op, packets in re.findall(r"^([0-9a-f]{2}) (\d+)/\d+$", out, re.M)}


def chip_counters(fabric, index: int) -> dict[str, int]:
    """The receive counters of guest `index`'s HFI, summed over its contexts."""
    stats = fabric.server.stats()[str(fabric.server.sockets[index])]
    totals: dict[str, int] = {}
    for context in stats["rcv"]["contexts"].values():
        for name, value in context.items():
            totals[name] = totals.get(name, 0) + value
    return totals


def delta(after: dict, before: dict) -> dict:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after.keys() | before.keys()}


class Traffic:
    """What the driver and the chip counted while a tool ran."""

    def __init__(self, fabric):
        self.fabric = fabric
        self.before = self.snapshot()

    def snapshot(self) -> list[tuple[dict, dict]]:
        return [(received_opcodes(g), chip_counters(self.fabric, i)) for i, g in enumerate(self.fabric.guests)]

    def done(self) -> None:
        after = self.snapshot()
        self.opcodes = [delta(a[0], b[0]) for a, b in zip(after, self.before)]
        self.chip = [delta(a[1], b[1]) for a, b in zip(after, self.before)]


def run_perftest(fabric, command: str) -> tuple[dict, Traffic]:
    traffic = Traffic(fabric)
    run = fabric.run_pair(command, timeout=600)
    traffic.done()
    assert run.ok, run.explain()
    rows = parse_perftest(run.client.stdout)
    assert len(rows) == 1 and rows[0]["bw_avg_mib_s"] > 0, run.explain()
    return rows[0], traffic


def test_the_module_parameter_turns_on_tid_rdma_and_opfn_in_both_guests(fabric):
    for guest in fabric.guests:
        value = int(guest.run("cat /sys/module/hfi1/parameters/cap_mask", check=True).stdout, 16)
        assert value & (CAP_TID_RDMA | CAP_OPFN) == CAP_TID_RDMA | CAP_OPFN, hex(value)


def test_ib_write_bw_moves_its_writes_as_tid_rdma_writes_placed_by_the_chip(fabric, report_figure):
    """200 RC RDMA WRITEs of 256 KiB, 8 outstanding (the first few go before
    OPFN has negotiated, as plain RDMA WRITEs). Each TID RDMA WRITE is one
    segment: a WRITE REQ and a WRITE RESP, 64 KDETH data packets into the
    server's expected pages of which only the last (WRITE DATA LAST)
    reaches its header queue."""
    row, traffic = run_perftest(fabric, f"ib_write_bw -F -s 262144 -n 200 -t 8 -u {QP_TIMEOUT}")
    server, client = traffic.opcodes[SERVER], traffic.opcodes[CLIENT]
    segments = server.get(WRITE_DATA_LAST, 0)
    assert segments >= 150, f"most of the 200 writes went as TID RDMA: {server}"
    assert server.get(WRITE_REQ, 0) == segments and client.get(WRITE_RESP, 0) >= segments, (server, client)
    chip = traffic.chip[SERVER]
    assert chip["expected"] >= SEGMENT_PACKETS * segments, chip
    assert chip["headers_suppressed"] >= (SEGMENT_PACKETS - 1) * segments, chip
    assert all(traffic.chip[side].get(fault, 0) == 0 for side in (CLIENT, SERVER) for fault in CHIP_FAULTS), \
        traffic.chip
    report_figure(f"tid rdma: ib_write_bw 256 KiB x 200: {row['bw_avg_mib_s']:.1f} MiB/s, {segments} TID RDMA "
                  f"WRITE segments, {chip['expected']} expected placements, {chip['headers_suppressed']} "
                  f"headers suppressed at the server")


def test_ib_read_bw_moves_its_reads_as_tid_rdma_reads_placed_by_the_chip(fabric, report_figure):
    """The reader's side receives: READ REQs go to the server, 64 KDETH
    READ RESP packets per segment come back into the client's expected
    pages, the last one's header to its queue."""
    row, traffic = run_perftest(fabric, f"ib_read_bw -F -s 262144 -n 200 -t 8 -u {QP_TIMEOUT}")
    server, client = traffic.opcodes[SERVER], traffic.opcodes[CLIENT]
    segments = client.get(READ_RESP, 0)
    assert segments >= 150, f"most of the 200 reads went as TID RDMA: {client}"
    assert server.get(READ_REQ, 0) == segments, (server, client)
    chip = traffic.chip[CLIENT]
    assert chip["expected"] >= SEGMENT_PACKETS * segments, chip
    assert chip["headers_suppressed"] >= (SEGMENT_PACKETS - 1) * segments, chip
    assert all(traffic.chip[side].get(fault, 0) == 0 for side in (CLIENT, SERVER) for fault in CHIP_FAULTS), \
        traffic.chip
    report_figure(f"tid rdma: ib_read_bw 256 KiB x 200: {row['bw_avg_mib_s']:.1f} MiB/s, {segments} TID RDMA "
                  f"READ segments, {chip['expected']} expected placements at the client")


def test_nvme_over_rdma_moves_64_mib_both_ways_intact_through_tid_rdma(fabric, report_figure):
    """nvme-rdma's 1 MiB I/Os: the target reads a write's data from the host
    (TID RDMA READ) and writes a read's data to it (TID RDMA WRITE);
    sha256 of what was written and what was read back agree."""
    target, host = fabric.guests[SERVER], fabric.guests[CLIENT]
    for index, guest in enumerate(fabric.guests):
        ulp.configure_ipoib(guest, index)
    ulp.nvmet_export(target, ulp.ram_disk(target, 128), "rdma", ulp.IPOIB_V4[SERVER])
    device = ulp.nvme_connect(host, "rdma", ulp.IPOIB_V4[SERVER])
    traffic = Traffic(fabric)
    try:
        ulp.check(host, "head -c 64M /dev/urandom > /tmp/pattern")
        ulp.check(host, f"dd if=/tmp/pattern of={device} bs=1M oflag=direct status=none", timeout=600)
        ulp.check(host, f"dd if={device} of=/tmp/readback bs=1M count=64 iflag=direct status=none", timeout=600)
        digests = ulp.check(host, "sha256sum /tmp/pattern /tmp/readback").split()
        ulp.check(host, "rm -f /tmp/pattern /tmp/readback")
    finally:
        ulp.nvme_disconnect(host)
    traffic.done()
    assert digests[0] == digests[2], digests
    on_target, on_host = traffic.opcodes[SERVER], traffic.opcodes[CLIENT]
    assert on_host.get(READ_REQ, 0) > 0 and on_target.get(READ_RESP, 0) > 0, (on_host, on_target)
    assert on_host.get(WRITE_DATA_LAST, 0) > 0 and on_target.get(WRITE_RESP, 0) > 0, (on_host, on_target)
    assert traffic.chip[SERVER]["expected"] > 0 and traffic.chip[CLIENT]["expected"] > 0, traffic.chip
    report_figure(f"tid rdma: NVMe over RDMA 64 MiB written and read back intact: {on_target[READ_RESP]} TID RDMA "
                  f"READ and {on_host[WRITE_DATA_LAST]} TID RDMA WRITE segments")


def test_no_undeclared_csr_access_no_internal_error_and_no_hfi1_warning(fabric):
    for path, stats in fabric.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
    for guest in fabric.guests:
        assert hfi1_dmesg_problems(guest) == [], guest.name
