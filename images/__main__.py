"""`python -m images`: provision guests, or boot one and show a device.

    python -m images provision          QEMU, guest image and helpers (idempotent)
    python -m images demo [DEVICE]      vfnic serve + a guest; print what it sees (hfi1)
    python -m images demo testdev --run "lspci -nn"
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

from images.debian import ProvisionError
from images.guest import build
from images.helpers import compile_static, mmio_helper
from images.process import log_tail
from images.qemu import Qemu, QemuError
from images.server import ServerError, VfnicServer
from images.vm import AgentError, Guest, VfioUserDevice
from images.wait import DeadlineExceeded

log = logging.getLogger("vfnic.images")

#: What `demo` runs in the guest to show each device (a test device's view
#: is lspci; a NIC's is its verbs view too).
DEVICE_SHOW_COMMANDS = {
    "testdev": ["lspci -vvv -nn -d 1234:11f0"],
    "hfi1": ["lspci -vvv -nn -d 8086:24f0", "ibv_devinfo -v", "opainfo"],
}
EXPECTED_FAILURES = (ProvisionError, QemuError, ServerError, AgentError, DeadlineExceeded)


def provision() -> tuple[Qemu, Path]:
    started = time.monotonic()
    qemu = Qemu.locate()
    image = build()
    mmio_helper()
    compile_static("vfnic-initrd-init.c")
    disk = image.disk.stat()
    print(f"images: QEMU {qemu.version} ({qemu.origin}); guest {image.directory.name}: kernel "
          f"{image.kernel_version}, disk {disk.st_blocks * 512 >> 20} MiB used of "
          f"{disk.st_size >> 20} MiB (provisioning took {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return qemu, image.directory


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m images", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("provision", help="build or check QEMU, the guest image and helpers")
    show = commands.add_parser("demo", help="boot a guest attached to `vfnic serve` and show the device")
    show.add_argument("device", nargs="?", default="hfi1")
    show.add_argument("--run", action="append", metavar="COMMAND", help="run this instead (repeatable)")
    show.add_argument("--keep", action="store_true", help="keep the logs even on success")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="images: %(message)s", stream=sys.stderr)
    try:
        if args.command == "provision":
            provision()
            return 0
        if not args.run and args.device not in DEVICE_SHOW_COMMANDS:
            parser.error(f"no show commands for {args.device!r} (known: "
                         f"{', '.join(DEVICE_SHOW_COMMANDS)}); pass --run COMMAND")
        return demo(args.device, args.run or DEVICE_SHOW_COMMANDS[args.device], args.keep)
    except EXPECTED_FAILURES as error:
        print(f"images: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
