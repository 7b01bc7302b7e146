"""What the guest tests check of hfi1 in a running guest, and the scenarios
test_hfi1_silicon.py runs on more than one kernel (trixie's and sid's): each
parses what the guest printed, none sleeps for a fixed time.

    load_hfi1(guest, INIT)                         # modprobe, wait for port 1's state
    hfi1_dmesg_problems(guest) == []               # no hfi1 warning beyond the allowlist
    a_flipped_firmware_byte_fails_probe_cleanly(guest)
    a_link_bounce_comes_back_active(fabric, report_figure, "silicon fabric")
"""
from __future__ import annotations

import json
import re
import time

from images.lab.fabric import ACTIVE, INIT, parse_pingpong, rdma_device, wait_port_state
from images.lab.vm import AgentError
from images.lab.wait import wait_until

#: kernel arguments for a guest whose test loads hfi1 itself (and times it):
#: hfi1 otherwise autoloads when udev sees 8086:24f0, as on real hardware
NO_AUTOLOAD = ("modprobe.blacklist=hfi1",)
FIRMWARE = "/lib/firmware/hfi1_dc8051.fw"

#: hfi1 lines at warning level or above that the driver prints on every
#: device in a small guest, with the reason.
DMESG_ALLOWLIST = {
    r"Number of kernel receive queues is too large for completion vector affinity to be effective":
        "the driver's default of kernel receive queues exceeds the 1-vCPU guest's CPUs; a tuning hint, "
        "printed on real hardware in such a guest too",
}
LOCKUP = re.compile(r"soft lockup|rcu.*stall|hung_task|blocked for more than")


# -- a fabric manager's view (opafm in guest 0) ---------------------------------------------------

def opafm_log(fabric) -> list[str]:
    """opafm's log lines: it logs to syslog, which the guest's init sends to the console."""
    text = fabric.guests[0].console_log.read_text(errors="replace")
    return [line for line in text.splitlines() if "fm0_sm[" in line]


def save_fabric_diagnostics(fabric, work) -> None:
    """opafm's log (guest 0's) and the server's `ctl query`, next to the logs a failed test keeps."""
    (work / "opafm.log").write_text("\n".join(opafm_log(fabric)))
    try:
        (work / "fabric-query.log").write_text(json.dumps(fabric.server.ctl("query"), indent=2))
    except Exception as error:
        (work / "fabric-query.log").write_text(f"could not query the server: {error}")


def pkey_tables(fabric) -> list[str]:
    """Each guest's first P_Key entries, as the driver holds them."""
    return [" ".join(g.run(f"cd /sys/class/infiniband/{d}/ports/1/pkeys && cat 0 1 2 3", check=True).stdout.split())
            for g, d in zip(fabric.guests, fabric.devices)]


def wait_settled(fabric, timeout: float = 120.0, quiet: float = 2.0) -> list[str]:
    """opafm goes on after the ports are Active: the rest of its first sweep,
    then delayed P_Key writes and client reregistration. Wait until its first
    sweep has ended and every guest's P_Key table has stayed the same for
    `quiet` seconds; the tables."""
    wait_until(lambda: any("DISCOVERY CYCLE END" in line for line in opafm_log(fabric)), timeout,
               "opafm's first sweep to end", explain=lambda: "\n".join(opafm_log(fabric)[-10:]))
    seen = {"tables": pkey_tables(fabric), "since": time.monotonic()}

    def quiet_for_long_enough() -> list[str] | None:
        tables = pkey_tables(fabric)
        if tables != seen["tables"]:
            seen.update(tables=tables, since=time.monotonic())
        return tables if time.monotonic() - seen["since"] >= quiet else None
    return wait_until(quiet_for_long_enough, timeout, "the guests' P_Key tables to settle")


def dmesg(guest) -> str:
    return guest.run("dmesg", check=True).stdout


def dmesg_mark(guest) -> int:
    """Where the kernel log stands now: `dmesg_since(guest, mark)` reads only
    what came after, so a check sees its own scenario's lines and not an
    earlier test's (without clearing what later checks read)."""
    return len(dmesg(guest).splitlines())


def dmesg_since(guest, mark: int) -> str:
    return "\n".join(dmesg(guest).splitlines()[mark:])


def server_stats(server) -> dict:
    """The statistics of the server's one device."""
    (stats,) = server.stats().values()
    return stats


def read_port(guest) -> tuple[str, str]:
    port = f"/sys/class/infiniband/{rdma_device(guest)}/ports/1"
    result = guest.run(f"cat {port}/state {port}/phys_state", check=True)
    state, phys = result.stdout.splitlines()
    return state.strip(), phys.strip()


def hfi1_dmesg_problems(guest) -> list[str]:
    lines = guest.run("dmesg --level=emerg,alert,crit,err,warn", check=True).stdout.splitlines()
    mine = [line for line in lines if re.search(r"hfi1|HFI:|rdmavt", line)]
    return [line for line in mine if not any(re.search(p, line) for p in DMESG_ALLOWLIST)]


def load_hfi1(guest, want_state: str, timeout: float = 120.0) -> float:
    """modprobe hfi1 and wait until port 1 reads `want_state`; seconds it took."""
    start = time.monotonic()
    guest.run("modprobe hfi1", timeout=timeout, check=True)
    device = rdma_device(guest, timeout)  # udev: rdma-core renames it, loads ib_umad & co
    wait_port_state(guest, device, want_state, max(1.0, start + timeout - time.monotonic()))
    return time.monotonic() - start


def opainfo(guest) -> dict:
    """Port 1 as opainfo shows it: state, LID, the SM's LID, and the whole text."""
    out = guest.run("opainfo", check=True).stdout
    lids = re.search(r"LID: (0x[0-9a-f]+)-(0x[0-9a-f]+)\s+SM LID: (0x[0-9a-f]+)", out)
    state = re.search(r"PortState:\s+(\w+)", out)
    assert lids and state, out
    return {"state": state[1], "lid": int(lids[1], 16), "sm_lid": int(lids[3], 16), "text": out}


def no_hfi1_device(guest) -> bool:
    return not guest.run("ls /sys/class/infiniband 2>/dev/null").stdout.split()


def assert_no_lockup(guest) -> None:
    console = guest.console_log.read_text(errors="replace")
    assert not LOCKUP.search(console), console[-3000:]


# -- one guest, the built-in link partner ------------------------------------------------------

def reload_with_the_port_up(guest, cycles: int, report_figure, label: str) -> None:
    """rmmod hfi1 with the port in Init (the built-in partner's link up),
    modprobe, until port 1 reads Init and LinkUp again; `cycles` times."""
    for cycle in range(cycles):
        started = time.monotonic()
        guest.run("rmmod hfi1", timeout=120, check=True)
        load_hfi1(guest, INIT)
        assert read_port(guest) == ("2: INIT", "5: LinkUp"), f"cycle {cycle}"
        report_figure(f"{label}: reload cycle {cycle + 1} with the port up: rmmod + modprobe to Init "
                      f"{time.monotonic() - started:.1f} s")


def a_flipped_firmware_byte_fails_probe_cleanly(guest) -> None:
    """With hfi1 loaded and the port in Init: rmmod, flip one payload byte of
    the 8051 image, modprobe. The chip refuses the image, the driver gives up
    on the device promptly; with the good file back, it loads to Init."""
    guest.run("rmmod hfi1", timeout=120, check=True)
    mark = dmesg_mark(guest)
    good = guest.get(FIRMWARE)
    bad = bytearray(good)
    bad[908 + 17] ^= 0x01  # a payload byte: the layout is fine, the signature no longer verifies
    try:
        guest.put(FIRMWARE, bytes(bad))
        started = time.monotonic()
        result = guest.run("modprobe hfi1", timeout=120)
        assert result.ok, result.stdout + result.stderr  # the module loads; the device's probe fails
        probe_failed = re.compile(r"probe with driver hfi1 failed with error -22")
        wait_until(lambda: probe_failed.search(dmesg_since(guest, mark)), 60.0, "the driver to give up on the device",
                   explain=lambda: dmesg_since(guest, mark)[-2000:])
        log = dmesg_since(guest, mark)
        # the fabric SerDes image authenticated, so no alternate names are tried: the 8051 refusal is final
        assert "8051 firmware authorization failed" in log, log
        assert no_hfi1_device(guest), "no RDMA device from a chip that refused its firmware"
        assert time.monotonic() - started < 60, "refused promptly, no hang"
        assert not LOCKUP.search(log)
    finally:
        guest.put(FIRMWARE, good)
    guest.run("rmmod hfi1", timeout=120, check=True)
    load_hfi1(guest, INIT)
    assert read_port(guest) == ("2: INIT", "5: LinkUp")


def poweroff_with_the_port_up_completes(lab, server_args: tuple[str, ...], report_figure, label: str) -> None:
    """`poweroff -f` (reboot(2)) in a fresh guest whose hfi1 autoloaded to
    Init: kernel_power_off runs every driver's shutdown hook, hfi1's
    included (shutdown_one takes the link offline), and QEMU exits."""
    server = lab.server("hfi1", args=server_args)
    guest = lab.guest(server)  # hfi1 autoloads
    device = rdma_device(guest, 180.0)
    wait_port_state(guest, device, INIT, 180.0)
    started = time.monotonic()
    try:
        guest.run("poweroff -f", timeout=30)
    except AgentError:
        pass  # the guest went away mid-command, as expected
    wait_until(lambda: guest.process.poll() is not None, 120.0, "QEMU to exit after poweroff",
               explain=lambda: guest.console_log.read_text(errors="replace")[-2000:])
    report_figure(f"{label}: poweroff -f with the port up: QEMU exited {time.monotonic() - started:.1f} s later")
    console = guest.console_log.read_text(errors="replace")
    assert "reboot: Power down" in console, console[-2000:]
    assert re.search(r"hfi1 [0-9a-f:.]+: \S+: set_link_state: current INIT, new OFFLINE", console), \
        "hfi1's shutdown hook took the port offline: " + console[-3000:]
    assert_no_lockup(guest)


# -- two guests, cabled back to back, opafm in the first ---------------------------------------

def link_ups(fabric) -> int:
    """How many times the cable between the two HFIs has come up."""
    return fabric.server.ctl("query")["links"][0]["ups"]


def link_directions(fabric) -> dict[str, dict]:
    """The cable's per-direction counters ("hfi1_0->hfi1_1": packets, bytes, ...)."""
    link = fabric.server.ctl("query")["links"][0]
    return {name: counts for name, counts in link.items() if "->" in name}


def rc_pingpong_passes(fabric, iterations: int = 50, size: int | None = None) -> dict:
    run = fabric.run_pair(f"ibv_rc_pingpong -c -n {iterations}" + (f" -s {size}" if size else ""))
    assert run.ok, run.explain()
    summary = parse_pingpong(run.client.stdout + run.client.stderr)
    assert summary and summary["iters"] == iterations, run.explain()
    return summary


def reload_with_the_port_active(fabric, guest, cycles: int, report_figure, label: str) -> None:
    """rmmod hfi1; modprobe hfi1 in `guest` `cycles` times, each until
    opafm's sweep has both ports Active again and the link trained once more."""
    for cycle in range(cycles):
        ups = link_ups(fabric)
        started = time.monotonic()
        guest.run("rmmod hfi1", timeout=120, check=True)
        guest.run("modprobe hfi1", timeout=120, check=True)
        rdma_device(guest, 120.0)
        fabric.wait_ports(ACTIVE, timeout=600.0)
        assert link_ups(fabric) == ups + 1, f"cycle {cycle}: the link trained once more"
        report_figure(f"{label}: reload cycle {cycle + 1} with the port Active: rmmod + modprobe to both "
                      f"ports Active again {time.monotonic() - started:.1f} s")


def a_link_bounce_comes_back_active(fabric, report_figure, label: str) -> None:
    """opaportconfig bounce in the guest without the SM: a local
    SubnSet(PortInfo) with PhysicalState Polling; the driver takes the link
    offline (the neighbour hears the planned-down reason across the link) and
    retrains it, and the SM's next sweep brings both ports Active."""
    guest, neighbour = fabric.guests[1], fabric.guests[0]
    marks = {g.name: dmesg_mark(g) for g in fabric.guests}
    ups = link_ups(fabric)
    started = time.monotonic()
    result = guest.run("opaportconfig bounce", timeout=120)
    assert result.ok, result.stdout + result.stderr
    wait_until(lambda: "Neighbor link down message" in dmesg_since(neighbour, marks[neighbour.name]), 120.0,
               f"{neighbour.name}'s driver to hear the neighbour's planned link down")
    assert re.search(r"set_link_state: current ACTIVE, new OFFLINE", dmesg_since(guest, marks[guest.name]))
    fabric.wait_ports(ACTIVE, timeout=600.0)
    assert link_ups(fabric) == ups + 1, "the link went down and trained once more"
    report_figure(f"{label}: opaportconfig bounce to both ports Active again: {time.monotonic() - started:.1f} s")
    rc_pingpong_passes(fabric)


def a_host_side_link_flap_comes_back_active(fabric, report_figure, label: str) -> None:
    """vfnic ctl link-down seconds=3: the cable goes dark for 3 s; both
    drivers see an unexpected link down, poll, retrain when it returns."""
    marks = {g.name: dmesg_mark(g) for g in fabric.guests}
    ups = link_ups(fabric)
    started = time.monotonic()
    fabric.server.ctl("link-down", link=0, seconds=3)
    wait_until(lambda: all("Unexpected link down" in dmesg_since(g, marks[g.name]) for g in fabric.guests), 120.0,
               "both drivers to see the link go down")
    fabric.wait_ports(ACTIVE, timeout=600.0)
    assert link_ups(fabric) == ups + 1, "the link trained again once it came back"
    report_figure(f"{label}: 3 s host-side link flap to both ports Active again: {time.monotonic() - started:.1f} s")
    rc_pingpong_passes(fabric)


def refused_packets(stats: dict) -> dict[str, int]:
    """Packets a device's send contexts and SDMA engines refused (their
    integrity checks, devmodel/hfi1/integrity.py), by sender, from its
    server statistics: none for what the driver and PSM2 send."""
    refused = {f"send context {hw}": c["refused"] for hw, c in stats["pio"]["contexts"].items() if c["refused"]}
    refused |= {f"SDMA engine {e}": c["refused"] for e, c in stats["sdma"].items() if c["refused"]}
    return refused


def no_undeclared_access_internal_error_or_lockup(fabric) -> None:
    for path, stats in fabric.server.stats().items():
        assert stats["undeclared_csr_accesses"] == 0, (path, stats["undeclared_offsets"])
        assert stats["internal_errors"] == [], (path, stats["internal_errors"])
    for guest in fabric.guests:
        assert_no_lockup(guest)
