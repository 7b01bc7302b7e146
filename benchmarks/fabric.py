"""RDMA between two guests: vfnic's emulated Omni-Path fabric against Soft-RoCE.

Measured in one run, the same two guest images (Debian trixie, TCG, 1 vCPU
each, the same QEMU), one after the other:

  vfnic   one `vfnic serve --device hfi1` with two sockets (two HFIs cabled
          back to back); hfi1 in each guest; opafm brings the ports Active
  rxe     no emulated device; `rdma_rxe` over each guest's virtio-net link
          (the management link the vfnic run also has), default MTU

perftest between the guests, client in guest 0, server in guest 1:
  ib_write_bw (RC, 64 KiB), ib_send_bw (RC, 64 KiB), ib_send_lat (2 B),
  ib_write_lat (2 B)
and, for vfnic, the server's CPU time per packet carried (its user + system
time over the packets both directions of the link counted).

Scheduling: `vfnic serve --vcpu-sched` (emulator/tuning.py) may make the
guests' vCPU threads SCHED_IDLE; unless it is `host`, the Soft-RoCE guests'
vCPUs are made SCHED_IDLE too (for `auto`, for the whole run: Soft-RoCE has
no DMA rate to follow), so that both run under the same scheduling.

Targets (issue 15): ib_write_bw at least 5x rxe; ib_send_lat at most 1.0x
rxe (stretch: 0.5x). The
machine's absolute figures drift from day to day: only the ratios of one run
mean anything.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from emulator import tuning
from images.lab.fabric import ACTIVE, INIT, Fabric, parse_perftest
from images.lab.process import run_directory
from images.lab.vm import Guest, ManagementPort

TOOLS = {  # name: (command, value, unit, higher is better)
    "ib_write_bw 64 KiB": ("ib_write_bw -F -s 65536 -n {bw_iters}", "bw_avg_mib_s", "MiB/s", True),
    "ib_send_bw 64 KiB": ("ib_send_bw -F -s 65536 -n {bw_iters}", "bw_avg_mib_s", "MiB/s", True),
    "ib_send_lat 2 B": ("ib_send_lat -F -s 2 -n {lat_iters}", "t_typical_us", "us", False),
    "ib_write_lat 2 B": ("ib_write_lat -F -s 2 -n {lat_iters}", "t_typical_us", "us", False),
}
#: issue 15's targets (name: [(what, met?)]); the 0.5x latency is its stretch
TARGETS = {"ib_write_bw 64 KiB": [("at least 5x rxe", lambda r: r >= 5.0)],
           "ib_send_lat 2 B": [("at most 1.0x rxe", lambda r: r <= 1.0),
                               ("stretch: at most 0.5x rxe", lambda r: r <= 0.5)]}


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def link_packets(stats: dict) -> int:
    link = next(iter(stats.values()))["port"]["link"]
    return sum(v["packets"] for k, v in link.items() if "->" in k)


def run_tools(fabric: Fabric, iterations: dict, extra: str = "", server_pid: int | None = None) -> dict:
    results = {}
    for name, (command, key, _unit, _higher) in TOOLS.items():
        before = (cpu_seconds(server_pid), link_packets(fabric.server.stats())) if server_pid else None
        run = fabric.run_pair(f"{command.format(**iterations)} {extra}".strip(), timeout=900)
        rows = parse_perftest(run.client.stdout)
        if not run.ok or not rows:
            raise RuntimeError(f"{name} failed:\n{run.explain()}")
        results[name] = {"value": rows[0][key]}
        if before:
            cpu, packets = cpu_seconds(server_pid) - before[0], link_packets(fabric.server.stats()) - before[1]
            results[name]["cpu_us_per_packet"] = cpu / max(packets, 1) * 1e6
            results[name]["packets"] = packets
        print(f"  {name:<20} {rows[0][key]:>10.2f} {TOOLS[name][2]}", flush=True)
    return results


def vfnic(workdir: Path, iterations: dict, vcpu_sched: str | None, server_args: list[str] = ()) -> dict:
    extra = [*(["--vcpu-sched", vcpu_sched] if vcpu_sched else []), *server_args]
    print("vfnic: two guests, two emulated HFIs back to back, opafm"
          + (f"; vfnic serve {' '.join(extra)}" if extra else ""), flush=True)
    stats = workdir / "stats.json"
    args = ["--stats", str(stats), *extra]
    with Fabric.launch(workdir / "vfnic", server_args=args) as fabric:
        fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        return run_tools(fabric, iterations, server_pid=fabric.server.process.pid)


def rxe(workdir: Path, iterations: dict, idle_vcpus: bool) -> dict:
    print("rxe: the same two guests, Soft-RoCE over their virtio-net link"
          + ("; their vCPUs SCHED_IDLE, as vfnic's were" if idle_vcpus else ""), flush=True)
    vcpus = tuning.ClientVcpus("idle" if idle_vcpus else "host")
    socket_dir = Path(tempfile.mkdtemp(prefix="vfnic-rxe-", dir="/tmp"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, socket_dir, True)
        guests = []
        for i, end in enumerate(ManagementPort.pair(socket_dir)):
            guest = Guest([], workdir=workdir / "rxe" / f"guest{i}", name=f"guest{i}", management=end)
            stack.callback(guest.close)
            guests.append(guest.start())
        for guest in guests:
            guest.wait_ready()
            vcpus.attach(guest.process.pid)
            guest.run(f"modprobe rdma_rxe && rdma link add rxe0 type rxe netdev {guest.management_nic}",
                      timeout=120, check=True)
        fabric = Fabric(None, guests)
        fabric.devices = ["rxe0", "rxe0"]
        for guest in guests:  # rxe registers its IPv4 GID a moment after the link is added
            guest.run("for i in $(seq 100); do grep -q ffff /sys/class/infiniband/rxe0/ports/1/gids/1 && exit 0; "
                      "sleep 0.1; done; exit 1", check=True)
        # RoCE v2 over IPv4: GID index 1 is the address of the management NIC
        return run_tools(fabric, iterations, extra="-x 1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bw-iters", type=int, default=800, help="messages per bandwidth test")
    parser.add_argument("--lat-iters", type=int, default=500, help="round trips per latency test")
    parser.add_argument("--keep", action="store_true", help="keep the guests' and server's logs")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="a further `vfnic serve` argument (--server-arg=--option --server-arg=mmap=pio)")
    parser.add_argument("--vcpu-sched", choices=tuning.VCPU_SCHED_CHOICES,
                        help="vfnic serve's --vcpu-sched (default: its default); unless host, the Soft-RoCE "
                             "guests' vCPUs are made SCHED_IDLE too, so both run under the same scheduling")
    args = parser.parse_args()
    iterations = {"bw_iters": args.bw_iters, "lat_iters": args.lat_iters}
    with run_directory("vfnic-bench-fabric-", args.keep) as workdir:
        sched = args.vcpu_sched or tuning.DEFAULT_VCPU_SCHED
        ours = vfnic(workdir, iterations, args.vcpu_sched, args.server_arg)
        theirs = rxe(workdir, iterations, idle_vcpus=sched != "host")
    print("\nRDMA between two TCG guests (1 vCPU each), vfnic against Soft-RoCE, same run")
    print(f"{'test':<20}{'vfnic':>12}{'rxe':>12}{'unit':>7}{'ratio':>9}  {'vfnic CPU/packet':>17}")
    verdicts = []
    for name, (_command, _key, unit, _higher) in TOOLS.items():
        a, b = ours[name]["value"], theirs[name]["value"]
        ratio = a / b if b else float("inf")
        cpu = ours[name].get("cpu_us_per_packet")
        print(f"{name:<20}{a:>12.2f}{b:>12.2f}{unit:>7}{ratio:>8.2f}x  {cpu:>13.0f} us"
              f"  ({ours[name]['packets']} packets)")
        for text, met in TARGETS.get(name, ()):
            verdicts.append(f"target {name}: {text}: {'met' if met(ratio) else 'NOT met'} ({ratio:.2f}x)")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
