"""Upper-layer protocols between two guests: vfnic's fabric against the
guests' virtio-net link, in one run, between the same two guests.

  iperf3 (TCP, 10 s, guest 0 -> guest 1)
      over IPoIB datagram mode (hfi1's AIP), over IPoIB connected mode
      (MTU 65520), and over the virtio-net link both guests also have
  fio against a 128 MiB RAM disk exported by guest 1, from guest 0
      NVMe over Fabrics, RDMA transport, over vfnic (nvmet-rdma / nvme-rdma)
      NVMe/TCP over the virtio-net link (nvmet-tcp / nvme-tcp)
      sequential 128 KiB write and read (iodepth 8), random 4 KiB read IOPS
      (iodepth 16), O_DIRECT, libaio

Targets: IPoIB connected-mode iperf3 at least 1x virtio-net TCP and
NVMe-oF/RDMA 4 KiB random read IOPS at least 1x NVMe/TCP (issue 15);
NVMe-oF/RDMA sequential throughput (read and write) at least 1x NVMe/TCP. The guests are
TCG with 1 vCPU each and share the host's two cores with the server: only
the ratios of one run mean anything.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from images.lab import ulp
from images.lab.fabric import ACTIVE, INIT, Fabric

FIO_JOBS = {  # name: (fio arguments, what to read from its JSON, unit)
    "seq write 128 KiB": ("--rw=write --bs=128k --iodepth=8 --size=96M", ("write", "bw"), "MiB/s"),
    "seq read 128 KiB": ("--rw=read --bs=128k --iodepth=8 --size=96M", ("read", "bw"), "MiB/s"),
    "rand read 4 KiB": ("--rw=randread --bs=4k --iodepth=16 --size=96M --runtime={seconds} --time_based",
                        ("read", "iops"), "IOPS"),
}


def fio(guest, device: str, seconds: int) -> dict:
    results = {}
    for name, (args, (direction, key), _unit) in FIO_JOBS.items():
        out = ulp.check(guest, f"fio --name=bench --filename={device} --direct=1 --ioengine=libaio "
                               f"{args.format(seconds=seconds)} --output-format=json", timeout=900)
        job = json.loads(out[out.index("{"):])["jobs"][0][direction]
        results[name] = job[key] / 1024 if key == "bw" else job[key]  # fio's bw is KiB/s
        print(f"  {name:<22} {results[name]:>10.1f} {FIO_JOBS[name][2]}", flush=True)
    return results


def measure(workdir: Path, seconds: int) -> dict:
    figures = {}
    with Fabric.launch(workdir, server_args=["--stats", str(workdir / "stats.json")]) as fabric:
        fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        a, b = fabric.guests
        interfaces = [ulp.configure_ipoib(guest, i) for i, guest in enumerate(fabric.guests)]
        print("iperf3, guest 0 -> guest 1", flush=True)
        figures["iperf3 virtio-net TCP"] = ulp.iperf3(b, a, b.management.ip, seconds).receiver_mbit_s
        figures["iperf3 IPoIB datagram"] = ulp.iperf3(b, a, ulp.IPOIB_V4[1], seconds).receiver_mbit_s
        for guest, ifname in zip(fabric.guests, interfaces):
            ulp.set_ipoib_mode(guest, ifname, "connected")
        figures["iperf3 IPoIB connected"] = ulp.iperf3(b, a, ulp.IPOIB_V4[1], seconds).receiver_mbit_s
        for name in ("iperf3 virtio-net TCP", "iperf3 IPoIB datagram", "iperf3 IPoIB connected"):
            print(f"  {name:<24} {figures[name]:>8.1f} Mbit/s", flush=True)

        disk = ulp.ram_disk(b, 128)
        ulp.nvmet_export(b, disk, "tcp", b.management.ip, nqn="bench", port_id=1)
        ulp.nvmet_export(b, disk, "rdma", ulp.IPOIB_V4[1], nqn="bench", port_id=2)
        for transport, address, label in (("tcp", b.management.ip, "NVMe/TCP virtio-net"),
                                          ("rdma", ulp.IPOIB_V4[1], "NVMe-oF/RDMA vfnic")):
            print(f"fio, {label}", flush=True)
            device = ulp.nvme_connect(a, transport, address, nqn="bench")
            try:
                for job, value in fio(a, device, seconds).items():
                    figures[f"{label}: {job}"] = value
            finally:
                ulp.nvme_disconnect(a, nqn="bench")
    return figures


def report(figures: dict) -> None:
    rows = [("iperf3 IPoIB datagram", "iperf3 virtio-net TCP", "Mbit/s"),
            ("iperf3 IPoIB connected", "iperf3 virtio-net TCP", "Mbit/s")]
    rows += [(f"NVMe-oF/RDMA vfnic: {job}", f"NVMe/TCP virtio-net: {job}", unit)
             for job, (_args, _key, unit) in FIO_JOBS.items()]
    print("\nUpper-layer protocols between two TCG guests (1 vCPU each), vfnic against virtio-net, same run")
    print(f"{'test':<40}{'vfnic':>10}{'virtio-net':>12}{'unit':>8}{'ratio':>8}")
    ratios = {}
    for ours, theirs, unit in rows:
        ratio = figures[ours] / figures[theirs] if figures[theirs] else float("inf")
        ratios[ours] = ratio
        print(f"{ours:<40}{figures[ours]:>10.1f}{figures[theirs]:>12.1f}{unit:>8}{ratio:>7.2f}x")
    print()
    targets = [("IPoIB connected-mode iperf3 at least 1x virtio-net TCP (issue 15)",
                ratios["iperf3 IPoIB connected"]),
               ("NVMe-oF/RDMA 4 KiB random read IOPS at least 1x NVMe/TCP (issue 15)",
                ratios["NVMe-oF/RDMA vfnic: rand read 4 KiB"]),
               ("NVMe-oF/RDMA sequential write at least 1x NVMe/TCP",
                ratios["NVMe-oF/RDMA vfnic: seq write 128 KiB"]),
               ("NVMe-oF/RDMA sequential read at least 1x NVMe/TCP",
                ratios["NVMe-oF/RDMA vfnic: seq read 128 KiB"])]
    for what, ratio in targets:
        print(f"target: {what}: {ratio:.2f}x, {'met' if ratio >= 1.0 else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="iperf3 and random-read duration")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vfnic-bench-ulp-"))
    report(measure(workdir, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
