"""Two guests, one emulated HFI each, cabled back to back inside one
`vfnic serve --device hfi1 --socket A --socket B`: Debian's opafm brings both
ports Active, GSI answers across the link, and rdma-core's and perftest's
tools move checked data between the guests. Judged by software no one here
wrote; every check parses what the tools print.

Acceptance of the data-path issue. hfi1 autoloads in both guests as on real
hardware; the guests also share a private management Ethernet link for the
tools' out-of-band exchange (images/lab/fabric.py).
"""
from __future__ import annotations

import os
import re
import time

import pytest

from emulator.tuning import vcpu_threads
from images.lab.fabric import ACTIVE, parse_perftest, parse_pingpong
from testkit.guest_checks import hfi1_dmesg_problems, link_directions, opainfo, rc_pingpong_passes, refused_packets

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def fabric(module_lab, report_figure):
    return module_lab.active_fabric("fabric", report_figure)


def test_opafm_brings_both_ports_active_with_their_own_lids_and_one_sm(fabric):
    a, b = (opainfo(g) for g in fabric.guests)
    assert a["state"] == b["state"] == "Active", (a["text"], b["text"])
    assert a["lid"] and b["lid"] and a["lid"] != b["lid"]
    assert a["sm_lid"] == b["sm_lid"] == a["lid"], "the SM runs in guest 0, and both ports know its LID"
    assert fabric.port_states() == [ACTIVE, ACTIVE]


def test_the_sa_answers_over_gsi_from_the_guest_without_the_sm(fabric):
    """opasaquery in guest 1 asks guest 0's SA across the link (QP1, data VLs)."""
    out = fabric.guests[1].run("opasaquery -o node", timeout=120, check=True).stdout
    guids = set(re.findall(r"NodeGuid:\s*(0x[0-9a-f]+)", out))
    assert guids == {"0x0011750000000001", "0x0011750000000002"}, out


@pytest.mark.parametrize("tool", ["ibv_rc_pingpong", "ibv_uc_pingpong", "ibv_ud_pingpong", "ibv_srq_pingpong"])
def test_pingpong_with_data_checks_passes_between_the_guests(fabric, tool, report_figure):
    run = fabric.run_pair(f"{tool} -c -n 50")
    assert run.ok, run.explain()
    for side in (run.server, run.client):
        summary = parse_pingpong(side.stdout + side.stderr)
        assert summary and summary["iters"] == 50 and summary["bytes"] > 0, run.explain()
    report_figure(f"fabric: {tool} -c: {parse_pingpong(run.client.stdout + run.client.stderr)['usec_per_iter']:.0f} "
                  f"us/iter")


PERFTESTS = {
    "ib_send_bw": "ib_send_bw -F -n 200",
    "ib_write_bw": "ib_write_bw -F -s 65536 -n 200",
    "ib_read_bw": "ib_read_bw -F -n 100",
    "ib_atomic_bw": "ib_atomic_bw -F -n 100",
    "ib_send_lat": "ib_send_lat -F -s 2 -n 100",
    "ib_write_lat": "ib_write_lat -F -s 2 -n 100",
    "ib_read_lat": "ib_read_lat -F -s 2 -n 100",
    "ib_send_bw -c UD": "ib_send_bw -F -c UD -n 100",
}


@pytest.mark.parametrize("name", list(PERFTESTS))
def test_perftest_reports_a_result_between_the_guests(fabric, name, report_figure):
    run = fabric.run_pair(PERFTESTS[name])
    assert run.ok, run.explain()
    rows = parse_perftest(run.client.stdout)
    assert len(rows) == 1, run.explain()
    (row,) = rows
    if "bw_avg_mib_s" in row:
        # the message rate has 6 decimals: 100 atomics of 8 bytes can print 0.00 MiB/s
        assert row["msg_rate_mpps"] > 0 and row["iterations"] > 0, row
        report_figure(f"fabric: {name}: {row['bw_avg_mib_s']:.2f} MiB/s, {row['msg_rate_mpps'] * 1e6:.0f} msg/s "
                      f"at {row['bytes']} B")
    else:
        assert 0 < row["t_min_us"] <= row["t_typical_us"], row
        report_figure(f"fabric: {name}: {row['t_typical_us']:.0f} us typical at {row['bytes']} B")


def test_no_undeclared_csr_access_refused_packet_or_hfi1_warning_in_either_guest(fabric):
    """Refused: a packet the kernel sent (SMPs from its VL15 context, verbs,
    IPoIB) that its send context's integrity checks stopped."""
    for path, stats in fabric.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
        assert refused_packets(stats) == {}, (path, stats["send"]["dropped"])
        assert stats["port"]["link"]["state"] == "up"
    for guest in fabric.guests:
        assert hfi1_dmesg_problems(guest) == [], guest.name
        spurious = guest.run("dmesg | grep -c 'interrupt, but no status bits set'").stdout.strip()
        assert spurious == "0", f"{guest.name}: the chip raised an SDMA interrupt with nothing pending"


def test_the_link_counts_packets_and_bytes_in_both_directions(fabric):
    links = [stats["port"]["link"] for stats in fabric.server.stats().values()]
    assert links[0] == links[1], "one cable, seen from both of its HFIs"
    before = link_directions(fabric)
    assert len(before) == 2, links[0]
    rc_pingpong_passes(fabric, iterations=100, size=4096)  # this test's own traffic
    for name, counts in link_directions(fabric).items():
        packets = counts["packets"] - before[name]["packets"]
        octets = counts["bytes"] - before[name]["bytes"]
        assert packets >= 100 and octets > 100 * 4096, (name, packets, octets)


# -- what an operator does to the cable: capture, faults (issue: fault injection) -------------

def test_a_capture_of_live_traffic_decodes_as_omni_path_smps_and_verbs(fabric, tmp_path):
    from images.provision.tshark import provision_tshark
    tshark = provision_tshark()
    pcap = str(tmp_path / "live.pcap")
    fabric.server.ctl("capture-start", link=0, file=pcap)
    try:
        peer_lid = opainfo(fabric.guests[0])["lid"]
        smp = fabric.guests[1].run(f"opasmaquery -o nodeinfo -l {peer_lid}", timeout=120)
        assert smp.rc == 0, smp.stdout + smp.stderr
        run = fabric.run_pair("ibv_ud_pingpong -c -n 20")
        assert run.ok, run.explain()
    finally:
        captured = fabric.server.ctl("capture-stop", link=0)
    assert captured["packets"] > 40, captured
    classes = {row[0] for row in tshark.fields(pcap, "opa.mad.mgmtclass") if row[0]}
    assert "0x01" in classes, f"a LID-routed SMP (opasmaquery) decoded as opa.mad; classes seen: {classes}"
    opcodes = {row[0] for row in tshark.fields(pcap, "opa.bth.opcode") if row[0]}
    assert "0x64" in opcodes, f"UD SEND_ONLY (the pingpong) decoded as opa; opcodes seen: {opcodes}"


def test_rc_traffic_survives_drop_and_corruption_and_the_link_counts_the_faults(fabric, report_figure):
    """1 % drop and 0.5 % corruption each way: RC retransmits until every
    byte arrives, checked by the tools themselves (-c, ib_write_bw's run)."""
    for seed, sender in enumerate(("hfi1_0", "hfi1_1")):
        fabric.server.ctl("fault-set", link=0, **{"from": sender}, kind="drop", rate=0.01, seed=seed)
        fabric.server.ctl("fault-set", link=0, **{"from": sender}, kind="corrupt", rate=0.005, seed=10 + seed)
    try:
        started = time.monotonic()
        pingpong = fabric.run_pair("ibv_rc_pingpong -c -n 500 -s 4096", timeout=600)
        assert pingpong.ok, pingpong.explain()
        bw = fabric.run_pair("ib_write_bw -F -s 65536 -n 200", timeout=600)
        assert bw.ok, bw.explain()
        rows = parse_perftest(bw.client.stdout)
        assert rows and rows[0]["bw_avg_mib_s"] > 0, bw.explain()
        elapsed = time.monotonic() - started
    finally:
        link = fabric.server.ctl("query")["links"][0]
        fabric.server.ctl("fault-clear", link=0)
    injected = {name: counts["faults_injected"] for name, counts in link.items() if "->" in name}
    for direction, faults in injected.items():
        assert faults.get("drop", 0) > 0, (direction, injected)
    assert sum(f.get("corrupt", 0) for f in injected.values()) > 0, injected
    report_figure(f"fabric: rc_pingpong -c (500 x 4 KiB) and ib_write_bw (200 x 64 KiB) through 1 % drop and 0.5 % "
                  f"corruption: {elapsed:.0f} s, faults injected {injected}, write bw {rows[0]['bw_avg_mib_s']:.1f} MiB/s")


# -- the guests' vCPU scheduling (issue 15: --vcpu-sched) -------------------------------------

def test_tune_makes_the_real_qemus_vcpu_threads_idle_and_gives_them_back(fabric):
    """QEMU 11.1 names its vCPU threads as emulator/tuning.py expects: `tune
    vcpu_sched=idle` finds each guest's through the socket's peer credentials
    and makes exactly those SCHED_IDLE, traffic still passes, and `host`
    gives them back SCHED_OTHER."""
    qemus = [guest.process.pid for guest in fabric.guests]
    vcpus = {pid: vcpu_threads(pid) for pid in qemus}
    assert all(len(tids) == 1 for tids in vcpus.values()), vcpus  # -smp 1
    try:
        reply = fabric.server.ctl("tune", vcpu_sched="idle")
        assert reply["vcpu_sched"] == "idle"
        assert {int(pid): tids for pid, tids in reply["vcpu_threads"].items()} == vcpus, reply
        for pid, tids in vcpus.items():
            for tid in os.listdir(f"/proc/{pid}/task"):
                wanted = os.SCHED_IDLE if int(tid) in tids else os.SCHED_OTHER
                assert os.sched_getscheduler(int(tid)) == wanted, (pid, tid)
        rc_pingpong_passes(fabric, iterations=50, size=64)
    finally:
        fabric.server.ctl("tune", vcpu_sched="host")
    assert {os.sched_getscheduler(t) for tids in vcpus.values() for t in tids} == {os.SCHED_OTHER}
