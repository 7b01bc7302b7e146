"""Soak, the short version CI runs (benchmarks/soak runs the long one): a test
farm's server outlives its guests. Each cycle boots a guest against the same
`vfnic serve --device hfi1`, waits until the guest's own hfi1 reports port 1
Init, and SIGKILLs that guest's QEMU mid-life; the server must take the next
guest as if it were the first, without growing file descriptors or memory.

VFNIC_SOAK_QEMU_CYCLES sets the count (default 10).
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from images.fabric import rdma_device, wait_port_state
from images.server import VfnicServer
from images.wait import wait_until

pytestmark = pytest.mark.guest

CYCLES = int(os.environ.get("VFNIC_SOAK_QEMU_CYCLES", "10"))


def server_footprint(server: VfnicServer) -> tuple[int, int]:
    """(open file descriptors, resident KiB) of the server process."""
    pid = server.process.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return fds, rss


def sigkill_cycles(lab, server: VfnicServer, cycles: int, report) -> list[tuple[int, int]]:
    footprints = []
    for cycle in range(1, cycles + 1):
        started = time.monotonic()
        guest = lab.guest(server)
        device = rdma_device(guest, 180.0)  # hfi1 autoloads, as on real hardware
        wait_port_state(guest, device, "2: INIT", 180.0)
        guest.process.send_signal(signal.SIGKILL)
        guest.process.wait(timeout=30)
        guest.close()
        wait_until(lambda: server.ctl("query")["devices"][0]["state"] == "listening", 30.0,
                   "the server to notice the dead client and listen again")
        footprints.append(server_footprint(server))
        report(cycle, time.monotonic() - started, footprints[-1])
    return footprints


def test_a_server_serves_guest_after_guest_whose_qemu_was_sigkilled(lab, report_figure):
    server = lab.server("hfi1", args=("--control", str(lab.socket_dir / "control.sock")))
    lines = []
    footprints = sigkill_cycles(lab, server, CYCLES, lambda cycle, seconds, footprint: lines.append(
        f"cycle {cycle}: Init in {seconds:.0f} s, server {footprint[0]} fds, {footprint[1]} KiB RSS"))
    assert server.process.poll() is None, "the server outlived every guest"
    reference = footprints[max(0, CYCLES // 10 - 1)] if CYCLES >= 10 else footprints[0]
    last = footprints[-1]
    report_figure(f"soak: {CYCLES} SIGKILLed guests, each to Init; server fds {reference[0]} -> {last[0]}, "
                  f"RSS {reference[1]} -> {last[1]} KiB")
    assert last[0] <= reference[0] * 1.1, lines
    assert last[1] <= reference[1] * 1.1, lines
