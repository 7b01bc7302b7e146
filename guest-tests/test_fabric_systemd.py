"""The data-path acceptance as a user would meet it in stock Debian guests:
systemd as init, udev and rdma-core's own rules (the device is renamed),
plain PCIe root ports on pcie.0 (no NUMA expander), hfi1 autoloaded at boot;
`systemctl start opa-fm` in one guest brings both ports to 4: ACTIVE and
`ibv_rc_pingpong -c` passes between them."""
from __future__ import annotations

import time

import pytest

from images.fabric import ACTIVE, INIT, Fabric, parse_pingpong

pytestmark = pytest.mark.guest


def test_systemctl_start_opa_fm_brings_both_ports_active_and_rc_pingpong_checks_data(lab, report_figure):
    server = lab.server("hfi1", count=2)
    started = time.monotonic()
    fabric = Fabric.boot(server, lambda devices, **options: lab.guest(*devices, wait=False, **options),
                         lab.socket_dir, init="systemd", numa=False)
    assert all(name.startswith("opap") for name in fabric.devices), fabric.devices
    fabric.wait_ports(INIT)
    report_figure(f"fabric (systemd guests): both ports Init {time.monotonic() - started:.1f} s after QEMU started")
    fabric.start_subnet_manager(systemd=True)
    fabric.wait_ports(ACTIVE)
    assert fabric.guests[0].run("systemctl is-active opa-fm").stdout.strip() == "active"
    run = fabric.run_pair("ibv_rc_pingpong -c -n 20")
    assert run.ok, run.explain()
    assert parse_pingpong(run.client.stdout + run.client.stderr)["iters"] == 20
