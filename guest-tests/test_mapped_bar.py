"""Two guests on one `vfnic serve --device hfi1 --option mmap=pio` (issue
15): QEMU maps the PIO send space of BAR0 as shared memory (sparse mmap), so
the driver's and PSM2's PIO stores never trap, and the server finds
completed packets by polling (devmodel/hfi1/pio.py). Not the RcvArray (no
option offers it): the driver's blank fill writes would erase live TID
entries there, and PSM2's 1 MiB rendezvous stalled (devmodel/hfi1/rcv.py).
The unmodified driver, verbs and PSM2 must not be able to tell: the same
tools as test_fabric and test_psm2 move checked data, nothing is refused,
no CSR access is undeclared, and no access to the mapped parts came trapped
(QEMU really mapped them)."""
from __future__ import annotations

import pytest

from images.lab.fabric import parse_perftest, parse_pingpong
from images.lab.psm2 import expected_packets, fi_pingpong, keep_kernel_names, parse_fi_pingpong
from testkit.guest_checks import hfi1_dmesg_problems, refused_packets

pytestmark = pytest.mark.guest

MIB = 1 << 20


@pytest.fixture(scope="module")
def mapped(module_lab, report_figure):
    return module_lab.active_fabric("mmap", report_figure, args=("--option", "mmap=pio"),
                                    prepare=lambda fabric: keep_kernel_names(fabric, 2))


def test_rc_pingpong_checks_its_data_with_pio_space_in_shared_memory(mapped, report_figure):
    run = mapped.run_pair("ibv_rc_pingpong -c -n 50")
    assert run.ok, run.explain()
    summary = parse_pingpong(run.client.stdout + run.client.stderr)
    assert summary and summary["iters"] == 50, run.explain()
    report_figure(f"mmap: ibv_rc_pingpong -c: {summary['usec_per_iter']:.0f} us/iter")


@pytest.mark.parametrize("command", ["ib_send_lat -F -s 2 -n 100", "ib_write_bw -F -s 65536 -n 200",
                                     "ib_send_bw -F -n 200"])
def test_perftest_between_the_guests(mapped, command, report_figure):
    run = mapped.run_pair(command)
    assert run.ok, run.explain()
    (row,) = parse_perftest(run.client.stdout)
    figure = f"{row['bw_avg_mib_s']:.2f} MiB/s" if "bw_avg_mib_s" in row else f"t_typical {row['t_typical_us']} us"
    report_figure(f"mmap: {command}: {figure}")


@pytest.mark.parametrize("size,iterations", [(8, 100), (MIB, 10)], ids=["8B", "1MiB"])
def test_fi_pingpong_psm2_checks_its_data(mapped, size, iterations, report_figure):
    """PSM2 stores PIO packets from user space into its own context's
    window (multi-block ones too: its CTS carries TID lists)."""
    before = expected_packets(mapped)
    run = fi_pingpong(mapped, size, iterations, timeout=240)
    assert run.ok, run.explain()
    row = parse_fi_pingpong(run.client.stdout)
    assert row and row["bytes"] == size and row["sent"] == row["acked"] == iterations, run.explain()
    report_figure(f"mmap: fi_pingpong -p psm2 -c {size} B: {row['usec_per_xfer']:.0f} us/xfer")
    if size >= MIB:
        placed = [after - was for after, was in zip(expected_packets(mapped), before)]
        assert all(n >= iterations * size // 10240 for n in placed), placed


def test_the_mapped_parts_never_trapped_and_nothing_was_refused_or_undeclared(mapped):
    for guest in mapped.guests:
        assert hfi1_dmesg_problems(guest) == [], guest.name
    for path, stats in mapped.server.stats().items():
        assert stats["shared_memory_trapped"] == 0, (path, "QEMU did not map the areas")
        assert stats["pio"]["mapped"]["polls"] > 0 and stats["pio"]["packets"] > 0, (path, stats["pio"])
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
        assert refused_packets(stats) == {}, (path, stats["send"]["dropped"])
        assert not any(c["halts"] for c in stats["pio"]["contexts"].values()), (path, stats["pio"])
