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
import os
import platform
import sys

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
