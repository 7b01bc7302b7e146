"""The kernel's upper-layer protocols between two guests on the emulated
fabric, each an unmodified 6.12 ULP driving hfi1 through its own paths:
IPoIB datagram mode (hfi1's accelerated IPoIB, AIP: its own receive context
and RSM rule), IPoIB connected mode (RC), RDMA CM over the IPoIB addresses,
NVMe over Fabrics (nvmet-rdma, nvme-rdma) and SRP (ib_srpt, ib_srp). Data
is checked end to end with sha256; multicast membership is asked of opafm's
SA. Acceptance of the upper-layer-protocols issue; the last test is the
fault-injection issue's IPoIB transfer through a lossy, corrupting link.

Recipes: images/lab/ulp.py (addresses, and why the IPv6 ones share their low
24 bits).
"""
from __future__ import annotations

import re
import time

import pytest

from images.lab import ulp
from images.lab.fabric import parse_perftest, rdma_device
from testkit.guest_checks import refused_packets

pytestmark = pytest.mark.guest

A, B = 0, 1  # guest indexes: B exports, A uses


@pytest.fixture(scope="module")
def fabric(module_lab, report_figure):
    fabric = module_lab.active_fabric("ulp", report_figure)
    started = time.monotonic()
    fabric.ipoib = [ulp.configure_ipoib(guest, i) for i, guest in enumerate(fabric.guests)]
    report_figure(f"ulp: IPoIB up with carrier in both guests {time.monotonic() - started:.1f} s after Active")
    return fabric


def kernel_problems(guest) -> list[str]:
    """dmesg lines that would mean a ULP or the driver misbehaved."""
    crash = re.compile(r"\bBUG:|\bOops\b|\bWARNING:|Call Trace|NETDEV WATCHDOG|Invalid packet type")
    failure = re.compile(r"(nvme|srp|ipoib|hfi1|scsi|sd \d).*\b(error|timeout|failed)\b|I/O error", re.I)
    return [line for line in guest.run("dmesg").stdout.splitlines() if crash.search(line) or failure.search(line)]


# -- IPoIB, datagram mode (AIP) ------------------------------------------------------------

def test_ipoib_datagram_mode_uses_hfi1s_accelerated_path(fabric):
    for guest, ifname in zip(fabric.guests, fabric.ipoib):
        assert guest.run(f"cat /sys/class/net/{ifname}/mode", check=True).stdout.strip() == "datagram"
        dmesg = guest.run("dmesg", check=True).stdout
        assert re.search(r"type NETDEVCTXT ctxt \d+", dmesg), "AIP: a netdev receive context with its own IRQ"
        assert re.search(r"enabling queue 0 on context \d+", dmesg), "the netdev context is enabled at ip link up"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_ping_both_ways_resolving_through_the_broadcast_and_solicited_node_groups(fabric, family):
    addresses = ulp.IPOIB_V4 if family == "ipv4" else ulp.IPOIB_V6
    for me, peer in ((A, B), (B, A)):
        result = ulp.ping(fabric.guests[me], addresses[peer])
        assert result["received"] == result["transmitted"] == 3, result["text"]


def test_the_sa_lists_both_ports_in_the_ipoib_broadcast_group(fabric):
    for guest in fabric.guests:
        out = guest.run(f"opasaquery -o mcmember -m {ulp.BROADCAST_MGID}", timeout=60, check=True).stdout
        members = set(re.findall(r"PortGid: 0xfe80000000000000:(0x[0-9a-f]+) Membership: Full", out))
        assert members == {"0x0011750000000001", "0x0011750000000002"}, out


# -- RDMA CM over the IPoIB addresses ----------------------------------------------------------

def test_rping_with_verification_over_rdma_cm(fabric):
    port, address = fabric.port(), ulp.IPOIB_V4[B]
    run = fabric.run_cm_pair(f"rping -s -a {address} -p {port} -v -C 100",
                             f"rping -c -a {address} -p {port} -v -C 100", port)
    assert run.ok, run.explain()
    assert run.client.stdout.count("ping data: rdma-ping-") == 100, run.explain()


def test_ucmatose(fabric):
    port = fabric.port()
    run = fabric.run_cm_pair(f"ucmatose -p {port}", f"ucmatose -p {port} -s {ulp.IPOIB_V4[B]}", port)
    assert run.ok and "test complete" in run.client.stdout, run.explain()


@pytest.mark.parametrize("tool,args", [("ib_write_bw", "-F -n 200 -s 65536"), ("ib_send_lat", "-F -n 100 -s 2")])
def test_perftest_over_rdma_cm(fabric, tool, args, report_figure):
    port = fabric.port()
    run = fabric.run_cm_pair(f"{tool} -R {args} -p {port}", f"{tool} -R {args} -p {port} {ulp.IPOIB_V4[B]}", port)
    assert run.ok, run.explain()
    rows = parse_perftest(run.client.stdout)
    assert rows, run.explain()
    row = rows[0]
    figure = f"{row['bw_avg_mib_s']:.1f} MiB/s" if "bw_avg_mib_s" in row else f"{row['t_typical_us']:.0f} us"
    assert (row.get("bw_avg_mib_s") or row.get("t_typical_us")) > 0
    report_figure(f"ulp: {tool} -R (RDMA CM): {figure}")


# -- NVMe over Fabrics, RDMA ----------------------------------------------------------------------

def test_nvme_over_rdma_moves_64_mib_both_ways_intact(fabric, report_figure):
    target, host = fabric.guests[B], fabric.guests[A]
    disk = ulp.ram_disk(target, 128)
    ulp.nvmet_export(target, disk, "rdma", ulp.IPOIB_V4[B])
    device = ulp.nvme_connect(host, "rdma", ulp.IPOIB_V4[B])
    started = time.monotonic()
    written, read = ulp.write_and_read_back(host, device, 64)
    seconds = time.monotonic() - started
    ulp.nvme_disconnect(host)
    assert written == read
    assert kernel_problems(host) == [] and kernel_problems(target) == []
    report_figure(f"ulp: NVMe-oF/RDMA 64 MiB O_DIRECT write + read back: {seconds:.1f} s, sha256 equal")


# -- SRP ---------------------------------------------------------------------------------------------

def test_srp_moves_64_mib_both_ways_intact(fabric, report_figure):
    target, initiator = fabric.guests[B], fabric.guests[A]
    target_dev, initiator_dev = rdma_device(target), rdma_device(initiator)
    ulp.srpt_export(target, target_dev, "/dev/ram1", ulp.port_gid(initiator, initiator_dev))
    disk = ulp.srp_login(initiator, initiator_dev, ulp.node_guid(target, target_dev),
                         ulp.port_gid(target, target_dev))
    started = time.monotonic()
    written, read = ulp.write_and_read_back(initiator, disk, 64)
    seconds = time.monotonic() - started
    assert written == read
    assert kernel_problems(initiator) == [] and kernel_problems(target) == []
    report_figure(f"ulp: SRP 64 MiB O_DIRECT write + read back: {seconds:.1f} s, sha256 equal")


# -- IPoIB traffic, in datagram mode and then in connected mode ---------------------------------

@pytest.fixture(scope="class")
def ipoib_mode(request, fabric) -> str:
    """The IPoIB mode the class's tests run in: the interfaces came up in
    datagram mode; connected mode (RC, MTU 65520) is switched to once, after
    every datagram-mode test, and stays for the tests after it."""
    if request.param == "connected":
        for guest, ifname in zip(fabric.guests, fabric.ipoib):
            ulp.set_ipoib_mode(guest, ifname, "connected")
    return request.param


@pytest.mark.parametrize("ipoib_mode", ["datagram", "connected"], indirect=True, scope="class")
class TestIpoibTraffic:
    """Each test runs once per mode: every datagram-mode run first, then every connected-mode one."""

    @pytest.mark.parametrize("direction", ["A->B", "B->A"])
    def test_iperf3_over_ipoib(self, fabric, ipoib_mode, direction, report_figure):
        client, server = (A, B) if direction == "A->B" else (B, A)
        result = ulp.iperf3(fabric.guests[server], fabric.guests[client], ulp.IPOIB_V4[server])
        assert result.receiver_mbit_s > 0, result.text
        report_figure(f"ulp: iperf3 over IPoIB {ipoib_mode} {direction}: {result.receiver_mbit_s:.1f} Mbit/s")

    def test_64_mib_over_ipoib_arrive_intact(self, fabric, ipoib_mode, report_figure):
        sent, received, seconds = ulp.send_file(fabric.guests[A], fabric.guests[B], ulp.IPOIB_V4[B])
        assert sent == received
        report_figure(f"ulp: 64 MiB with nc over IPoIB {ipoib_mode}: {seconds:.1f} s, sha256 equal")


# -- IPoIB, connected mode (switched to by TestIpoibTraffic) -----------------------------------

def test_connected_mode_pings_with_64_kib_datagrams(fabric):
    for guest, ifname in zip(fabric.guests, fabric.ipoib):
        assert guest.run(f"cat /sys/class/net/{ifname}/mode", check=True).stdout.strip() == "connected"
        assert guest.run(f"cat /sys/class/net/{ifname}/mtu", check=True).stdout.strip() == "65520"
    for me, peer in ((A, B), (B, A)):
        for address in (ulp.IPOIB_V4[peer], ulp.IPOIB_V6[peer]):
            result = ulp.ping(fabric.guests[me], address, size=60000)
            assert result["received"] == 3, result["text"]


def test_64_mib_over_connected_mode_survive_1_percent_drop_and_half_a_percent_corruption(fabric, report_figure):
    for seed, sender in enumerate(("hfi1_0", "hfi1_1")):
        fabric.server.ctl("fault-set", link=0, **{"from": sender}, kind="drop", rate=0.01, seed=seed)
        fabric.server.ctl("fault-set", link=0, **{"from": sender}, kind="corrupt", rate=0.005, seed=10 + seed)
    try:
        sent, received, seconds = ulp.send_file(fabric.guests[A], fabric.guests[B], ulp.IPOIB_V4[B])
    finally:
        link = fabric.server.ctl("query")["links"][0]
        fabric.server.ctl("fault-clear", link=0)
    assert sent == received
    injected = {name: counts["faults_injected"] for name, counts in link.items() if "->" in name}
    assert all(f.get("drop", 0) > 0 for f in injected.values()), injected
    assert sum(f.get("corrupt", 0) for f in injected.values()) > 0, injected
    report_figure(f"ulp: 64 MiB over IPoIB connected through 1 % drop + 0.5 % corruption: {seconds:.1f} s, "
                  f"sha256 equal, faults {injected}")


def test_no_ulp_or_driver_error_in_either_kernel(fabric):
    for guest in fabric.guests:
        assert kernel_problems(guest) == [], guest.name
    for path, stats in fabric.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
        assert refused_packets(stats) == {}, (path, stats["send"]["dropped"])  # the send-side integrity checks
