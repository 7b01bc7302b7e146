"""The kernel matrix (issues 8 and 17): the silicon-mode probe, the reloads
with the port up, a flipped firmware byte, poweroff with the port up, and a
two-guest fabric brought Active by opafm that reloads, bounces and flaps its
link, all on Debian sid's current kernel (`linux-image-amd64` from sid, its
hfi1 unmodified) in the same guest image: the same scenarios as
test_hfi1_silicon.py runs on trixie's (testkit/guest_checks.py). Every run of
the guest tests boots these on sid, whatever VFNIC_GUEST_KERNEL chose for the
others (`VFNIC_GUEST_KERNEL=sid` runs the whole guest suite on sid).
"""
from __future__ import annotations

import re

import pytest

from images.lab.fabric import ACTIVE, INIT
from testkit.guest_checks import (
    NO_AUTOLOAD,
    a_flipped_firmware_byte_fails_probe_cleanly,
    a_host_side_link_flap_comes_back_active,
    a_link_bounce_comes_back_active,
    hfi1_dmesg_problems,
    load_hfi1,
    no_undeclared_access_internal_error_or_lockup,
    poweroff_with_the_port_up_completes,
    rc_pingpong_passes,
    read_port,
    reload_with_the_port_active,
    reload_with_the_port_up,
    server_stats,
)

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
    return guest, server


def test_sid_kernel_probes_hfi1_to_init_as_rtl_silicon(linked):
    guest, server = linked
    release = kernel_release(guest)
    assert not TRIXIE_KERNEL.match(release), f"{release}: the guest must boot sid's kernel, not trixie's"
    log = guest.run("dmesg", check=True).stdout
    assert "Implementation: RTL silicon" in log
    assert "8051: Link up" in log
    assert read_port(guest) == ("2: INIT", "5: LinkUp")
    assert hfi1_dmesg_problems(guest) == []
    counters = server_stats(server)
    assert counters["undeclared_csr_accesses"] == 0, counters["undeclared_offsets"]


def test_sid_kernel_reloads_three_times_with_the_port_up(linked, report_figure):
    guest, server = linked
    reload_with_the_port_up(guest, 3, report_figure, "sid kernel")
    assert hfi1_dmesg_problems(guest) == []
    assert server_stats(server)["undeclared_csr_accesses"] == 0


def test_sid_kernel_refuses_a_firmware_file_with_one_flipped_byte_and_loads_the_good_one_after(linked):
    guest, _ = linked
    a_flipped_firmware_byte_fails_probe_cleanly(guest)


def test_sid_kernel_powers_off_with_the_port_up(sid_lab, report_figure):
    poweroff_with_the_port_up_completes(sid_lab, (), report_figure, "sid kernel")


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
    assert all(hfi1_dmesg_problems(g) == [] for g in fabric.guests)


def test_sid_kernel_link_bounce_through_the_sma_comes_back_active(fabric, report_figure):
    a_link_bounce_comes_back_active(fabric, report_figure, "sid kernel fabric")


def test_sid_kernel_host_side_link_flap_comes_back_active(fabric, report_figure):
    a_host_side_link_flap_comes_back_active(fabric, report_figure, "sid kernel fabric")


def test_sid_kernel_fabric_touched_no_undeclared_csr_and_had_no_internal_error_or_lockup(fabric):
    rc_pingpong_passes(fabric)
    no_undeclared_access_internal_error_or_lockup(fabric)
