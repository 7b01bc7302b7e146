"""A switched fabric at scale: how long opafm takes to bring a fabric
Active, what one switch forwards, and how long eight guests take from boot to
Active, measured in one run on this machine.

  sweep   `vfnic serve --topology` fabrics of 2, 8, 64 and 256 nodes: two
          guests and (nodes - 2) simulated HFIs behind two edge switches;
          opafm started in guest 0; seconds from its start until every port
          of the fabric (the guests', the switches', the simulated HFIs') is
          Active, read from the server's control socket
  forward two guests on one switch (`--switch`): ib_send_bw 64 B and
          ib_write_bw 64 KiB through it; packets per second the switch
          forwarded and the server's CPU time per forwarded packet
  boot    eight guests on one switch: seconds from QEMU's start until every
          port is Init, and until Active with opafm started at Init

Targets (issue 14): 256 nodes Active within 60 s of opafm's start; 8 guests
Active within 90 s of boot on this 2-core machine. Absolute figures drift
from day to day with the machine's load.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.fabric import cpu_seconds
from images.lab.fabric import ACTIVE, INIT, Fabric, parse_perftest
from images.lab.process import run_directory
from images.lab.wait import wait_until

SWEEP_NODES = (2, 8, 64, 256)
TARGETS = {"256 nodes Active after opafm's start": (60.0, "s"), "8 guests Active after boot": (90.0, "s")}


def switch_of(fabric: Fabric) -> dict:
    (switch,) = fabric.server.ctl("query")["switches"]
    return switch


def every_node_active(fabric: Fabric) -> bool:
    """Every cabled port the server knows of Active: switches', simulated HFIs', guests'."""
    reply = fabric.server.ctl("query")
    nodes = reply.get("switches", []) + reply.get("nodes", [])
    ports = [p for node in nodes for p in node.get("ports", []) if p.get("link")]
    return bool(ports) and all(p["state"] == "ACTIVE" for p in ports) and \
        fabric.port_states() == [ACTIVE] * len(fabric.guests)


def forward(workdir: Path, seconds_per_tool: int) -> dict:
    print("forward: two guests on one switch", flush=True)
    with Fabric.launch(workdir / "forward", server_args=["--switch", "--stats", str(workdir / "forward.json"),
                                                         "--control", str(workdir / "forward.sock")]) as fabric:
        fabric.wait_ports(INIT, timeout=600)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE, timeout=600)
        results = {}
        for name, command, key in (("ib_send_bw 64 B", "ib_send_bw -F -s 64 -D {s}", "bw_avg_mib_s"),
                                   ("ib_write_bw 64 KiB", "ib_write_bw -F -s 65536 -D {s}", "bw_avg_mib_s")):
            forwarded, cpu, started = switch_of(fabric)["forwarded"], cpu_seconds(fabric.server.process.pid), \
                time.monotonic()
            run = fabric.run_pair(command.format(s=seconds_per_tool), timeout=600)
            rows = parse_perftest(run.client.stdout)
            if not run.ok or not rows:
                raise RuntimeError(f"{name} failed:\n{run.explain()}")
            elapsed = time.monotonic() - started
            packets = switch_of(fabric)["forwarded"] - forwarded
            used = cpu_seconds(fabric.server.process.pid) - cpu
            results[name] = {"mib_s": rows[0][key], "pps": packets / elapsed,
                             "cpu_us_per_packet": used / max(packets, 1) * 1e6, "packets": packets}
            print(f"  {name:<20} {rows[0][key]:>9.2f} MiB/s  {packets / elapsed:>9.0f} packets/s through the "
                  f"switch  {used / max(packets, 1) * 1e6:>6.0f} us server CPU/packet", flush=True)
        return results


def boot(workdir: Path, guests: int) -> dict:
    print(f"boot: {guests} guests on one switch", flush=True)
    started = time.monotonic()
    with Fabric.launch(workdir / "boot", server_args=["--switch", "--control", str(workdir / "boot.sock")],
                       guests=guests) as fabric:
        fabric.wait_ports(INIT, timeout=900)
        init = time.monotonic() - started
        fabric.start_subnet_manager()
        wait_until(lambda: every_node_active(fabric), 900, f"all {guests} guests' ports Active")
        active = time.monotonic() - started
    print(f"  Init {init:.1f} s, Active {active:.1f} s after QEMU started", flush=True)
    return {"init_s": init, "active_s": active}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", type=int, default=8, help="guests for the boot figure (default 8)")
    parser.add_argument("--seconds", type=int, default=10, help="seconds per forwarding test")
    parser.add_argument("--keep", action="store_true", help="keep the guests' and server's logs")
    args = parser.parse_args()
    with run_directory("vfnic-bench-fabric-scale-", args.keep) as workdir:
        forwarded = forward(workdir, args.seconds)
        booted = boot(workdir, args.guests)
    print("\nA switched fabric: TCG guests (1 vCPU each), one vfnic serve")
    for name, r in forwarded.items():
        print(f"  forward {name:<20} {r['pps']:>9.0f} packets/s  {r['cpu_us_per_packet']:>6.0f} us CPU/packet")
    print(f"  boot    {args.guests} guests: every port Init {booted['init_s']:.1f} s, Active {booted['active_s']:.1f} s")
    figures = {"8 guests Active after boot": booted["active_s"] if args.guests == 8 else None}
    for name, (limit, unit) in TARGETS.items():
        value = figures.get(name)
        verdict = "not measured" if value is None else ("met" if value <= limit else "NOT met")
        shown = "" if value is None else f" ({value:.1f} {unit})"
        print(f"target {name} within {limit:.0f} {unit}: {verdict}{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
