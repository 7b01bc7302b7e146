"""Two guests, each with the one HFI of its own `vfnic serve`; the two
servers run in two network namespaces joined by a veth pair -- two hosts on
one wire, addresses only inside them (testkit/netns.py) -- and cable their
HFIs through a TCP stream between them (`--cable-listen` on host a,
`--cable-connect` on host b). QEMU stays in the host's namespace: a
vfio-user socket is a path. opafm in the first guest brings both ports
Active through the cable, verbs and perftest pass, faults, capture and
`vfnic ctl link-down` act on it as on a local cable, and when the wire goes
away the link goes down on both sides and comes back Active by itself once
the wire is back.

Acceptance of issue 14, item 5 (cables between processes and hosts).
"""
from __future__ import annotations

import re
import time

import pytest

from images.lab.fabric import ACTIVE, parse_perftest
from images.lab.wait import wait_until
from testkit.guest_checks import dmesg_mark, dmesg_since, hfi1_dmesg_problems, opainfo, rc_pingpong_passes
from testkit.netns import NamespaceError, NamespacePair

pytestmark = pytest.mark.guest

PORT = 7470


@pytest.fixture(scope="module")
def hosts():
    """The two hosts' namespaces; set up before the lab, so deleted after its servers stop."""
    pair = NamespacePair("vfc")
    try:
        pair.__enter__()
    except NamespaceError as error:
        pytest.fail(f"cannot make two network namespaces joined by a veth pair (root and iproute2 are "
                    f"needed): {error}", pytrace=False)
    yield pair
    pair.close()


@pytest.fixture(scope="module")
def fabric(hosts, module_lab, report_figure):
    work = module_lab.directory / "cable"
    work.mkdir()
    address = f"{hosts.a.address}:{PORT}"
    servers = [module_lab.server("hfi1", netns=host.name, args=(
        f"--cable-{role}", address, "--stats", str(work / f"{role}.json"), "--control", str(work / f"{role}.sock")))
        for host, role in ((hosts.a, "listen"), (hosts.b, "connect"))]
    return module_lab.bring_up_fabric(servers, "cross-host cable", report_figure)


def cable(server) -> dict:
    """The server's one link, its remote cable, as `vfnic ctl query` shows it."""
    (link,) = server.ctl("query")["links"]
    return link


def test_opafm_brings_both_ports_active_through_the_cable(fabric, hosts):
    a, b = (opainfo(g) for g in fabric.guests)
    assert a["state"] == b["state"] == "Active", (a["text"], b["text"])
    assert a["lid"] and b["lid"] and a["lid"] != b["lid"]
    assert a["sm_lid"] == b["sm_lid"] == a["lid"], "the SM runs in guest 0 and b's port knows its LID across the cable"
    listening, connecting = (cable(server) for server in fabric.servers)
    for link in (listening, connecting):
        assert link["state"] == "up" and link["remote"]["stream"] == "connected", link
        assert link["remote"]["peer_name"] == "hfi1" and link["remote"]["protocol_errors"] == 0, link
    assert listening["remote"]["transport"]["address"] == f"{hosts.a.address}:{PORT}"
    assert connecting["remote"]["peer"] == f"{hosts.a.address}:{PORT}"
    assert listening["remote"]["peer"].startswith(f"{hosts.b.address}:"), "b connected from its own address"
    out = fabric.guests[1].run("opasaquery -o node", timeout=120, check=True).stdout
    assert set(re.findall(r"NodeGuid:\s*(0x[0-9a-f]+)", out)) == {"0x0011750000000001", "0x0011750000000002"}, out


def test_verbs_and_perftest_pass_through_the_cable(fabric, report_figure):
    before = cable(fabric.servers[1])["remote"]["packets_in"]
    summary = rc_pingpong_passes(fabric, iterations=100, size=4096)
    report_figure(f"cross-host cable: ibv_rc_pingpong -c (100 x 4 KiB): {summary['usec_per_iter']:.0f} us/iter")
    run = fabric.run_pair("ib_write_bw -F -s 65536 -n 200")
    assert run.ok, run.explain()
    (row,) = parse_perftest(run.client.stdout)
    assert row["bw_avg_mib_s"] > 0 and row["iterations"] == 200, row
    report_figure(f"cross-host cable: ib_write_bw (200 x 64 KiB): {row['bw_avg_mib_s']:.1f} MiB/s")
    crossed = cable(fabric.servers[1])["remote"]["packets_in"] - before
    assert crossed > 200 * 64 * 1024 // 10240, f"only {crossed} packets came over the stream"


def test_no_undeclared_csr_access_internal_error_or_hfi1_warning(fabric):
    for server in fabric.servers:
        for path, stats in server.stats().items():
            assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
            assert stats["internal_errors"] == [], (path, stats["internal_errors"])
    for guest in fabric.guests:
        assert hfi1_dmesg_problems(guest) == [], guest.name


# -- what an operator does to the cable, and what the network does to it ---------------------------

def test_faults_and_a_capture_on_one_sides_end_act_on_the_cable(fabric, tmp_path):
    """Host a drops 1 % each way on its link (its end and the far one, by
    name) and captures: RC retransmits through it, the capture has both
    directions' packets."""
    server = fabric.servers[0]
    for seed, sender in enumerate(("hfi1", "remote")):
        server.ctl("fault-set", link=0, **{"from": sender}, kind="drop", rate=0.01, seed=seed)
    pcap = str(tmp_path / "a.pcap")
    server.ctl("capture-start", link=0, file=pcap)
    try:
        rc_pingpong_passes(fabric, iterations=300, size=4096)
    finally:
        captured = server.ctl("capture-stop", link=0)
        link = cable(server)
        server.ctl("fault-clear", link=0)
    assert link["hfi1->remote"]["faults_injected"].get("drop", 0) > 0, link
    assert link["remote->hfi1"]["faults_injected"].get("drop", 0) > 0, link
    assert captured["packets"] > 300, captured


def test_vfnic_ctl_link_down_on_one_side_takes_both_ports_down_and_they_come_back_active(fabric, report_figure):
    marks = {g.name: dmesg_mark(g) for g in fabric.guests}
    ups = [cable(server)["ups"] for server in fabric.servers]
    started = time.monotonic()
    fabric.servers[1].ctl("link-down", link=0, seconds=3)
    wait_until(lambda: all("Unexpected link down" in dmesg_since(g, marks[g.name]) for g in fabric.guests), 120.0,
               "both drivers to see the link go down")
    fabric.wait_ports(ACTIVE, timeout=600.0)
    assert [cable(server)["ups"] for server in fabric.servers] == [n + 1 for n in ups], "one more link-up each"
    report_figure(f"cross-host cable: 3 s link-down on host b to both ports Active again: "
                  f"{time.monotonic() - started:.1f} s")
    rc_pingpong_passes(fabric)


def test_the_wire_going_away_takes_the_link_down_on_both_sides_and_it_comes_back_active(fabric, hosts,
                                                                                        report_figure):
    marks = {g.name: dmesg_mark(g) for g in fabric.guests}
    breaks = [cable(server)["remote"]["breaks"] for server in fabric.servers]
    started = time.monotonic()
    hosts.set_wire(up=False)
    try:
        wait_until(lambda: all(cable(s)["remote"]["stream"] == "disconnected" for s in fabric.servers), 60.0,
                   "both servers to give the stream up", explain=lambda: [cable(s)["remote"] for s in fabric.servers])
        wait_until(lambda: all("Unexpected link down" in dmesg_since(g, marks[g.name]) for g in fabric.guests), 120.0,
                   "both drivers to see the link go down")
        down = time.monotonic() - started
        for server, before in zip(fabric.servers, breaks):  # while the wire is still away
            link = cable(server)
            assert link["state"] == "down" and link["remote"]["breaks"] == before + 1, link
            assert "nothing heard" in link["remote"]["last_break"], link["remote"]
    finally:
        hosts.set_wire(up=True)
    back = time.monotonic()
    fabric.wait_ports(ACTIVE, timeout=600.0)
    report_figure(f"cross-host cable: wire down: both ports down {down:.1f} s after it went; wire back: both "
                  f"Active {time.monotonic() - back:.1f} s later")
    for server in fabric.servers:
        link = cable(server)
        assert link["state"] == "up" and link["remote"]["stream"] == "connected", link
    rc_pingpong_passes(fabric)


def test_after_the_flaps_no_internal_error_and_no_protocol_error_on_either_side(fabric):
    for server in fabric.servers:
        for path, stats in server.stats().items():
            assert stats["internal_errors"] == [], (path, stats["internal_errors"])
        assert cable(server)["remote"]["protocol_errors"] == 0
