"""The kernel matrix (issue 8): the silicon-mode probe, the reloads with the
port up and a two-guest fabric brought Active by opafm, on Debian sid's
current kernel (`linux-image-amd64` from sid, its hfi1 unmodified) in the
same guest image. Every run of the guest tests boots these on sid, whatever
VFNIC_GUEST_KERNEL chose for the others (`VFNIC_GUEST_KERNEL=sid` runs the
whole guest suite on sid).
"""
from __future__ import annotations

import re

import pytest
from test_hfi1 import NO_AUTOLOAD, hfi1_dmesg_problems, load_hfi1, read_port, server_stats
from test_hfi1_silicon import rc_pingpong_passes, reload_with_the_port_active, reload_with_the_port_up

from images.fabric import ACTIVE, INIT

pytestmark = pytest.mark.guest

TRIXIE_KERNEL = re.compile(r"^6\.12\.")


def kernel_release(guest) -> str:
    return guest.run("uname -r", check=True).stdout.strip()


@pytest.fixture(scope="module")
def linked(sid_lab, tmp_path_factory, report_figure):
    """One sid guest, one silicon-mode HFI with its built-in link partner, port in Init."""
    stats = str(tmp_path_factory.mktemp("sid-stats") / "stats.json")
    server = sid_lab.server("hfi1", args=("--stats", stats))
    guest = sid_lab.guest(server, kernel_args=NO_AUTOLOAD)
    release = kernel_release(guest)
    seconds = load_hfi1(guest, INIT)
    report_figure(f"sid kernel {release}: modprobe hfi1 to port 1 Init on RTL silicon: {seconds:.1f} s")
    return guest, server, stats


def test_sid_kernel_probes_hfi1_to_init_as_rtl_silicon(linked):
    guest, server, stats = linked
    release = kernel_release(guest)
    assert not TRIXIE_KERNEL.match(release), f"{release}: the guest must boot sid's kernel, not trixie's"
    log = guest.run("dmesg", check=True).stdout
    assert "Implementation: RTL silicon" in log
    assert "8051: Link up" in log
    assert read_port(guest) == ("2: INIT", "5: LinkUp")
    assert hfi1_dmesg_problems(guest) == []
    counters = server_stats(server, stats)
    assert counters["undeclared_csr_accesses"] == 0, counters["undeclared_offsets"]


def test_sid_kernel_reloads_three_times_with_the_port_up(linked, report_figure):
    guest, server, stats = linked
    reload_with_the_port_up(guest, 3, report_figure, "sid kernel")
    assert hfi1_dmesg_problems(guest) == []
    assert server_stats(server, stats)["undeclared_csr_accesses"] == 0


@pytest.fixture(scope="module")
def fabric(sid_lab, report_figure):
    return sid_lab.active_fabric("sid kernel fabric", report_figure)


def test_sid_kernels_opafm_brings_both_ports_active_and_rc_pingpong_checks_its_data(fabric):
    assert all(not TRIXIE_KERNEL.match(kernel_release(g)) for g in fabric.guests)
    assert fabric.port_states() == [ACTIVE, ACTIVE]
    rc_pingpong_passes(fabric)


def test_sid_kernel_reloads_three_times_with_the_port_active(fabric, report_figure):
    reload_with_the_port_active(fabric, fabric.guests[1], 3, report_figure, "sid kernel fabric")
    rc_pingpong_passes(fabric)
    for path, stats in fabric.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
    assert all(hfi1_dmesg_problems(g) == [] for g in fabric.guests)
