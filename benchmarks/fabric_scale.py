"""A switched fabric at scale, measured in one run on this machine.

  built    a served fabric with no guest: edge switches of 48 ports under one
           core switch, two served HFIs (no guest attached) and N simulated
           HFIs (default 254: 256 nodes): seconds from the process's start
           until every cable between switches and to the simulated HFIs is up,
           the server's CPU time and resident memory then, and its CPU over an
           idle window (nothing may poll)
  sweep    `vfnic serve --topology` fabrics of 2, 8, 64 and 256 nodes: two
           guests (on the first and the last edge switch) and nodes - 2
           simulated HFIs on 48-port edges under a core; opafm started in
           guest 0; seconds from its start until every port of the fabric (the
           guests', the switches', every simulated HFI's) is Active, read from
           the server's control socket
  forward  two guests on one switch (`--switch`): ib_send_bw 64 B and
           ib_write_bw 64 KiB through it; packets per second the switch
           forwarded and the server's CPU time per forwarded packet
  boot     eight guests on one switch: seconds from QEMU's start until every
           port is Init, and until Active with opafm started at Init

Targets (issue 14): 256 nodes Active within 60 s of opafm's start; 8 guests
Active within 90 s of boot on this 2-core machine. Absolute figures drift
from day to day with the machine's load (printed with each section).

    benchmarks/fabric_scale [--sizes 2,8,64,256] [--guests 8] [--simulated 254] [--idle S] [--only SECTION] [--keep]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from images.lab.fabric import ACTIVE, INIT, Fabric, parse_perftest
from images.lab.process import run_directory
from images.lab.server import VfnicServer
from images.lab.wait import wait_until

#: ports of every switch: a real Omni-Path edge switch's 48
EDGE_PORTS = 48
SECTIONS = ("built", "sweep", "forward", "boot")
TARGETS = {"256 nodes Active after opafm's start": 60.0, "8 guests Active after boot": 90.0}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def topology(sockets: list[Path], simulated: int) -> str:
    """Edge switches of EDGE_PORTS ports under one core switch (each edge's
    last port to the core), the two served HFIs on port 1 of the first and
    of the last edge (their traffic crosses the core), the simulated HFIs on
    the edges' other ports (docs/topology.md). opafm 10.10 refuses a switch
    of more than 64 ports ("exceeded 64 port limit"), so a fabric of
    hundreds of nodes is several switches, as a real one is."""
    per_edge = EDGE_PORTS - 1
    edges = max(2, -(-(simulated + 2) // per_edge))
    if edges > EDGE_PORTS:
        raise SystemExit(f"at most {EDGE_PORTS * per_edge - 2} simulated HFIs under one core")
    switches = [f'core = {{ ports = {EDGE_PORTS} }}'] + [f'edge{e} = {{ ports = {EDGE_PORTS} }}'
                                                         for e in range(1, edges + 1)]
    cables = ['"hfi-a" = "edge1/1"', f'"hfi-b" = "edge{edges}/1"'] + \
        [f'"edge{e}/{EDGE_PORTS}" = "core/{e}"' for e in range(1, edges + 1)]
    groups, left = [], simulated
    for e in range(1, edges + 1):  # ports 2.. on the guests' edges, 1.. on the others
        first = 2 if e in (1, edges) else 1
        count = min(left, EDGE_PORTS - first)
        if count:
            groups.append(f'[[simulated]]\nprefix = "edge{e}-sim"\ncount = {count}\nswitch = "edge{e}"\n'
                          f'first_port = {first}\n')
        left -= count
    return ("[switches]\n" + "\n".join(switches) + "\n\n"
            f'[hfis]\nhfi-a = "{sockets[0]}"\nhfi-b = "{sockets[1]}"\n\n' + "\n".join(groups) +
            "\n[cables]\n" + "\n".join(cables) + "\n")


def edges_of(simulated: int) -> int:
    return topology([Path("a"), Path("b")], simulated).count("= { ports") - 1  # all but the core


def every_port_active(server: VfnicServer) -> dict | None:
    """The query's summary once every cabled port of every node is Active."""
    reply = server.ctl("query")
    ports = [p for node in reply.get("nodes", []) for p in node.get("ports", []) if p.get("link")]
    if ports and all(p["state"] == "ACTIVE" for p in ports):
        return reply.get("summary") or {"ports": len(ports)}
    return None


def built(workdir: Path, simulated: int, idle: float) -> dict:
    print(f"built: {edges_of(simulated)} edges and a core, 2 served HFIs with no guest, {simulated} simulated HFIs "
          f"({load()})", flush=True)
    sockets = [workdir / "built-a.sock", workdir / "built-b.sock"]
    (workdir / "built.toml").write_text(topology(sockets, simulated))
    server = VfnicServer("hfi1", sockets, log=workdir / "built.log", start_timeout=120,
                         args=["--topology", str(workdir / "built.toml"), "--control", str(workdir / "built.ctl")])
    started = time.monotonic()
    with server.start():
        pid = server.process.pid
        expected = simulated + edges_of(simulated)  # the simulated HFIs' cables and each edge's uplink
        summary = wait_until(lambda: (lambda s: s if s["links_up"] == expected else None)(
            server.ctl("query")["summary"]), 300, f"{expected} cables up", interval=0.05)
        result = {"built_s": time.monotonic() - started, "cpu_s": cpu_seconds(pid), "rss_mib": rss_mib(pid)}
        print(f"  {summary['links_up']} cables up {result['built_s']:.2f} s after the process started; "
              f"CPU {result['cpu_s']:.2f} s, RSS {result['rss_mib']:.0f} MiB", flush=True)
        before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)  # the measurement window itself: nothing may happen in it
        result["idle_share"] = (cpu_seconds(pid) - before) / (time.monotonic() - t0)
        print(f"  idle: {100 * result['idle_share']:.2f} % of one core over {idle:.0f} s", flush=True)
    return result


def sweep(workdir: Path, nodes: int) -> dict:
    print(f"sweep: {nodes} nodes: 2 guests and {nodes - 2} simulated HFIs on {edges_of(nodes - 2)} edges and a core "
          f"({load()})", flush=True)
    with Fabric.launch(workdir / f"sweep{nodes}", topology=lambda sockets: topology(sockets, nodes - 2),
                       server_args=["--control", str(workdir / f"sweep{nodes}.ctl")]) as fabric:
        fabric.wait_ports(INIT, timeout=900)
        cpu = cpu_seconds(fabric.server.process.pid)
        fabric.start_subnet_manager()
        summary = wait_until(lambda: every_port_active(fabric.server), 900, f"every port of {nodes} nodes Active",
                             interval=0.2)
        seconds = time.monotonic() - fabric.sm_started_at
        cpu = cpu_seconds(fabric.server.process.pid) - cpu
    print(f"  every port Active {seconds:.1f} s after opafm's start; server CPU meanwhile {cpu:.2f} s ({summary})",
          flush=True)
    return {"active_s": seconds, "cpu_s": cpu}


def switch_of(fabric: Fabric) -> dict:
    (switch,) = fabric.server.ctl("query")["switches"]
    return switch


def forward(workdir: Path, seconds_per_tool: int) -> dict:
    print(f"forward: two guests on one switch ({load()})", flush=True)
    with Fabric.launch(workdir / "forward", server_args=["--switch", "--control", str(workdir / "forward.ctl")]) \
            as fabric:
        fabric.wait_ports(INIT, timeout=600)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE, timeout=600)
        results = {}
        for name, command in (("ib_send_bw 64 B", "ib_send_bw -F -s 64 -D {s}"),
                              ("ib_write_bw 64 KiB", "ib_write_bw -F -s 65536 -D {s}")):
            pid = fabric.server.process.pid
            forwarded, cpu, started = switch_of(fabric)["forwarded"], cpu_seconds(pid), time.monotonic()
            run = fabric.run_pair(command.format(s=seconds_per_tool), timeout=600)
            rows = parse_perftest(run.client.stdout)
            if not run.ok or not rows:
                raise RuntimeError(f"{name} failed:\n{run.explain()}")
            elapsed, packets = time.monotonic() - started, switch_of(fabric)["forwarded"] - forwarded
            used = cpu_seconds(pid) - cpu
            results[name] = {"mib_s": rows[0]["bw_avg_mib_s"], "pps": packets / elapsed,
                             "cpu_us_per_packet": used / max(packets, 1) * 1e6}
            print(f"  {name:<20} {rows[0]['bw_avg_mib_s']:>9.2f} MiB/s  {packets / elapsed:>9.0f} packets/s "
                  f"through the switch  {used / max(packets, 1) * 1e6:>6.0f} us server CPU/packet", flush=True)
        return results


def boot(workdir: Path, guests: int) -> dict:
    print(f"boot: {guests} guests on one switch ({load()})", flush=True)
    started = time.monotonic()
    with Fabric.launch(workdir / "boot", server_args=["--switch", "--control", str(workdir / "boot.ctl")],
                       guests=guests) as fabric:
        fabric.wait_ports(INIT, timeout=900)
        init = time.monotonic() - started
        fabric.start_subnet_manager()
        wait_until(lambda: every_port_active(fabric.server), 900, f"all {guests} guests' ports Active")
        active = time.monotonic() - started
    print(f"  Init {init:.1f} s, Active {active:.1f} s after QEMU started", flush=True)
    return {"init_s": init, "active_s": active}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/fabric_scale", description=__doc__.splitlines()[0],
                                     epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2,8,64,256", help="fabric sizes for the sweep (nodes, comma-separated)")
    parser.add_argument("--guests", type=int, default=8, help="guests for the boot figure (default 8)")
    parser.add_argument("--simulated", type=int, default=254, help="simulated HFIs in the built fabric (254)")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured (default 20)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per forwarding test")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the guests' and servers' logs")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    if any(n < 2 for n in sizes):
        parser.error("a sweep fabric has the two guests at least: sizes of 2 or more")
    sections = args.only or SECTIONS
    with run_directory("vfnic-bench-fabric-scale-", args.keep) as workdir:
        results = {
            "built": built(workdir, args.simulated, args.idle) if "built" in sections else None,
            "sweep": {n: sweep(workdir, n) for n in sizes} if "sweep" in sections else {},
            "forward": forward(workdir, args.seconds) if "forward" in sections else {},
            "boot": boot(workdir, args.guests) if "boot" in sections else None,
        }
    print("\nA switched fabric: TCG guests (1 vCPU each), one vfnic serve per fabric")
    if results["built"]:
        b = results["built"]
        print(f"  built   2 + {args.simulated} nodes: every cable up in {b['built_s']:.2f} s, CPU {b['cpu_s']:.2f} s, "
              f"RSS {b['rss_mib']:.0f} MiB, idle {100 * b['idle_share']:.2f} % of a core")
    for n, r in results["sweep"].items():
        print(f"  sweep   {n:>3} nodes: every port Active {r['active_s']:>5.1f} s after opafm's start, "
              f"server CPU {r['cpu_s']:.2f} s")
    for name, r in results["forward"].items():
        print(f"  forward {name:<20} {r['pps']:>9.0f} packets/s  {r['cpu_us_per_packet']:>6.0f} us CPU/packet")
    if results["boot"]:
        print(f"  boot    {args.guests} guests: every port Init {results['boot']['init_s']:.1f} s, "
              f"Active {results['boot']['active_s']:.1f} s")
    figures = {"256 nodes Active after opafm's start": results["sweep"].get(256, {}).get("active_s"),
               "8 guests Active after boot": results["boot"]["active_s"]
               if results["boot"] and args.guests == 8 else None}
    for name, limit in TARGETS.items():
        value = figures[name]
        verdict = "not measured" if value is None else ("met" if value <= limit else "NOT met")
        print(f"target {name} within {limit:.0f} s: {verdict}" + ("" if value is None else f" ({value:.1f} s)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
