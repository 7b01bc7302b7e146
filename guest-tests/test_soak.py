"""Soak, the short version CI runs (benchmarks/soak runs the long one): a test
farm's server outlives its guests. Each cycle boots a guest against the same
`vfnic serve --device hfi1`, waits until the guest's own hfi1 reports port 1
Init, and SIGKILLs that guest's QEMU mid-life; the server must take the next
guest as if it were the first, without growing file descriptors or memory.

VFNIC_SOAK_QEMU_CYCLES sets the count (default 10).
"""
from __future__ import annotations

import os

import pytest

from images.lab.soak import guest_factory, sigkill_cycles, within

pytestmark = pytest.mark.guest

CYCLES = int(os.environ.get("VFNIC_SOAK_QEMU_CYCLES", "10"))


def test_a_server_serves_guest_after_guest_whose_qemu_was_sigkilled(lab, guest_platform, report_figure):
    server = lab.server("hfi1", args=("--control", str(lab.socket_dir / "control.sock")))
    lines = []
    prints = sigkill_cycles(
        server, guest_factory(guest_platform.image, guest_platform.qemu, server, lab.directory), CYCLES,
        report=lambda cycle, seconds, fp: lines.append(f"cycle {cycle}: Init in {seconds:.0f} s, "
                                                       f"server {fp.fds} fds, {fp.rss_kib} KiB RSS"))
    assert server.process.poll() is None, "the server outlived every guest"
    reference, last = prints[max(0, CYCLES // 10 - 1)], prints[-1]
    report_figure(f"soak: {CYCLES} SIGKILLed guests, each to Init; server fds {reference.fds} -> {last.fds}, "
                  f"RSS {reference.rss_kib} -> {last.rss_kib} KiB")
    assert within(last, reference), lines
