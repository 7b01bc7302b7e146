"""PSM2 and MPI between two guests: vfnic's native Omni-Path path against
verbs on the same fabric and against MPI over the guests' virtio-net link.

Measured in one run, between the same two guests (Debian trixie, TCG,
1 vCPU each): one `vfnic serve --device hfi1` with two sockets (two HFIs
cabled back to back), rdma-core's NAME_KERNEL naming policy so that PSM2
finds `hfi1_0` (docs/psm2.md), opafm bringing both ports Active; client or
rank 0 in guest 0, server or rank 1 in guest 1.

  PSM2      fi_pingpong -p psm2 -e rdm (libfabric's psm2 provider over
            Debian's libpsm2): 8 B latency (usec/xfer, half a round trip),
            1 MiB bandwidth, without -c as perftest checks nothing; and
            1 MiB once more with -c, fabtests' byte-by-byte fill and check
            of every message (the guest tests' check), shown beside it
  MPI/PSM2  NetPIPE (NPopenmpi) over Open MPI, --mca pml cm --mca mtl psm2:
            latency at 1 B, bandwidth at 1 MiB
  verbs     perftest on the same fabric and devices: ib_send_lat 2 B,
            ib_write_bw 1 MiB
  MPI/TCP   NetPIPE over Open MPI, --mca pml ob1 --mca btl tcp,self on the
            guests' virtio-net interface (btl_tcp_if_include)

and, from the chip's counters (`vfnic serve --stats`: per receive context,
`expected`), how many of the packets of the 1 MiB runs the receiving chips
placed straight into the receiver's pages through expected (TID) entries.

Targets: PSM2 8 B latency at most 0.5x ib_send_lat; PSM2 1 MiB bandwidth at
least 1x ib_write_bw; MPI over PSM2 at 1 MiB at least 2x MPI over TCP on
virtio-net. fi_pingpong and NetPIPE are ping-pongs (one message in flight),
ib_write_bw streams: the bandwidth comparison is the issue's, stated as is.
Bandwidths are in MiB/s (2^20 bytes per second). The machine's absolute
figures drift from day to day: only the ratios of one run mean anything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from images.lab.fabric import ACTIVE, INIT, Fabric, parse_perftest
from images.lab.process import run_directory
from images.lab.psm2 import (
    NETPIPE,
    expected_packets,
    fi_pingpong,
    install_mpi_launcher,
    keep_kernel_names,
    mpirun,
    parse_fi_pingpong,
    parse_netpipe,
)

MIB = 1 << 20
#: what each row compares: (ours, theirs, unit, target text, is the target met at this ratio)
TARGETS = [
    ("PSM2 fi_pingpong 8 B", "ib_send_lat 2 B", "us", "at most 0.5x", lambda r: r <= 0.5),
    ("PSM2 fi_pingpong 1 MiB", "ib_write_bw 1 MiB", "MiB/s", "at least 1x", lambda r: r >= 1.0),
    ("MPI/PSM2 NetPIPE 1 MiB", "MPI/TCP NetPIPE 1 MiB", "MiB/s", "at least 2x", lambda r: r >= 2.0),
]
#: rows shown beside the targets, for the picture
CONTEXT_ROWS = [("MPI/PSM2 NetPIPE 1 B", "MPI/TCP NetPIPE 1 B", "us"),
                ("PSM2 fi_pingpong -c 1 MiB", "ib_write_bw 1 MiB", "MiB/s")]


class BenchmarkError(RuntimeError):
    """A tool failed or printed nothing to read (with its output)."""


def link_packets(stats: dict) -> int:
    """Packets both directions of the one link carried so far."""
    link = next(iter(stats.values()))["port"]["link"]
    return sum(v["packets"] for k, v in link.items() if "->" in k)


class ChipCounters:
    """Expected-receive placements and link packets between two readings of
    the server's statistics."""

    def __init__(self, fabric: Fabric):
        self.fabric = fabric
        self.expected, self.packets = sum(expected_packets(fabric)), link_packets(fabric.server.stats())

    def since(self) -> dict:
        return {"expected": sum(expected_packets(self.fabric)) - self.expected,
                "packets": link_packets(self.fabric.server.stats()) - self.packets}


def psm2_pingpong(fabric: Fabric, size: int, iterations: int, check: bool = False) -> dict:
    run = fi_pingpong(fabric, size, iterations, timeout=900, check=check)
    row = parse_fi_pingpong(run.client.stdout)
    if not run.ok or not row or row["acked"] != iterations:
        raise BenchmarkError(f"fi_pingpong -p psm2 {size} B failed:\n{run.explain()}")
    return row


def netpipe(fabric: Fabric, transport: str) -> list[dict]:
    run = mpirun(fabric, NETPIPE, transport=transport, timeout=1800)
    rows = parse_netpipe(run.stdout + run.stderr)  # NetPIPE prints its rows on stderr
    if not run.ok or not rows or rows[-1]["bytes"] != MIB:
        raise BenchmarkError(f"NetPIPE over {transport} failed ({run.rc}):\n{run.stdout}{run.stderr}")
    return rows


def perftest(fabric: Fabric, command: str, key: str) -> float:
    run = fabric.run_pair(command, timeout=900)
    rows = parse_perftest(run.client.stdout)
    if not run.ok or not rows:
        raise BenchmarkError(f"{command} failed:\n{run.explain()}")
    return rows[0][key]


def mib_s(bytes_per_second: float) -> float:
    return bytes_per_second / MIB


def measure(workdir: Path, lat_iters: int, bw_iters: int) -> tuple[dict, dict]:
    """The figures, by row name, and the chip's counters of the 1 MiB runs."""
    figures, counters = {}, {}

    def show(name: str, value: float, unit: str) -> None:
        figures[name] = value
        print(f"  {name:<27} {value:>10.2f} {unit}", flush=True)

    with Fabric.launch(workdir, server_args=["--stats", str(workdir / "stats.json")]) as fabric:
        print("two guests, two emulated HFIs back to back; NAME_KERNEL naming (hfi1_0), opafm", flush=True)
        fabric.wait_ports(INIT)
        keep_kernel_names(fabric)  # reloads hfi1: the ports come back to Init
        fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        install_mpi_launcher(fabric)

        print("PSM2: fi_pingpong -p psm2 -e rdm", flush=True)
        row = psm2_pingpong(fabric, 8, lat_iters)
        show("PSM2 fi_pingpong 8 B", row["usec_per_xfer"], "us")
        for check, name in ((False, "PSM2 fi_pingpong 1 MiB"), (True, "PSM2 fi_pingpong -c 1 MiB")):
            reading = ChipCounters(fabric)
            row = psm2_pingpong(fabric, MIB, bw_iters, check=check)
            counters[name] = reading.since()
            show(name, mib_s(row["mb_s"] * 1e6), "MiB/s")  # fabtests' MB is 10^6 bytes

        print("verbs on the same fabric: perftest", flush=True)
        show("ib_send_lat 2 B", perftest(fabric, f"ib_send_lat -F -s 2 -n {lat_iters}", "t_typical_us"), "us")
        show("ib_write_bw 1 MiB", perftest(fabric, f"ib_write_bw -F -s {MIB} -n {bw_iters}", "bw_avg_mib_s"),
             "MiB/s")

        for transport, label in (("psm2", "MPI/PSM2"), ("tcp", "MPI/TCP")):
            print(f"NetPIPE over Open MPI: {label}", flush=True)
            reading = ChipCounters(fabric)
            rows = netpipe(fabric, transport)
            counters[f"{label} NetPIPE"] = reading.since()
            show(f"{label} NetPIPE {rows[0]['bytes']} B", rows[0]["usec"], "us")
            show(f"{label} NetPIPE 1 MiB", mib_s(rows[-1]["mbps"] * 1e6 / 8), "MiB/s")
    return figures, counters


def report(figures: dict, counters: dict) -> list[bool]:
    """Print the table, the chip's counters and the targets; whether each target is met."""
    print("\nPSM2 and MPI between two TCG guests (1 vCPU each), vfnic, same run")
    print(f"{'vfnic':<27}{'':>10}  {'against':<22}{'':>10}{'unit':>7}{'ratio':>9}")
    verdicts = []
    rows = [(ours, theirs, unit, None) for ours, theirs, unit in CONTEXT_ROWS]
    rows += [(ours, theirs, unit, (text, met)) for ours, theirs, unit, text, met in TARGETS]
    for ours, theirs, unit, target in rows:
        a, b = figures[ours], figures[theirs]
        ratio = a / b if b else float("inf")
        print(f"{ours:<27}{a:>10.2f}  {theirs:<22}{b:>10.2f}{unit:>7}{ratio:>8.2f}x")
        if target:
            text, met = target
            verdicts.append((f"target: {ours} {text} {theirs}: {ratio:.2f}x", met(ratio)))
    print("\nexpected receive (the chips' counters): packets placed through TIDs, of the link's packets")
    for what, counted in counters.items():
        share = counted["expected"] / counted["packets"] if counted["packets"] else 0.0
        print(f"  {what:<27} {counted['expected']:>8} of {counted['packets']:>8} ({share:.0%})")
    print()
    for text, met in verdicts:
        print(f"{text}: {'MET' if met else 'NOT MET'}")
    return [met for _text, met in verdicts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lat-iters", type=int, default=500, help="round trips of the latency tests")
    parser.add_argument("--bw-iters", type=int, default=50, help="1 MiB messages of the bandwidth tests")
    parser.add_argument("--keep", action="store_true", help="keep the guests' and server's logs")
    args = parser.parse_args()
    with run_directory("vfnic-bench-psm2-", args.keep) as workdir:
        figures, counters = measure(workdir, args.lat_iters, args.bw_iters)
    report(figures, counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
