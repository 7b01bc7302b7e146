"""The data-path and upper-layer acceptance as a user would meet them in
stock Debian guests: systemd as init, udev and rdma-core's own rules (the
device and its IPoIB interface are renamed), plain PCIe root ports on pcie.0
(no NUMA expander), hfi1 autoloaded at boot. `systemctl start opa-fm` in one
guest brings both ports to 4: ACTIVE; `ibv_rc_pingpong -c` passes; IPoIB
pings and carries iperf3; 32 MiB written over NVMe-oF/RDMA read back equal."""
from __future__ import annotations

import time

import pytest

from images.lab import ulp
from images.lab.fabric import ACTIVE, INIT, Fabric, parse_pingpong

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def stock(module_lab, report_figure):
    server = module_lab.server("hfi1", count=2)
    started = time.monotonic()
    fabric = Fabric.boot(server, lambda devices, **options: module_lab.guest(*devices, wait=False, **options),
                         module_lab.socket_dir, init="systemd", numa=False)
    fabric.wait_ports(INIT)
    report_figure(f"fabric (systemd guests): both ports Init {time.monotonic() - started:.1f} s after QEMU started")
    return fabric


def test_systemctl_start_opa_fm_brings_both_ports_active_and_rc_pingpong_checks_data(stock):
    assert all(name.startswith("opap") for name in stock.devices), stock.devices
    stock.start_subnet_manager(systemd=True)
    stock.wait_ports(ACTIVE)
    assert stock.guests[0].run("systemctl is-active opa-fm").stdout.strip() == "active"
    run = stock.run_pair("ibv_rc_pingpong -c -n 20")
    assert run.ok, run.explain()
    assert parse_pingpong(run.client.stdout + run.client.stderr)["iters"] == 20


def test_ipoib_pings_both_ways_and_carries_iperf3(stock, report_figure):
    stock.wait_ports(ACTIVE)
    for index, guest in enumerate(stock.guests):
        ulp.configure_ipoib(guest, index)
    for me, peer in ((0, 1), (1, 0)):
        result = ulp.ping(stock.guests[me], ulp.IPOIB_V4[peer])
        assert result["received"] == 3, result["text"]
    iperf = ulp.iperf3(stock.guests[1], stock.guests[0], ulp.IPOIB_V4[1])
    assert iperf.receiver_mbit_s > 0, iperf.text
    report_figure(f"fabric (systemd guests): iperf3 over IPoIB {iperf.receiver_mbit_s:.1f} Mbit/s")


def test_32_mib_over_nvme_rdma_read_back_equal(stock):
    target, host = stock.guests[1], stock.guests[0]
    ulp.nvmet_export(target, ulp.ram_disk(target, 64), "rdma", ulp.IPOIB_V4[1])
    device = ulp.nvme_connect(host, "rdma", ulp.IPOIB_V4[1])
    written, read = ulp.write_and_read_back(host, device, 32)
    ulp.nvme_disconnect(host)
    assert written == read
