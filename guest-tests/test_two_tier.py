"""Two guests and 62 simulated HFIs behind two emulated edge switches linked
directly (issue 14, item 6): `vfnic serve --device hfi1 --topology FILE`,
the shape of docs/topologies/two-tier-62.toml.

    guest0 hfi-a --- edge1/1   edge1/2..32 --- sim0..sim30
    guest1 hfi-b --- edge2/1   edge2/2..32 --- simb0..simb30
                     edge1/36 ===================== edge2/36

opafm in guest 0 sweeps the fabric (2 switches, 64 HFIs, 65 cables) and
brings every port Active, the simulated HFIs' and the inter-switch link's
included; the SA then knows both switches, every HFI and every cable, and
ibv_rc_pingpong between the two guests crosses both switches (the
inter-switch link carries it). One boot of two guests.
"""
from __future__ import annotations

import os
import re
import time

import pytest

from images.lab.fabric import ACTIVE, INIT, Fabric, parse_pingpong
from images.lab.wait import wait_until
from testkit.guest_checks import opafm_log, opainfo, save_fabric_diagnostics, wait_settled

pytestmark = pytest.mark.guest

EDGE_PORTS = 36
ISL = f"edge1.p{EDGE_PORTS}<->edge2.p{EDGE_PORTS}"
PER_EDGE = 31
HFIS = 2 + 2 * PER_EDGE
CABLES = HFIS + 1
#: every cabled port Active: both ends of each HFI's cable and of the inter-switch link
ACTIVE_PORTS = 2 * CABLES


def topology(sockets) -> str:
    a, b = sockets
    return f"""
[switches]
edge1 = {{ ports = {EDGE_PORTS} }}
edge2 = {{ ports = {EDGE_PORTS} }}

[hfis]
hfi-a = "{a}"
hfi-b = "{b}"

[[simulated]]
prefix = "sim"
count = {PER_EDGE}
switch = "edge1"

[[simulated]]
prefix = "simb"
count = {PER_EDGE}
switch = "edge2"

[cables]
"hfi-a" = "edge1/1"
"hfi-b" = "edge2/1"
"edge1/{EDGE_PORTS}" = "edge2/{EDGE_PORTS}"
"""


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(fabric: Fabric) -> dict:
    return fabric.server.ctl("query")["summary"]


def isl_packets(fabric: Fabric) -> dict[str, int]:
    (link,) = [link for link in fabric.server.ctl("query")["links"] if link["name"] == ISL]
    return {direction: counts["packets"] for direction, counts in link.items() if "->" in direction}


@pytest.fixture(scope="module")
def two_tier(module_lab, report_figure):
    work = module_lab.directory / "two-tier"
    work.mkdir()
    server = module_lab.server("hfi1", count=2, topology=topology, args=(
        "--stats", str(work / "stats.json"), "--control", str(work / "control.sock")))
    started = time.monotonic()
    fabric = Fabric.boot(server, lambda devices, **options: module_lab.guest(*devices, wait=False, **options),
                         module_lab.socket_dir)
    try:
        fabric.wait_ports(INIT, timeout=300)
        report_figure(f"two-tier: 2 guests booted, both ports Init {time.monotonic() - started:.1f} s after QEMU "
                      f"started; the fabric before the SM: {summary(fabric)['cabled_ports']}")
        cpu_before = cpu_seconds(server.process.pid)
        fabric.start_subnet_manager()
        try:
            fabric.wait_ports(ACTIVE, timeout=300)
            guests_active = time.monotonic() - fabric.sm_started_at
            wait_until(lambda: summary(fabric)["cabled_ports"].get("ACTIVE") == ACTIVE_PORTS, 300,
                       f"all {ACTIVE_PORTS} cabled ports Active", explain=lambda: str(summary(fabric)))
            all_active = time.monotonic() - fabric.sm_started_at
        finally:
            save_fabric_diagnostics(fabric, work)
        report_figure(f"two-tier: opafm's start to both guests' ports Active {guests_active:.1f} s, to all "
                      f"{ACTIVE_PORTS} ports of 2 switches and 64 HFIs Active {all_active:.1f} s (server CPU "
                      f"{cpu_seconds(server.process.pid) - cpu_before:.2f} s)")
        wait_settled(fabric, timeout=300)
        sweeps = [line for line in opafm_log(fabric) if "DISCOVERY CYCLE END" in line]
        report_figure(f"two-tier: opafm's first sweep over {time.monotonic() - fabric.sm_started_at:.1f} s after its "
                      f"start: {sweeps[0].split('DISCOVERY CYCLE END.')[-1].strip()}")
        yield fabric
        save_fabric_diagnostics(fabric, work)
    finally:
        fabric.close()


def test_opafm_sweeps_two_switches_and_64_hfis_and_every_port_goes_active(two_tier):
    infos = [opainfo(g) for g in two_tier.guests]
    assert [i["state"] for i in infos] == ["Active", "Active"], [i["text"] for i in infos]
    assert infos[1]["sm_lid"] == infos[0]["lid"], "the SM runs in guest 0, across both switches from guest 1"
    query = two_tier.server.ctl("query")
    assert query["summary"] == {"nodes": {"hfi1": 2, "switch": 2, "simulated HFI": 2 * PER_EDGE},
                                "cabled_ports": {"ACTIVE": ACTIVE_PORTS}, "links": CABLES, "links_up": CABLES}
    lids = [node["lid"] for node in query["nodes"] if node["kind"] != "hfi1"] + [i["lid"] for i in infos]
    assert all(lids) and len(set(lids)) == len(lids) == 2 + HFIS, "one LID per switch and per HFI"
    sweeps = [line for line in opafm_log(two_tier) if "DISCOVERY CYCLE END" in line]
    assert sweeps and f"2 SWs, {HFIS} HFIs, {HFIS} end ports" in sweeps[-1], sweeps
    problems = [line for line in opafm_log(two_tier) if re.search(r"\b(ERROR|WARN)\b", line)]
    assert problems == [], problems


def test_the_sa_knows_both_switches_every_hfi_and_every_cable(two_tier):
    """opafabricinfo from guest 1 (across both switches to the SA in guest 0);
    opasaquery's link records (one per direction: "LID: 0x2 -> 0x3 Port: 2 -> 1")
    make 65 cables, one of them between the two switches."""
    info = two_tier.guests[1].run("opafabricinfo", timeout=120, check=True).stdout
    counts = {key: int(value) for key, value in re.findall(r"Number of ([A-Za-z ]+?):\s*(\d+)", info)}
    wanted = {"HFIs": HFIS, "Switches": 2, "Links": CABLES, "HFI Links": HFIS, "ISLs": 1}
    assert {key: counts.get(key) for key in wanted} == wanted, info
    links = two_tier.guests[0].run("opasaquery -o link", timeout=120, check=True).stdout
    records = re.findall(r"LID:\s*(0x[0-9a-f]+)\s*->\s*(0x[0-9a-f]+)\s+Port:\s*(\d+)\s*->\s*(\d+)", links)
    cables = {frozenset({(int(a, 16), int(pa)), (int(b, 16), int(pb))}) for a, b, pa, pb in records}
    assert len(records) == 2 * CABLES and len(cables) == CABLES, links[:3000]
    switch_lids = {node["lid"] for node in two_tier.server.ctl("query")["nodes"] if node["kind"] == "switch"}
    isls = [cable for cable in cables if {lid for lid, _ in cable} <= switch_lids]
    assert isls == [frozenset({(lid, EDGE_PORTS) for lid in switch_lids})], isls


def test_rc_pingpong_between_the_guests_crosses_both_switches(two_tier, report_figure):
    before = isl_packets(two_tier)
    run = two_tier.run_pair("ibv_rc_pingpong -c -n 50", server=1, client=0)
    assert run.ok, run.explain()
    for side in (run.server, run.client):
        assert (parse_pingpong(side.stdout + side.stderr) or {}).get("iters") == 50, run.explain()
    after = isl_packets(two_tier)
    carried = {direction: after[direction] - before[direction] for direction in after}
    assert all(n >= 50 for n in carried.values()), f"the inter-switch link carried {carried}"
    usec = parse_pingpong(run.client.stdout + run.client.stderr)["usec_per_iter"]
    report_figure(f"two-tier: ibv_rc_pingpong -c guest0 -> guest1 across 2 switches: {usec:.0f} us/iter; "
                  f"the inter-switch link carried {carried}")


def test_no_undeclared_csr_access_and_no_internal_error(two_tier, report_figure):
    stats = two_tier.server.stats()
    devices = {key: value for key, value in stats.items() if "(" not in key}
    nodes = {key: value for key, value in stats.items() if "(" in key}
    assert len(devices) == 2 and len(nodes) == 2 + 2 * PER_EDGE
    for path, device in devices.items():
        assert device["undeclared_csr_accesses"] == 0, (path, device["undeclared_offsets"])
        assert device["internal_errors"] == [], (path, device["internal_errors"])
        assert device["rcv"]["dropped"] == {}, (path, device["rcv"])  # every MAD reached the guest
    assert {key: node["internal_errors"] for key, node in nodes.items() if node["internal_errors"]} == {}
    switches = {key: node for key, node in nodes.items() if key.endswith("(switch)")}
    report_figure("two-tier: " + "; ".join(f"{key}: forwarded {s['forwarded']}, answered {s['answered']}, "
                                           f"drops {s['drops']}" for key, s in switches.items()))
