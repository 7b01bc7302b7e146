"""`vfnic serve --profile`: the guest's trapped accesses counted by register,
and the delay from an interrupt to the guest's next access (emulator/profile.py),
and the scheduling knobs of emulator/tuning.py."""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import threading

import pytest

from common.threads import name_native_thread
from devmodel.testdev import DMA_CMD, DMA_DST, DMA_LEN, DMA_SRC, ID, IRQ_VECTOR, SCRATCH
from emulator import tuning
from emulator.control import request
from images.lab.wait import wait_until
from testkit.client import wait_eventfd

BAR0 = 0


def start_copy(client, base: int, vector: int) -> None:
    """testdev copies 16 bytes of guest memory and raises `vector`."""
    for register, value in ((DMA_SRC, base), (DMA_DST, base + 0x1000), (DMA_LEN, 16), (IRQ_VECTOR, vector),
                            (DMA_CMD, 1)):
        client.write64(BAR0, register, value)


def test_accesses_are_counted_and_timed_by_register_name(testdev, client):
    profile = testdev.function.enable_profile()
    client.write64(BAR0, SCRATCH, 1)
    client.write64(BAR0, SCRATCH, 2)
    client.read64(BAR0, SCRATCH)
    client.read(BAR0, ID, 8)
    client.write64(BAR0, DMA_SRC, 0x1000)
    registers = testdev.function.profile_stats()["registers"]
    assert {name: row["accesses"] for name, row in registers.items()} == {  # testdev names offsets only
        f"W BAR0+{SCRATCH:#x}": 2, f"R BAR0+{SCRATCH:#x}": 1, f"R BAR0+{ID:#x}": 1, f"W BAR0+{DMA_SRC:#x}": 1}
    assert all(row["ns"] > 0 for row in registers.values())
    assert profile.interrupts == 0 and profile.delivered == 0


def test_an_interrupt_is_timed_until_the_guests_next_access(testdev, client, guest_ram):
    profile = testdev.function.enable_profile()
    client.dma_map(guest_ram, 0x100000)
    efd = client.enable_msix(2)
    start_copy(client, 0x100000, 2)
    assert wait_eventfd(efd, 5.0) == 1
    assert profile.interrupts == 1 and profile.delivered == 0, "no access since the interrupt yet"
    client.read64(BAR0, SCRATCH)  # the guest's handler
    client.read64(BAR0, SCRATCH)  # not a second delivery
    stats = testdev.function.profile_stats()
    assert stats["interrupts"] == stats["interrupts_delivered"] == 1 and stats["interrupt_delivery_ns"] > 0
    os.close(efd)


def test_a_pio_buffer_is_one_row_whatever_qword_is_written():
    from emulator.profile import AccessProfile
    profile = AccessProfile()
    for offset in range(0x2000000, 0x2000040, 8):
        profile.record("W", 0, offset, 0)
    rows = profile.snapshot(lambda bar, offset: f"PIO_SEND_BUFFER[0]+{offset - 0x2000000:#x}")["registers"]
    assert list(rows) == ["W PIO_SEND_BUFFER[0]"] and rows["W PIO_SEND_BUFFER[0]"]["accesses"] == 8


def test_switch_interval_is_given_in_milliseconds_and_must_be_positive():
    before = sys.getswitchinterval()
    try:
        tuning.set_switch_interval(0.2)
        assert sys.getswitchinterval() == pytest.approx(0.0002)
        with pytest.raises(tuning.TuningError, match="must be positive"):
            tuning.set_switch_interval(0)
    finally:
        sys.setswitchinterval(before)


def test_sched_choices_become_sched_attrs():
    assert tuning.sched_attr("host") is None
    plain = tuning.sched_attr("host", reset=True)
    assert (plain.sched_policy, plain.sched_runtime) == (tuning.SCHED_OTHER, 0)
    fifo = tuning.sched_attr("fifo")
    assert (fifo.sched_policy, fifo.sched_priority, fifo.size) == (tuning.SCHED_FIFO, 1, 48)
    short = tuning.sched_attr("slice", 250)
    assert (short.sched_policy, short.sched_runtime) == (tuning.SCHED_OTHER, 250_000)
    with pytest.raises(tuning.TuningError, match="unknown scheduling 'rr'"):
        tuning.sched_attr("rr")
    assert ctypes.sizeof(tuning.SchedAttr) == 48


def test_a_thread_names_itself_for_the_kernel():
    seen = {}

    def run():
        seen["named"] = name_native_thread("vfnic-test-thread-long-name")
        seen["comm"] = open(f"/proc/self/task/{threading.get_native_id()}/comm").read().strip()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == {"named": True, "comm": "vfnic-test-thre"}  # the kernel keeps 15 bytes


def thread_slices(pid: int) -> dict[str, int]:
    """Each thread's EEVDF slice (ns), as /proc/PID/task/TID/sched shows it."""
    slices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as sched:
                for line in sched:
                    if line.startswith("se.slice"):
                        slices[tid] = int(line.split(":")[1])
        except FileNotFoundError:
            pass  # a control connection's thread, gone meanwhile
    return slices


def test_tune_changes_the_running_servers_scheduling_and_default_undoes_it(tmp_path):
    sock, control = str(tmp_path / "t.sock"), str(tmp_path / "c.sock")
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "testdev", "--socket", sock,
                             "--control", control, "--sched", "host"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(control) or proc.poll() is not None, 20.0, "the control socket to appear")
        before = thread_slices(proc.pid)
        if not before:
            pytest.skip("this kernel does not show se.slice in /proc/PID/task/TID/sched")
        assert 100_000 not in before.values()
        reply = request(control, "tune", {"sched": "slice", "switch_interval_ms": 0.2})
        assert reply["return"]["switch_interval_ms"] == pytest.approx(0.2)
        assert set(thread_slices(proc.pid).values()) == {100_000}, "every thread of the server"
        request(control, "tune", {"sched": "host"})
        assert 100_000 not in thread_slices(proc.pid).values()
        refused = request(control, "tune", {"sched": "rr"})
        assert "unknown scheduling 'rr'" in refused["error"]["desc"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def may_use_real_time() -> bool:
    cap_eff = next(line for line in open("/proc/self/status") if line.startswith("CapEff:"))
    return bool(int(cap_eff.split()[1], 16) >> 23 & 1)  # CAP_SYS_NICE


OTHER, FIFO = os.SCHED_OTHER, os.SCHED_FIFO


@pytest.mark.parametrize("args,policy", [((), {"vfnic-serve-0": OTHER, "testdev": OTHER}),
                                         (("--sched", "fifo"), {"vfnic-serve-0": FIFO, "testdev": FIFO}),
                                         (("--sched", "fifo-engines"), {"vfnic-serve-0": OTHER, "testdev": FIFO})])
def test_serve_schedules_its_threads_as_told(tmp_path, args, policy):
    if os.SCHED_FIFO in policy.values() and not may_use_real_time():
        pytest.skip("no CAP_SYS_NICE here: the server keeps the host's scheduling")
    sock = str(tmp_path / "t.sock")
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "testdev", "--socket", sock,
                             *args], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 20.0, "the socket to appear")

        def policies() -> dict[str, int]:  # by thread name: the socket thread, testdev's worker
            found = {}
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                name = open(f"/proc/{proc.pid}/task/{tid}/comm").read().strip()
                found[name] = os.sched_getscheduler(int(tid))
            return found
        wait_until(lambda: {k: policies().get(k) for k in policy} == policy, 10.0, f"the threads' policies {policy}",
                   explain=lambda: f"they have {policies()}")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


#: a stand-in for QEMU: a thread named as QEMU names a vCPU thread, and the
#: main thread, connected to the server's socket until stdin closes
FAKE_QEMU = """
import socket, sys, threading
ready = threading.Event()
def vcpu():
    with open("/proc/thread-self/comm", "w") as comm:
        comm.write("CPU 0/TCG")
    ready.set()
    threading.Event().wait()
threading.Thread(target=vcpu, daemon=True).start()
ready.wait()
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print(threading.get_native_id(), flush=True)
sys.stdin.read()
"""


def named_threads(pid: int) -> dict[str, int]:
    """comm -> the policy of process pid's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            out[comm.read().strip()] = os.sched_getscheduler(int(tid))
    return out


@pytest.mark.parametrize("start", ["host", "idle"])
def test_the_clients_vcpu_threads_go_idle_and_back_and_nothing_else_of_the_client_changes(tmp_path, start):
    sock, control = str(tmp_path / "t.sock"), str(tmp_path / "c.sock")
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "testdev", "--socket", sock,
                             "--control", control, "--vcpu-sched", start], stderr=subprocess.PIPE, text=True)
    qemu = None
    try:
        wait_until(lambda: os.path.exists(control) or proc.poll() is not None, 20.0, "the control socket to appear")
        qemu = subprocess.Popen([sys.executable, "-c", FAKE_QEMU, sock], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        qemu.stdout.readline()  # connected
        wanted = os.SCHED_IDLE if start == "idle" else os.SCHED_OTHER
        wait_until(lambda: named_threads(qemu.pid)["CPU 0/TCG"] == wanted, 10.0, f"the vCPU thread {start}")
        reply = request(control, "tune", {"vcpu_sched": "idle"})["return"]
        assert reply["vcpu_sched"] == "idle" and list(reply["vcpu_threads"]) == [str(qemu.pid)]
        threads = named_threads(qemu.pid)
        assert threads.pop("CPU 0/TCG") == os.SCHED_IDLE
        assert set(threads.values()) == {os.SCHED_OTHER}, "only the vCPU thread"
        request(control, "tune", {"vcpu_sched": "host"})
        assert set(named_threads(qemu.pid).values()) == {os.SCHED_OTHER}
        refused = request(control, "tune", {"vcpu_sched": "fifo"})
        assert "unknown vCPU scheduling 'fifo'" in refused["error"]["desc"]
    finally:
        if qemu is not None:
            qemu.stdin.close()
            qemu.wait(timeout=10)
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_a_socket_names_the_process_at_its_other_end():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert tuning.peer_pid(a) == os.getpid()


def test_auto_vcpu_scheduling_follows_the_devices_dma_rate(monkeypatch):
    """`auto`: idle while little moves, the host's during a bulk transfer,
    idle again once it has been calm for AUTO_CALM_S."""
    monkeypatch.setattr(tuning, "AUTO_CALM_S", 0.2)
    qemu = subprocess.Popen([sys.executable, "-c", FAKE_QEMU.replace("s.connect(sys.argv[1])", "")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    moved = [0]
    vcpus = tuning.ClientVcpus("auto", activity=lambda: moved[0])
    try:
        qemu.stdout.readline()
        vcpus.attach(qemu.pid)

        def vcpu_policy() -> int:
            return named_threads(qemu.pid)["CPU 0/TCG"]

        assert vcpu_policy() == os.SCHED_IDLE, "idle while nothing moves"
        bulk = threading.Event()

        def transfer() -> None:  # 40 MiB/s, as an ib_write_bw between two TCG guests
            while not bulk.wait(0.01):
                moved[0] += 400 << 10
        mover = threading.Thread(target=transfer)
        mover.start()
        try:
            wait_until(lambda: vcpu_policy() == os.SCHED_OTHER, 5.0, "the host's scheduling during the transfer")
            assert vcpus.describe()["vcpu_idle_now"] is False
        finally:
            bulk.set()
            mover.join()
        wait_until(lambda: vcpu_policy() == os.SCHED_IDLE, 5.0, "idle again once calm")
        assert vcpus.describe()["vcpu_switches"] == 2
    finally:
        vcpus.close()
        qemu.stdin.close()
        qemu.wait(timeout=10)
