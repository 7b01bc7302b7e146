"""Long-running checks that a server outlives what its guests do to it
(guest-tests/test_soak.py runs them briefly, benchmarks/soak at length).

    sigkill_cycles   boot a guest against a running server, wait until the
                     guest's hfi1 reports the port in `state`, SIGKILL its
                     QEMU; the server's open fds and RSS after each cycle
    reload_cycles    in one guest: rmmod hfi1, modprobe hfi1, wait for the
                     port's state again; seconds per cycle
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from images.lab.fabric import rdma_device, wait_port_state
from images.lab.server import VfnicServer
from images.lab.vm import Guest
from images.lab.wait import wait_until


@dataclass
class Footprint:
    fds: int
    rss_kib: int


def footprint(pid: int) -> Footprint:
    """Open file descriptors and resident memory of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Footprint(fds, rss)


def sigkill_cycles(server: VfnicServer, start_guest: Callable[[int], Guest], cycles: int,
                   state: str = "2: INIT", report: Callable[[int, float, Footprint], None] = lambda *_: None,
                   timeout: float = 240.0) -> list[Footprint]:
    """`cycles` guests one after another against `server` (which needs a
    control socket): each boots (`start_guest(cycle)` returns it ready),
    reaches `state` on port 1, and dies by SIGKILL; once the server is
    listening again its footprint is taken."""
    prints = []
    for cycle in range(1, cycles + 1):
        started = time.monotonic()
        guest = start_guest(cycle)
        try:
            wait_port_state(guest, rdma_device(guest, timeout), state, timeout)
            guest.process.send_signal(signal.SIGKILL)
            guest.process.wait(timeout=30)
        finally:
            guest.close()
        wait_until(lambda: all(d["state"] == "listening" for d in server.ctl("query")["devices"]), 30.0,
                   "the server to notice the dead client and listen again")
        prints.append(footprint(server.process.pid))
        report(cycle, time.monotonic() - started, prints[-1])
    return prints


def reload_cycles(guest: Guest, cycles: int, state: str, report: Callable[[int, float], None] = lambda *_: None,
                  timeout: float = 180.0) -> list[float]:
    """rmmod hfi1 and modprobe it again `cycles` times, each until port 1 is
    back in `state`; seconds per cycle."""
    seconds = []
    for cycle in range(1, cycles + 1):
        started = time.monotonic()
        guest.run("rmmod hfi1", timeout=timeout, check=True)
        guest.run("modprobe hfi1", timeout=timeout, check=True)
        wait_port_state(guest, rdma_device(guest, timeout), state, timeout)
        seconds.append(time.monotonic() - started)
        report(cycle, seconds[-1])
    return seconds


#: the control connection the footprint's own `ctl query` used may still be
#: closing on the server's side when the fds are counted
FD_SLACK = 1


def within(later: Footprint, reference: Footprint, margin: float = 0.10) -> bool:
    """Did fds and RSS grow by at most `margin` since `reference`? (fds: or
    by FD_SLACK, since ten-odd fds make one fd more than 10 %)"""
    fds_ok = later.fds <= max(reference.fds * (1 + margin), reference.fds + FD_SLACK)
    return fds_ok and later.rss_kib <= reference.rss_kib * (1 + margin)


def guest_factory(image, qemu, server: VfnicServer, workdir: Path, **options) -> Callable[[int], Guest]:
    """Guests attached to `server`'s sockets, each in its own directory."""
    def start(cycle: int) -> Guest:
        guest = Guest(server.sockets, image=image, qemu=qemu, workdir=workdir / f"guest{cycle}",
                      name=f"guest{cycle}", **options)
        guest.start()
        guest.wait_ready()
        guest.install_helpers()
        return guest
    return start
