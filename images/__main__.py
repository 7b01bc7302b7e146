"""`python -m images`: provision guests, or boot them and show a device.

    python -m images provision          QEMU, guest image and helpers (idempotent)
    python -m images demo               two guests on a two-HFI fabric: opafm brings
                                        both ports Active, then ib_write_bw between them
    python -m images demo hfi1 --run "ibv_devinfo"   (run in both guests, once Active)
    python -m images demo --guests 4    four guests on an emulated switch: opafm brings
                                        every port Active, ibv_rc_pingpong between every pair
    python -m images demo --mpi         the same two guests, then an Open MPI ping-pong
                                        over PSM2 between them (data checked)
    python -m images demo testdev --run "lspci -nn"  (one guest, one test device)
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from images.lab.fabric import ACTIVE, INIT, Fabric, FabricError, parse_perftest, parse_pingpong
from images.lab.process import log_tail
from images.lab.psm2 import PINGPONG_PATH, expected_packets, install_mpi_launcher, keep_kernel_names, mpirun
from images.lab.server import ServerError, VfnicServer
from images.lab.vm import AgentError, Guest, VfioUserDevice
from images.lab.wait import DeadlineExceeded
from images.provision.debian import ProvisionError
from images.provision.guest_image import build
from images.provision.helpers import compile_static, mmio_helper
from images.provision.qemu import Qemu, QemuError
from images.provision.tshark import provision_tshark

log = logging.getLogger("vfnic.images")

#: What `demo` runs in the guest(s) to show each device (a test device's view
#: is lspci; a NIC's is its fabric view).
DEVICE_SHOW_COMMANDS = {
    "testdev": ["lspci -vvv -nn -d 1234:11f0"],
    "hfi1": ["opainfo"],
}
#: the traffic the fabric demo shows: RDMA writes of 64 KiB, checked by perftest
DEMO_TRAFFIC = "ib_write_bw -F -s 65536 -n 300"
#: guests on the demo's switch: 1 vCPU and 1 GiB each, two cores and 24 GiB here
MAX_DEMO_GUESTS = 8
#: the MPI demo's ping-pong (images/lab/psm2.py): round trips per size, then the sizes in bytes
MPI_PINGPONG = f"{PINGPONG_PATH} 20 8 4096 65536 1048576"
EXPECTED_FAILURES = (ProvisionError, QemuError, ServerError, AgentError, DeadlineExceeded, FabricError)


def provision() -> tuple[Qemu, Path]:
    started = time.monotonic()
    qemu = Qemu.locate()
    image = build()
    mmio_helper()
    compile_static("vfnic-initrd-init.c")
    provision_tshark()  # tests/hfi1/test_capture.py's judge: the unit tier then needs no network
    disk = image.disk.stat()
    print(f"images: QEMU {qemu.version} ({qemu.origin}); guest {image.directory.name}: kernel "
          f"{image.kernel_version}, disk {disk.st_blocks * 512 >> 20} MiB used of "
          f"{disk.st_size >> 20} MiB (provisioning took {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return qemu, image.directory


def fabric_demo(commands: list[str], keep: bool, mpi: bool = False) -> int:
    """Two guests on a two-HFI fabric: hfi1 in both, opafm in one, traffic:
    ib_write_bw, or with `mpi` an Open MPI ping-pong over PSM2."""
    workdir = Path(tempfile.mkdtemp(prefix="vfnic-demo-fabric-"))
    failed = True
    try:
        started = time.monotonic()
        with Fabric.launch(workdir, server_args=["--stats", str(workdir / "stats.json")]) as fabric:
            a, b = fabric.guests
            print(f"two guests ready in {max(a.boot_seconds, b.boot_seconds):.1f} s (kernel "
                  f"{a.image.kernel_version}, {a.accel}, QEMU {a.qemu.version}); each has one emulated HFI, "
                  f"cabled back to back inside one `vfnic serve`, and a management link "
                  f"({a.management.ip} <-> {b.management.ip})")
            fabric.wait_ports(INIT)
            print(f"hfi1 bound in both guests ({', '.join(fabric.devices)}); ports Init after "
                  f"{time.monotonic() - started:.1f} s\n")
            if mpi:  # PSM2 looks for hfi1_N, which rdma-core's rule renames (docs/psm2.md)
                keep_kernel_names(fabric)
                fabric.wait_ports(INIT)
                print(f"rdma-core naming policy NAME_KERNEL in both guests, hfi1 reloaded: "
                      f"{', '.join(fabric.devices)}, ports Init again\n")
            fabric.start_subnet_manager()
            print(f"$ {a.name}: opafmd (Debian's opa-fm)")
            fabric.wait_ports(ACTIVE)
            print(f"both ports {ACTIVE} {time.monotonic() - fabric.sm_started_at:.1f} s later\n")
            run_in_every_guest(fabric, commands)
            if mpi:
                mpi_pingpong(fabric)
            else:
                run = fabric.run_pair(DEMO_TRAFFIC)
                print(f"[{b.name}]$ {run.server.command}   (server)\n[{a.name}]$ {run.client.command}")
                table = [line for line in run.client.stdout.splitlines()
                         if line.strip().startswith(("#bytes", "65536"))]
                print("\n".join(table) if run.ok else run.explain())
                rows = parse_perftest(run.client.stdout)
                if not run.ok or not rows:
                    raise FabricError("ib_write_bw did not complete")
                print(f"\nRDMA write, 64 KiB messages, guest {a.name} -> {b.name}: "
                      f"{rows[0]['bw_avg_mib_s']:.2f} MiB/s")
        failed = False
    finally:
        if failed or keep:
            print(f"logs kept in {workdir}: serve.log, guest*/console.log, guest*/qemu.log", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_in_every_guest(fabric: Fabric, commands: list[str]) -> None:
    """Each command in each guest, shown with what it printed."""
    for guest in fabric.guests:
        for command in commands:
            result = guest.run(command, timeout=120)
            print(f"[{guest.name}]$ {command}\n{result.stdout}{result.stderr}", end="")
            print("" if result.ok else f"(exit status {result.rc})\n")


def switch_demo(guests: int, commands: list[str], keep: bool) -> int:
    """`guests` guests on one emulated switch: opafm, then an all-pairs check."""
    workdir = Path(tempfile.mkdtemp(prefix="vfnic-demo-switch-"))
    failed = True
    try:
        started = time.monotonic()
        with Fabric.launch(workdir, server_args=["--switch"], guests=guests) as fabric:
            first = fabric.guests[0]
            print(f"{guests} guests ready in {max(g.boot_seconds for g in fabric.guests):.1f} s (kernel "
                  f"{first.image.kernel_version}, {first.accel}, QEMU {first.qemu.version}); each has one "
                  f"emulated HFI cabled to one emulated Omni-Path switch inside one `vfnic serve`")
            fabric.wait_ports(INIT)
            print(f"hfi1 bound in every guest ({', '.join(fabric.devices)}); ports Init after "
                  f"{time.monotonic() - started:.1f} s\n")
            fabric.start_subnet_manager()
            print(f"$ {first.name}: opafmd (Debian's opa-fm)")
            fabric.wait_ports(ACTIVE)
            print(f"every port {ACTIVE} {time.monotonic() - fabric.sm_started_at:.1f} s later\n")
            run_in_every_guest(fabric, commands)
            print("ibv_rc_pingpong -c (data checked) between every pair, through the switch:")
            for client, server in itertools.combinations(range(guests), 2):
                run = fabric.run_pair("ibv_rc_pingpong -c -n 50", server=server, client=client)
                summary = parse_pingpong(run.client.stdout + run.client.stderr)
                if not run.ok or not summary:
                    print(run.explain())
                    raise FabricError(f"ibv_rc_pingpong guest{client} -> guest{server} failed")
                print(f"  guest{client} -> guest{server}: {summary['iters']} iterations, "
                      f"{summary['usec_per_iter']:.0f} us/iter")
        failed = False
    finally:
        if failed or keep:
            print(f"logs kept in {workdir}: serve.log, guest*/console.log, guest*/qemu.log", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def mpi_pingpong(fabric: Fabric) -> None:
    """mpirun in the first guest, one rank in each, over PSM2 (pml cm, mtl
    psm2): a ping-pong of each size that compares every byte, and an
    allreduce; its latency and bandwidth, and how the 1 MiB messages
    landed (the chips' expected-receive counter)."""
    a, b = fabric.guests
    install_mpi_launcher(fabric)
    placed = sum(expected_packets(fabric))
    run = mpirun(fabric, MPI_PINGPONG, transport="psm2")
    print(f"[{a.name}]$ {run.command}")
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    if not run.ok or len(rows) < 2:
        raise FabricError(f"the MPI ping-pong did not complete (exit {run.rc}):\n{run.stdout}{run.stderr}")
    *rows, allreduce = rows
    print(f"\nOpen MPI over PSM2 (pml cm, mtl psm2), rank 0 in {a.name}, rank 1 in {b.name}, "
          f"{rows[0]['iterations']} round trips per size:")
    print(f"{'bytes':>9} {'latency (half round trip)':>27} {'bandwidth':>14} {'errors':>7}")
    for row in rows:
        print(f"{row['bytes']:>9} {row['latency_us']:>24.0f} us {row['mb_s']:>9.2f} MB/s {row['errors']:>7}")
    placed = sum(expected_packets(fabric)) - placed
    print(f"1 MiB allreduce of doubles: {allreduce['errors']} wrong elements; "
          f"{placed} packets placed straight into the receivers' pages through expected (TID) entries")
    if any(row["errors"] for row in rows) or allreduce["errors"]:
        raise FabricError("the MPI ping-pong received wrong data")


def demo(device: str, commands: list[str], keep: bool) -> int:
    """Serve `device`, boot a guest attached to it, run `commands` there."""
    workdir = Path(tempfile.mkdtemp(prefix=f"vfnic-demo-{device}-"))
    server = VfnicServer(device, [workdir / f"{device}.sock"], log=workdir / "serve.log")
    failed = True
    try:
        with server, Guest([VfioUserDevice(s) for s in server.sockets], workdir=workdir / "guest",
                           name=f"demo-{device}") as guest:
            print(f"guest ready in {guest.boot_seconds:.1f} s (kernel {guest.image.kernel_version}, "
                  f"{guest.accel}, QEMU {guest.qemu.version})\n")
            guest.settle()  # modules that follow the driver (ib_umad for opainfo...)
            for command in commands:
                result = guest.run(command, timeout=120)
                print(f"$ {command}\n{result.stdout}{result.stderr}", end="" if result.stdout else "\n")
                if not result.ok:
                    print(f"(exit status {result.rc})\n")
        failed = False
    finally:
        if failed or keep:
            print(f"logs kept in {workdir}: serve.log, guest/console.log, guest/qemu.log",
                  file=sys.stderr)
            if failed:
                print(f"serve.log ends with:\n{log_tail(server.log)}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m images", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("provision", help="build or check QEMU, the guest image and helpers")
    show = commands.add_parser("demo", help="boot a guest attached to `vfnic serve` and show the device")
    show.add_argument("device", nargs="?", default="hfi1")
    show.add_argument("--run", action="append", metavar="COMMAND", help="run this instead (repeatable)")
    show.add_argument("--keep", action="store_true", help="keep the logs even on success")
    show.add_argument("--guests", type=int, default=2,
                      help="hfi1: more than 2 puts every guest on one emulated switch (at most 8 here)")
    show.add_argument("--mpi", action="store_true",
                      help="hfi1 only: an Open MPI ping-pong over PSM2 between the guests instead of ib_write_bw")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="images: %(message)s", stream=sys.stderr)
    try:
        if args.command == "provision":
            provision()
            return 0
        if not args.run and args.device not in DEVICE_SHOW_COMMANDS:
            parser.error(f"no show commands for {args.device!r} (known: "
                         f"{', '.join(DEVICE_SHOW_COMMANDS)}); pass --run COMMAND")
        if args.mpi and args.device != "hfi1":
            parser.error(f"--mpi runs between two hfi1 guests, not {args.device!r}")
        commands = args.run or DEVICE_SHOW_COMMANDS[args.device]
        if args.guests != 2 and (args.device != "hfi1" or not 3 <= args.guests <= MAX_DEMO_GUESTS):
            parser.error(f"--guests takes 3 to {MAX_DEMO_GUESTS} guests of hfi1 (2, the default, cables two "
                         f"back to back)")
        if args.guests > 2 and args.mpi:
            parser.error("--mpi runs between the two guests of the back-to-back demo, not with --guests")
        if args.guests > 2:
            return switch_demo(args.guests, args.run or [], args.keep)
        if args.device == "hfi1":
            return fabric_demo(commands, args.keep, mpi=args.mpi)
        return demo(args.device, commands, args.keep)
    except EXPECTED_FAILURES as error:
        print(f"images: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
