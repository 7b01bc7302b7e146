"""`vfnic up` as a user runs it: a subprocess started from a directory
outside the checkout, commands through `vfnic exec`, `vfnic down` leaving
no process (by the PIDs `up` recorded) and no socket; SIGINT at several
points of the start leaving nothing either; a developer's module that the
guest kernel refuses reported with the guest's dmesg and status 2.

The module used is the guest kernel's own hfi1 (its .ko.xz from the image's
root tree), loaded through --module: the path a developer's rebuilt hfi1.ko
takes (updates/, depmod, modprobe), with a driver known to work.
"""
from __future__ import annotations

import json
import lzma
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from images.lab.up import Recorded
from images.lab.wait import wait_until
from images.provision.guest_image import installed_kernel_version, provision_rootfs
from testkit.up import CHECKOUT, UpProcess, assert_nothing_left

pytestmark = pytest.mark.guest

def stock_hfi1() -> Path:
    tree = provision_rootfs()
    return tree / "usr/lib/modules" / installed_kernel_version(tree) / "kernel/drivers/infiniband/hw/hfi1/hfi1.ko.xz"


def test_up_exec_down_from_outside_the_checkout(places, report_figure):
    run_dir, outside = places
    module = outside / "hfi1.ko.xz"
    module.write_bytes(stock_hfi1().read_bytes())
    started = time.monotonic()
    up = UpProcess(run_dir, outside, "--guests", "2", "--module", module.name)
    try:
        state = up.wait_for(lambda s: s if s.get("phase") == "ready" else None, 480, "the fabric to be ready")
        report_figure(f"vfnic up --guests 2 --module hfi1.ko.xz: both ports Active {time.monotonic() - started:.1f} s "
                      f"after the command started")
        wait_until(lambda: "stop: Ctrl-C here" in up.output, 10, "up to print how to reach the guests")
        for guest in ("guest0", "guest1"):
            assert f"{guest}  address 10.77.0." in up.output and f"vfnic exec {guest} -- CMD" in up.output
            port = up.run("exec", guest, "--", "cat /sys/class/infiniband/*/ports/1/state")
            assert (port.returncode, port.stdout.strip()) == (0, "4: ACTIVE"), port
            origin = up.run("exec", guest, "--", "modinfo", "-n", "hfi1")
            assert "/updates/vfnic/hfi1.ko.xz" in origin.stdout, origin
        failed = up.run("exec", "guest1", "--", "ls /nonexistent; exit 3")
        assert failed.returncode == 3 and "nonexistent" in failed.stderr
        assert "control socket" in up.output
        query = up.run("ctl", state["control_socket"], "query")
        assert query.returncode == 0 and "hfi1" in query.stdout, query
        down = up.run("down")
        assert down.returncode == 0, down
        assert up.process.wait(60) == 0, up.output
        assert_nothing_left(state, run_dir)
    finally:
        up.kill()


@pytest.mark.parametrize("point", ["server started", "QEMUs started", "guests booting"])
def test_sigint_while_starting_leaves_nothing(places, point):
    run_dir, outside = places
    up = UpProcess(run_dir, outside, "--guests", "2", "--no-sm")
    conditions = {
        "server started": lambda s: any(p["what"] == "vfnic serve" for p in s.get("processes", [])),
        "QEMUs started": lambda s: sum(p["what"].startswith("QEMU") for p in s.get("processes", [])) == 2,
    }
    try:
        state = up.wait_for(lambda s: s if conditions.get(point, conditions["QEMUs started"])(s) else None, 120, point)
        if point == "guests booting":
            time.sleep(5)
            state = up.state()
        up.process.send_signal(signal.SIGINT)
        assert up.process.wait(90) == 130, up.output
        assert "interrupted" in up.output
        assert_nothing_left(state, run_dir)
    finally:
        up.kill()


SIGNATURE_MARKER = b"~Module signature appended~\n"


def unsigned(module: bytes) -> bytes:
    """The module without Debian's appended signature (as a developer's own
    build is): a changed signed module is refused for its signature alone
    ("Key was rejected by service"), an unsigned one only taints the kernel."""
    if not module.endswith(SIGNATURE_MARKER):
        return module
    signature_length, = struct.unpack_from(">I", module, len(module) - len(SIGNATURE_MARKER) - 4)
    return module[:len(module) - len(SIGNATURE_MARKER) - 12 - signature_length]


def corrupt_symbol_versions(module: bytes) -> bytes:
    """The module, unsigned, with the CRC of its first versioned symbol
    changed: the kernel refuses it ("disagrees about version of symbol")."""
    data = bytearray(unsigned(module))
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    names = struct.unpack_from("<IIQQQQ", data, shoff + shstrndx * shentsize)[4]
    for index in range(shnum):
        name, _, _, _, offset, _ = struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)
        if data[names + name:data.index(b"\0", names + name)] == b"__versions":
            data[offset] ^= 0xFF
            return bytes(data)
    raise AssertionError("no __versions section")


def test_a_module_the_guest_kernel_refuses_ends_up_with_its_dmesg_and_status_2(places):
    run_dir, outside = places
    module = outside / "hfi1.ko"
    module.write_bytes(corrupt_symbol_versions(lzma.decompress(stock_hfi1().read_bytes())))
    up = UpProcess(run_dir, outside, "--guests", "1", "--no-sm", "--module", str(module))
    try:
        assert up.process.wait(300) == 2, up.output
        assert "modprobe hfi1 failed" in up.output and "guest0's dmesg:" in up.output, up.output
        assert "disagrees about version of symbol" in up.output, up.output
        assert not (run_dir / "default").exists()
    finally:
        up.kill()


def test_up_detached_on_a_kernel_package(places):
    """`vfnic up -d --kernel linux-image-*.deb`: sid's split kernel package
    (its linux-binary- and linux-modules- packages beside it), one guest;
    `up -d` returns once the port is Init, the fabric stays until `down`."""
    from images.provision.debian import PrivateApt
    from images.provision.kernel_matrix import provision_debian_kernel
    provision_debian_kernel("sid")  # downloads the packages (cached)
    debs = sorted(p for p in PrivateApt("sid").archives.glob("linux-image-*.deb") if "-amd64_" in p.name
                  and not p.name.startswith("linux-image-amd64_"))
    assert debs, "no sid linux-image package downloaded"
    release = debs[-1].name.split("_")[0].removeprefix("linux-image-")
    run_dir, outside = places
    up = UpProcess.__new__(UpProcess)
    up.run_dir, up.cwd = run_dir, outside
    up.env = {**os.environ, "VFNIC_RUN_DIR": str(run_dir), "PYTHONPATH": str(CHECKOUT)}
    started = up.run("up", "-d", "--guests", "1", "--no-sm", "--kernel", str(debs[-1]), "--name", "deb", timeout=900)
    state = json.loads((run_dir / "deb/state.json").read_text()) if (run_dir / "deb/state.json").exists() else {}
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert "running in the background as PID" in started.stdout and f"kernel {release}" in started.stdout
        uname = up.run("exec", "--name", "deb", "guest0", "--", "uname -r; cat /sys/class/infiniband/*/ports/1/state")
        assert uname.returncode == 0 and uname.stdout.split("\n")[:2] == [release, "2: INIT"], uname
        down = up.run("down", "--name", "deb")
        assert down.returncode == 0, down
        assert_nothing_left(state, run_dir)
    finally:
        for p in state.get("processes", []) + ([state["owner"]] if "owner" in state else []):
            Recorded.from_json(p).stop()


def test_down_stops_what_a_killed_up_left(places):
    """`up` SIGKILLed while its guests boot cannot clean up: `vfnic down`
    stops its QEMUs and server by the recorded PIDs and removes its sockets
    and the guests' agent socket directories."""
    run_dir, outside = places
    up = UpProcess(run_dir, outside, "--guests", "2", "--no-sm")
    try:
        state = up.wait_for(lambda s: s if sum(p["what"].startswith("QEMU") for p in s.get("processes", [])) == 2
                            else None, 120, "both QEMUs to start")
        up.process.kill()
        up.process.wait(10)
        assert any(Recorded.from_json(p).alive() for p in state["processes"])
        down = up.run("down")
        assert down.returncode == 0 and "which `vfnic up` had left" in down.stderr, down
        assert_nothing_left(state, run_dir)
        assert not any(Path(d).exists() for d in state["directories"])
    finally:
        up.kill()
