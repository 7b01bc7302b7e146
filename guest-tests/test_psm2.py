"""PSM2 between two guests (issue 13): a user process opens /dev/hfi1_0,
gets its own receive and send contexts, sends small messages by PIO from
user space and large ones by user SDMA into the peer's pinned pages through
the RcvArray's expected (TID) entries. Judged by libfabric's fi_pingpong
with its data check (-c), through Debian's libpsm2, unmodified.

PSM2 hard-codes the kernel's device name `hfi1_N`, which rdma-core's udev
rule renames: both guests get Debian's documented NAME_KERNEL rule and
reload hfi1 before opafm brings the ports Active (images/lab/psm2.py).
"""
from __future__ import annotations

import json

import pytest

from images.lab.psm2 import (
    NETPIPE,
    PINGPONG_PATH,
    expected_packets,
    fi_pingpong,
    install_mpi_launcher,
    keep_kernel_names,
    mpirun,
    parse_fi_pingpong,
    parse_netpipe,
)
from images.lab.wait import wait_until
from testkit.guest_checks import hfi1_dmesg_problems, refused_packets

pytestmark = pytest.mark.guest

MIB = 1 << 20
#: user contexts per guest (hfi1's default is one per CPU: one in these 1-vCPU guests)
USER_CONTEXTS = 2


@pytest.fixture(scope="module")
def psm2(module_lab, report_figure):
    return module_lab.active_fabric("psm2", report_figure,
                                    prepare=lambda fabric: keep_kernel_names(fabric, USER_CONTEXTS))


def test_the_naming_policy_keeps_the_kernel_name_psm2_looks_for(psm2):
    assert psm2.devices == ["hfi1_0", "hfi1_0"], psm2.devices
    for guest in psm2.guests:
        assert guest.run("test -c /dev/hfi1_0").ok, guest.name
        contexts = guest.run("cat /sys/class/infiniband/hfi1_0/nctxts /sys/class/infiniband/hfi1_0/nfreectxts",
                             check=True).stdout.split()
        assert contexts == [str(USER_CONTEXTS)] * 2, f"{guest.name}: user contexts (all, free) {contexts}"


@pytest.mark.parametrize("size,iterations", [(8, 100), (MIB, 10)], ids=["8B", "1MiB"])
def test_fi_pingpong_psm2_checks_its_data_between_the_guests(psm2, size, iterations, report_figure):
    before = expected_packets(psm2)
    run = fi_pingpong(psm2, size, iterations, timeout=240)
    assert run.ok, run.explain()
    for side in (run.server, run.client):
        row = parse_fi_pingpong(side.stdout)
        assert row and row["bytes"] == size and row["sent"] == row["acked"] == iterations, run.explain()
    row = parse_fi_pingpong(run.client.stdout)
    report_figure(f"psm2: fi_pingpong -p psm2 -e rdm -c {size} B: {row['usec_per_xfer']:.0f} us/xfer, "
                  f"{row['mb_s']:.2f} MB/s")
    if size >= MIB:
        placed = [after - was for after, was in zip(expected_packets(psm2), before)]
        assert all(n >= iterations * size // 10240 for n in placed), \
            f"1 MiB messages must land through expected (TID) entries on both sides: {placed}"


def test_two_concurrent_psm2_jobs_each_check_their_own_data(psm2):
    """Two fi_pingpong pairs at once, each on its own pair of contexts,
    with different message sizes and data patterns: neither sees the
    other's packets (each checks every byte it receives)."""
    import threading
    runs = {}

    def job(name, size, iterations, port):
        runs[name] = fi_pingpong(psm2, size, iterations, timeout=300, port=port)

    threads = [threading.Thread(target=job, args=(name, size, iterations, psm2.port()))
               for name, size, iterations in (("a", MIB, 6), ("b", 65536, 40))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(330)
    for name, size in (("a", MIB), ("b", 65536)):
        assert runs[name].ok, runs[name].explain()
        row = parse_fi_pingpong(runs[name].client.stdout)
        assert row and row["bytes"] == size, runs[name].explain()


def test_a_psm2_process_killed_mid_transfer_leaves_its_context_reusable(psm2):
    """Both fi_pingpong processes killed while 1 MiB messages are in flight
    (user SDMA requests outstanding, TIDs registered): the driver's close
    waits for the SDMA completions and frees the context, and the next job runs."""
    server, client = psm2.guests[1], psm2.guests[0]
    port = psm2.port()
    command = f"fi_pingpong -p psm2 -e rdm -c -S {MIB} -I 100000"
    before = expected_packets(psm2)
    pids = {server: server.run(f"{command} -B {port} </dev/null >/dev/null 2>&1 & echo $!", check=True).stdout}
    wait_until(lambda: server.run(f"ss -Hltn 'sport = :{port}' | grep -q .").ok, 60, "fi_pingpong to listen")
    pids[client] = client.run(f"{command} -P {port} {server.management.ip} </dev/null >/dev/null 2>&1 & echo $!",
                              check=True).stdout
    wait_until(lambda: all(now > was for now, was in zip(expected_packets(psm2), before)), 120,
               "1 MiB messages under way in both directions")
    for guest, pid in pids.items():
        guest.run(f"kill -KILL {int(pid)}", check=True)
    for guest in psm2.guests:
        wait_until(lambda g=guest: g.run("cat /sys/class/infiniband/hfi1_0/nfreectxts").stdout.strip()
                   == g.run("cat /sys/class/infiniband/hfi1_0/nctxts").stdout.strip(), 60,
                   f"{guest.name}'s user context to be free again")
    run = fi_pingpong(psm2, MIB, 2)
    assert run.ok, run.explain()


@pytest.mark.parametrize("mtl", ["psm2", "ofi"])
def test_an_open_mpi_ping_pong_over_psm2_checks_its_data_between_the_guests(psm2, mtl, report_figure):
    """mpirun in guest 0 starts rank 1 in guest 1 (PRRTE's daemon through
    vfnic-rsh on the management link); the ranks talk over the cm PML with
    the psm2 MTL, or the ofi MTL on libfabric's psm2 provider."""
    install_mpi_launcher(psm2)
    before = expected_packets(psm2)
    run = mpirun(psm2, f"{PINGPONG_PATH} 10 8 65536 {MIB}", transport=mtl)
    assert run.ok, f"{run.rc}: {run.stdout}{run.stderr}"
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    *rows, allreduce = rows
    assert [row["bytes"] for row in rows] == [8, 65536, MIB], run.stdout
    assert all(row["errors"] == 0 for row in rows), rows
    assert allreduce == {"allreduce_doubles": 1 << 17, "errors": 0}, allreduce
    placed = [after - was for after, was in zip(expected_packets(psm2), before)]
    assert all(n >= 10 * MIB // 10240 for n in placed), f"1 MiB messages go through expected entries: {placed}"
    for row in rows:
        report_figure(f"psm2: Open MPI mtl {mtl} ping-pong {row['bytes']} B: {row['latency_us']:.0f} us, "
                      f"{row['mb_s']:.2f} MB/s")


def test_netpipe_over_open_mpi_and_psm2_runs_to_1_mib(psm2, report_figure):
    install_mpi_launcher(psm2)
    run = mpirun(psm2, NETPIPE, timeout=600)
    assert run.ok, f"{run.rc}: {run.stdout}{run.stderr}"
    rows = parse_netpipe(run.stdout + run.stderr)  # NetPIPE prints its rows on stderr
    # (a 1-byte row may print 0.00 Mbps: NetPIPE rounds to two decimals)
    assert rows and rows[-1]["bytes"] == MIB and rows[-1]["mbps"] > 0 and all(r["usec"] > 0 for r in rows), \
        run.stdout + run.stderr
    best = max(rows, key=lambda r: r["mbps"])
    report_figure(f"psm2: NetPIPE (NPopenmpi, mtl psm2) {len(rows)} sizes to 1 MiB: {rows[0]['usec']:.0f} us at "
                  f"{rows[0]['bytes']} B, peak {best['mbps']:.0f} Mbit/s at {best['bytes']} B, "
                  f"{rows[-1]['mbps']:.0f} Mbit/s at 1 MiB")


def test_no_undeclared_csr_access_refused_packet_internal_error_or_hfi1_warning(psm2):
    """Also: every packet PSM2 and the kernel sent passed its send context's
    or SDMA engine's integrity checks, which the driver turns on (J_Key,
    P_Key after SET_PKEY, SLID, opcode, VL; docs/hfi1.md)."""
    for path, stats in psm2.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
        assert refused_packets(stats) == {}, (path, stats["send"]["dropped"])
    for guest in psm2.guests:
        assert hfi1_dmesg_problems(guest) == [], guest.name
