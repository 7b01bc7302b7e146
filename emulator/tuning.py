"""How the server's threads are scheduled (`vfnic serve --switch-interval`,
`--sched`): knobs for a machine whose cores are busy running guests, where
each hand-off between threads (QEMU's vCPU or iothread -> socket thread ->
engine thread -> the peer's QEMU) waits for the host scheduler to preempt
whatever runs on the core (benchmarks/latency.py measures it).

    --switch-interval MS   Python's GIL switch interval (sys.setswitchinterval;
                           Python's own default is 5 ms): how long a thread
                           that wants the GIL waits before asking its holder
                           to drop it
    --sched host           (the default) the host's scheduling, untouched
    --sched fifo           every thread SCHED_FIFO at priority 1: a woken
                           server thread preempts a spinning vCPU at once
                           instead of waiting until the host scheduler lets
                           it (600-900 us runnable per message against 5 us,
                           benchmarks/latency). Safe only because none of the
                           server's threads spins: each blocks in recvmsg, a
                           condition wait or a timed join; the kernel's RT
                           throttling (95 % by default) bounds a bug that
                           would spin. Needs CAP_SYS_NICE (or RLIMIT_RTPRIO).
                           Halves ib_write_bw: a socket thread woken by every
                           posted PIO store preempts the very vCPU storing
    --sched fifo-engines   SCHED_FIFO 1 for every thread but the socket threads
                           (the engine, which wakes per chip event, not per store)
    --sched slice          every thread of the server SCHED_OTHER with a short
                           EEVDF slice (sched_setattr's sched_runtime, Linux
                           6.12+, clamped by the kernel to 0.1..100 ms): an
                           earlier virtual deadline, so a woken server thread
                           may preempt a vCPU sooner

`apply_sched` sets the policy of every thread the process has when called
(/proc/self/task), so `vfnic serve` calls it once its threads run. The
control socket's `tune` command changes both while the server runs
(`vfnic ctl C tune sched=host switch_interval_ms=0.2`), so a benchmark can
alternate settings on the same guests.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

SCHED_OTHER, SCHED_FIFO = 0, 1
FIFO_PRIORITY = 1
SCHED_CHOICES = ("host", "fifo", "fifo-engines", "slice")
#: what `vfnic serve` does unless told (docs/execution-model.md, "Latency", says why)
DEFAULT_SCHED = "host"
#: the native names of the vfio-user socket threads (emulator/cli.py names them)
SOCKET_THREAD_PREFIX = "vfnic-serve-"
#: the shortest EEVDF slice the kernel accepts (shorter is clamped up to it)
DEFAULT_SLICE_US = 100
_SYSCALL = {"x86_64": 314, "aarch64": 274}  # sched_setattr


class TuningError(Exception):
    """A scheduling setting the host refused, in one line."""


class SchedAttr(ctypes.Structure):
    """struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes)."""
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def set_switch_interval(ms: float) -> None:
    if not ms > 0:
        raise TuningError(f"a switch interval must be positive, not {ms} ms")
    sys.setswitchinterval(ms / 1000)


def sched_attr(policy: str, slice_us: int = DEFAULT_SLICE_US, reset: bool = False) -> SchedAttr | None:
    """The sched_attr `--sched policy` asks for; for `host`, None (leave
    the threads alone) or with `reset` plain SCHED_OTHER with the kernel's
    own slice (undoing an earlier policy)."""
    if policy not in SCHED_CHOICES:
        raise TuningError(f"unknown scheduling {policy!r} (known: {', '.join(SCHED_CHOICES)})")
    if policy == "host" and not reset:
        return None
    attr = SchedAttr(size=ctypes.sizeof(SchedAttr))
    if policy == "host":
        attr.sched_policy, attr.sched_nice = SCHED_OTHER, os.getpriority(os.PRIO_PROCESS, 0)
    elif policy == "slice":
        attr.sched_policy, attr.sched_nice, attr.sched_runtime = SCHED_OTHER, os.getpriority(os.PRIO_PROCESS, 0), \
            slice_us * 1000
    else:  # fifo, fifo-engines
        attr.sched_policy, attr.sched_priority = SCHED_FIFO, FIFO_PRIORITY
    return attr


def apply_sched(policy: str, slice_us: int = DEFAULT_SLICE_US, reset: bool = False,
                socket_threads: frozenset[int] = frozenset()) -> list[int]:
    """Give every thread of this process `policy` (`reset`: `host`
    undoes an earlier one); the thread ids changed. The socket threads, for
    `fifo-engines`, are those named SOCKET_THREAD_PREFIX... and those in
    `socket_threads` (native ids: one just started may not have named
    itself yet). Raises TuningError if
    the host refuses (no CAP_SYS_NICE for fifo, a kernel without
    sched_setattr)."""
    attr = sched_attr(policy, slice_us, reset)
    if attr is None:
        return []
    plain = sched_attr("host", reset=True)
    number = _SYSCALL.get(platform.machine())
    if number is None:
        raise TuningError(f"sched_setattr's syscall number on {platform.machine()} is not known")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    changed = []
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        wanted = attr
        if policy == "fifo-engines" and (tid in socket_threads or _thread_name(tid).startswith(SOCKET_THREAD_PREFIX)):
            wanted = plain
        if libc.syscall(number, tid, ctypes.byref(wanted), 0) != 0:
            err = ctypes.get_errno()
            if err == 3:  # ESRCH: the thread ended meanwhile
                continue
            raise TuningError(f"sched_setattr({policy}) of thread {tid} refused: {os.strerror(err)}")
        changed.append(tid)
    return changed


def _thread_name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return ""


# -- the clients' vCPU threads ------------------------------------------------------
SCHED_IDLE = 5
VCPU_SCHED_CHOICES = ("host", "idle", "auto")
#: `auto`: how often the device's DMA rate is looked at, above what rate the
#: vCPUs go back to the host's scheduling, below what rate (for AUTO_CALM_S)
#: they are SCHED_IDLE again; a ping-pong of small messages moves well under
#: 1 MiB/s, a bulk transfer tens of MiB/s (docs/execution-model.md, "Latency")
AUTO_PERIOD_S = 0.05
AUTO_BULK_BYTES_S = 8 << 20
AUTO_CALM_BYTES_S = 2 << 20
AUTO_CALM_S = 0.5
#: what `vfnic serve --vcpu-sched` does unless told
DEFAULT_VCPU_SCHED = "host"
#: QEMU's names for its vCPU threads: "CPU 0/TCG", "CPU 1/KVM", round-robin TCG's "ALL CPUs/TCG"
_VCPU_NAME = re.compile(r"^(CPU \d+|ALL CPUs)/[A-Za-z]+$")


def vcpu_threads(pid: int) -> list[int]:
    """The thread ids of process `pid`'s vCPU threads (by QEMU's names)."""
    tids = []
    try:
        entries = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in entries:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if _VCPU_NAME.match(name):
            tids.append(int(tid))
    return sorted(tids)


class ClientVcpus:
    """`--vcpu-sched`: how the vCPU threads of the QEMU processes connected to
    this server are scheduled.

      host   the host's scheduling, untouched (a thread this server made
             SCHED_IDLE goes back to SCHED_OTHER)
      idle   SCHED_IDLE: a vCPU runs only when nothing else wants the core,
             so a woken server thread or QEMU helper thread (its vfio-user
             iothread, its main loop delivering an interrupt) runs at once
             instead of waiting for the host scheduler to preempt a spinning
             vCPU, up to a tick (docs/execution-model.md, "Latency"). What
             libvirt's <vcpusched scheduler='idle'/> does to a guest's vCPUs.
             Halves a small message's latency, but costs a third of the
             bandwidth of a bulk transfer (every posted store then wakes a
             thread that preempts the vCPU storing)
      auto   idle while the devices move little data, the host's while they
             move a lot: a thread watches the devices' DMA rate (`activity`,
             bytes so far) every AUTO_PERIOD_S; above AUTO_BULK_BYTES_S the
             vCPUs go back to SCHED_OTHER, and once the rate has stayed below
             AUTO_CALM_BYTES_S for AUTO_CALM_S they are SCHED_IDLE again

    A client is found by its socket's peer credentials (SO_PEERCRED) when it
    connects; its vCPU threads by name. Lowering a thread to SCHED_IDLE needs
    no privilege for a process of the same user; a thread the host refuses
    (another user's, another PID namespace) is logged once and left alone.
    Thread-safe: socket threads attach clients, the control socket changes
    the policy."""

    def __init__(self, policy: str = "host", log: logging.Logger | None = None,
                 activity: Callable[[], int] | None = None):
        if policy not in VCPU_SCHED_CHOICES:
            raise TuningError(f"unknown vCPU scheduling {policy!r} (known: {', '.join(VCPU_SCHED_CHOICES)})")
        self.policy = policy
        self.log = log or logging.getLogger("vfnic.tuning")
        self._clients: dict[int, int] = {}  # pid -> connections
        self._changed: dict[int, set[int]] = {}  # pid -> thread ids this object made SCHED_IDLE
        self._refused: set[int] = set()  # clients whose threads the host would not change: left alone
        self._lock = threading.Lock()
        #: auto: the devices' DMA bytes so far; whether the vCPUs are idle now; switches made
        self._activity = activity or (lambda: 0)
        self._idle_now = policy != "host"
        self.switches = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if policy == "auto":
            self._start_watching()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)

    def _start_watching(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="vcpu-sched", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """`auto`: follow the devices' DMA rate (see the class docstring)."""
        last, calm_since = self._activity(), time.monotonic()
        while not self._stop.wait(AUTO_PERIOD_S):
            moved, now = self._activity(), time.monotonic()
            rate = (moved - last) / AUTO_PERIOD_S
            last = moved
            with self._lock:
                if self.policy != "auto":
                    continue
                if rate > AUTO_BULK_BYTES_S:
                    calm_since = now
                    if self._idle_now:
                        self._switch(False)
                elif rate > AUTO_CALM_BYTES_S:
                    calm_since = now
                elif not self._idle_now and now - calm_since >= AUTO_CALM_S:
                    self._switch(True)

    def _switch(self, idle: bool) -> None:
        """Under the lock: every client's vCPUs idle, or back to the host's."""
        self._idle_now = idle
        self.switches += 1
        for pid in list(self._clients):
            self._apply(pid)

    def attach(self, pid: int | None) -> None:
        """A client process connected (None: its pid is not known)."""
        if not pid:
            return
        with self._lock:
            self._clients[pid] = self._clients.get(pid, 0) + 1
            self._apply(pid)

    def detach(self, pid: int | None) -> None:
        if not pid:
            return
        with self._lock:
            left = self._clients.get(pid, 0) - 1
            if left > 0:
                self._clients[pid] = left
                return
            self._clients.pop(pid, None)
            self._refused.discard(pid)
            self._changed.pop(pid, None)  # a client that went away keeps what it had: it is usually gone

    def set_policy(self, policy: str) -> dict:
        """Change the policy for every connected client; returns `describe()`."""
        if policy not in VCPU_SCHED_CHOICES:
            raise TuningError(f"unknown vCPU scheduling {policy!r} (known: {', '.join(VCPU_SCHED_CHOICES)})")
        with self._lock:
            self.policy = policy
            self._idle_now = policy != "host"
            for pid in list(self._clients):
                self._apply(pid)
        if policy == "auto":
            self._start_watching()
        return self.describe()

    def describe(self) -> dict:
        with self._lock:
            return {"vcpu_sched": self.policy, "vcpu_idle_now": self._idle_now, "vcpu_switches": self.switches,
                    "vcpu_threads": {str(pid): sorted(tids) for pid, tids in self._changed.items()}}

    def _apply(self, pid: int) -> None:
        if pid in self._refused:
            return
        if self._idle_now:
            for tid in vcpu_threads(pid):
                if self._set(pid, tid, SCHED_IDLE):
                    self._changed.setdefault(pid, set()).add(tid)
        else:
            for tid in self._changed.pop(pid, set()):
                self._set(pid, tid, SCHED_OTHER)

    def _set(self, pid: int, tid: int, policy: int) -> bool:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except ProcessLookupError:
            return False
        except OSError as e:  # said once: the client is left alone from now on
            self.log.warning("vCPU thread %d of client %d: scheduling not changed: %s; its vCPUs keep the host's "
                             "scheduling", tid, pid, e.strerror)
            self._refused.add(pid)
            return False
        self.log.debug("vCPU thread %d of client %d: %s", tid, pid, "SCHED_IDLE" if policy == SCHED_IDLE else
                       "SCHED_OTHER")
        return True


def peer_pid(sock) -> int | None:
    """The process at the other end of an AF_UNIX socket (SO_PEERCRED), or None."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None
