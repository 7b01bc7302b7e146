"""Running a guest: QEMU's command line, the agent connection, the life cycle.

    with Guest([VfioUserDevice(Path("/tmp/x/testdev.sock"))]) as guest:
        print(guest.run("lspci -nn").stdout)

`Guest` boots the cached image (images.provision.guest_image) on the located QEMU
(images.provision.qemu) with each vfio-user device behind its own PCIe root port, and
talks to the guest through the agent (images/guest/agent.py) on a
virtio-serial port: the host listens on a unix socket, QEMU connects to it at
start-up, and the agent says hello once the guest is up. Nothing here sleeps
for a fixed time: every wait has a deadline and says what it was waiting for.
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import os
import queue
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from images import GUEST_FILES_DIR
from images.lab.process import log_tail, stop_process
from images.lab.wait import DeadlineExceeded, as_deadline, wait_until
from images.provision.guest_image import GuestImage, build
from images.provision.helpers import GUEST_HELPER_DIR, mmio_helper
from images.provision.qemu import Qemu, QemuError

AGENT_PORT_NAME = "vfnic.agent"
#: Kernel arguments every guest gets. `lsm=` leaves out the BPF LSM whose set-up
#: cost systemd 1.2 s; `fastboot` keeps initramfs-tools from checking the
#: (fresh, discarded-on-exit) image; `panic=-1` with QEMU's -no-reboot turns a
#: panic into QEMU exiting; `mitigations=off` because a test guest guards no
#: secrets and under TCG every mitigation is emulated work.
KERNEL_ARGS = ["console=ttyS0", "root=/dev/vda", "rootfstype=ext4", "rw", "fastboot", "panic=-1",
               "lsm=landlock,lockdown,yama,integrity", "8250.nr_uarts=1", "mitigations=off"]
INITS = {"vfnic": "/usr/lib/vfnic/init", "systemd": "/lib/systemd/systemd"}
#: The expander bridge that gives root-ported devices a NUMA node (Guest's numa).
NUMA_BRIDGE = "numa0-bridge"
#: The q35 machine without the legacy devices a test guest never uses.
MACHINE = "q35,sata=off,smbus=off,i8042=off,usb=off,vmport=off"
#: How long close() waits for the agent to acknowledge the end of the guest.
POWEROFF_REPLY_SECONDS = 10.0
KVM_HINT = ("(on machines whose /dev/kvm is a nested implementation, stock kernels crash or "
            "hang under KVM: use TCG, the default, by unsetting VFNIC_ACCEL)")
#: Extra time the host allows for a reply beyond a command's own timeout
#: (the agent's kill-and-drain, a slow TCG guest).
REPLY_GRACE = 30.0


def _load_agent_module():
    """The guest agent's own module, for its framing functions (one wire format)."""
    path = GUEST_FILES_DIR / "agent.py"
    spec = importlib.util.spec_from_file_location("vfnic_guest_agent", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


agent_wire = _load_agent_module()


class AgentError(RuntimeError):
    """The agent reported an error, did not answer in time, or went away."""


class GuestCommandError(RuntimeError):
    """A command run with check=True failed; `.result` has its output."""

    def __init__(self, result: "Result"):
        self.result = result
        reason = "timed out" if result.timed_out else f"exited with status {result.rc}"
        super().__init__(f"guest command {result.command!r} {reason}:\n{result.stderr}")


@dataclass(frozen=True)
class Result:
    """What a command run in the guest did. stdout/stderr are str, or bytes
    when run with text=False."""

    command: str
    rc: int
    stdout: str | bytes
    stderr: str | bytes
    timed_out: bool = False
    truncated: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out

    def check(self) -> "Result":
        if not self.ok:
            raise GuestCommandError(self)
        return self


@dataclass(frozen=True)
class VfioUserDevice:
    """A vfio-user server socket to attach as a PCI device.

    By default the device sits behind its own `pcie-root-port` announcing a
    Gen3 x16 link (hfi1 reads its parent bridge's link), on a PCIe expander
    bridge that belongs to NUMA node 0 (see Guest's `numa`); `root_port=False`
    puts it on pcie.0 itself. `properties` go into QEMU's device JSON as-is
    (e.g. {"x-no-posted-writes": True}).
    """

    socket: Path
    id: str | None = None
    root_port: bool = True
    properties: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ManagementPort:
    """One end of a private Ethernet cable between two guests (a virtio-net
    NIC on a QEMU datagram socket pair), for what cluster tools do out of
    band: perftest's and rdma-core's examples exchange their QP numbers over
    TCP before any RDMA traffic flows. `ManagementPort.pair(directory)`
    makes both ends; the guest configures `address` on the NIC whose MAC is
    `mac` once it is up."""

    local: Path
    remote: Path
    mac: str
    address: str  # with its prefix length, e.g. 10.77.0.1/24

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    @classmethod
    def pair(cls, directory: Path, subnet: str = "10.77.0") -> tuple["ManagementPort", "ManagementPort"]:
        a, b = Path(directory) / "mgmt-a.net", Path(directory) / "mgmt-b.net"
        return (cls(a, b, "52:54:00:76:66:01", f"{subnet}.1/24"),
                cls(b, a, "52:54:00:76:66:02", f"{subnet}.2/24"))

    def qemu_args(self) -> list[str]:
        return ["-netdev", f"dgram,id=mgmt,local.type=unix,local.path={self.local},"
                           f"remote.type=unix,remote.path={self.remote}",
                "-device", f"virtio-net-pci,netdev=mgmt,mac={self.mac},bus=pcie.0"]


class AgentConnection:
    """The host end of the agent's port: requests go out tagged with an id,
    a reader thread hands each reply to whoever waits for that id."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.stream = connection.makefile("rb")
        self.send_lock = threading.Lock()
        self.pending: dict[int, queue.Queue] = {}
        self.ids = itertools.count(1)
        self.hello: dict | None = None
        self.lost: str | None = None
        self.reader = threading.Thread(target=self._read_replies, name="vfnic-agent-reader", daemon=True)
        self.reader.start()

    def _read_replies(self) -> None:
        try:
            while (frame := agent_wire.read_frame(self.stream)) is not None:
                header, payload = frame
                if header.get("op") == "hello":
                    if self.hello is not None:
                        self._fail_pending()  # a restarted agent forgot them
                    self.hello = header
                    continue
                waiter = self.pending.pop(header.get("id"), None)
                if waiter is not None:
                    waiter.put((header, payload))
            self.lost = "the agent's port closed"
        except (OSError, ValueError) as error:
            self.lost = f"reading from the agent failed: {error}"
        self._fail_pending()

    def _fail_pending(self) -> None:
        for request_id in list(self.pending):
            waiter = self.pending.pop(request_id, None)
            if waiter is not None:
                waiter.put(None)

    def request(self, header: dict, payload: bytes = b"", timeout: float = 60.0) -> tuple[dict, bytes]:
        request_id = next(self.ids)
        waiter: queue.Queue = queue.Queue(maxsize=1)
        self.pending[request_id] = waiter
        try:
            if self.lost:
                raise AgentError(f"cannot send {header['op']!r}: {self.lost}")
            with self.send_lock:
                self.connection.sendall(agent_wire.encode_frame(dict(header, id=request_id), payload))
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            raise AgentError(f"no reply to {header['op']!r} within {timeout:.0f} s") from None
        except OSError as error:
            raise AgentError(f"cannot send {header['op']!r}: {error}") from error
        finally:
            self.pending.pop(request_id, None)
        if reply is None:
            raise AgentError(f"no reply to {header['op']!r}: {self.lost or 'the agent restarted'}")
        if reply[0].get("op") == "error":
            raise AgentError(f"the agent failed {header['op']!r}: {reply[0].get('message')}")
        return reply

    def close(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # wakes the reader
        except OSError:
            pass
        self.connection.close()
        self.reader.join(timeout=5)


def resolve_accel(accel: str | None) -> str:
    """`accel`, else $VFNIC_ACCEL, else tcg; KVM only if /dev/kvm is usable.
    (This machine's nested KVM cannot boot a stock kernel: TCG is the default.)"""
    accel = accel or os.environ.get("VFNIC_ACCEL") or "tcg"
    if accel not in ("tcg", "kvm"):
        raise QemuError(f"unknown accelerator {accel!r}: use tcg or kvm")
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise QemuError("KVM was asked for (VFNIC_ACCEL=kvm or accel='kvm') but /dev/kvm "
                        "is missing or not accessible; use tcg")
    return accel


def memory_size(memory: str | int) -> str:
    """QEMU size syntax; a bare number means MiB."""
    return f"{memory}M" if isinstance(memory, int) else memory


class Guest:
    """One QEMU guest, driven through its agent. Use as a context manager:
    entering boots it and waits until it is ready, leaving powers it off.

    `init` picks PID 1: "vfnic" (images/guest/init: udev and the agent,
    fastest) or "systemd" (the full system, masked down). `initrd` picks
    "vfnic" (images/provision/initrd.py, fastest) or "debian" (initramfs-tools).

    `numa` (default) gives the guest one NUMA node holding its RAM and puts
    the root ports under a PCIe expander bridge in that node, so devices
    have a NUMA node as in a real server (hfi1 logs an error otherwise:
    "Invalid PCI NUMA node"); numa=False keeps RAM as the machine's plain
    memory-backend and the root ports on pcie.0.

    `workdir` (kept) receives console.log and qemu.log; by default a
    temporary one is used and removed on close. Sockets always live in a
    short private directory, because unix socket paths are limited to 107
    bytes.
    """

    def __init__(
        self,
        devices: Sequence[VfioUserDevice | Path | str] = (),
        *,
        image: GuestImage | None = None,
        qemu: Qemu | None = None,
        memory: str | int = "1024M",
        cpus: int = 1,
        accel: str | None = None,
        init: str = "vfnic",
        initrd: str = "vfnic",
        kernel_args: Sequence[str] = (),
        qemu_args: Sequence[str] = (),
        numa: bool = True,
        workdir: Path | None = None,
        name: str = "guest",
        boot_timeout: float = 180.0,
        management: ManagementPort | None = None,
    ):
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, not {init!r}")
        if initrd not in ("vfnic", "debian"):
            raise ValueError(f"initrd must be 'vfnic' or 'debian', not {initrd!r}")
        self.devices = [d if isinstance(d, VfioUserDevice) else VfioUserDevice(Path(d)) for d in devices]
        self.image = image or build()
        self.qemu = qemu or Qemu.locate()
        self.memory = memory_size(memory)
        self.cpus = cpus
        self.accel = resolve_accel(accel)
        self.init = init
        self.initrd = self.image.initrd if initrd == "vfnic" else self.image.debian_initrd
        if self.initrd is None:
            raise ValueError("this image has no Debian initrd (custom kernel): use initrd='vfnic'")
        self.numa = numa
        self.kernel_args = list(kernel_args)
        self.qemu_args = list(qemu_args)
        self.name = name
        self.boot_timeout = boot_timeout
        self.management = management
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"vfnic-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runtime_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.agent: AgentConnection | None = None
        self._listener: socket.socket | None = None
        self._started_at = 0.0
        #: Seconds from starting QEMU to the agent's hello.
        self.boot_seconds: float | None = None
        #: Run with the guest once, when it is first ready (e.g. loading a
        #: developer's modules, images/lab/modules.py), before wait_ready returns.
        self.on_ready: list = []

    # --- paths and command line ----------------------------------------------

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.workdir / "qemu.log"

    def agent_socket(self) -> Path:
        assert self.runtime_dir is not None, "the guest has not been started"
        return self.runtime_dir / "agent.sock"

    def command_line(self) -> list[str]:
        image = self.image
        accel_args = ["-accel", "tcg", "-cpu", "max"] if self.accel == "tcg" else \
            ["-accel", "kvm", "-cpu", "host"]
        kernel_args = [*KERNEL_ARGS, f"init={INITS[self.init]}", *self.kernel_args]
        # Guest RAM in a shared memfd: vfio-user servers map it for DMA.
        memory_args = ["-numa", "node,nodeid=0,memdev=mem0"] if self.numa else []
        machine = MACHINE if self.numa else f"{MACHINE},memory-backend=mem0"
        return [
            *self.qemu.argv, "-name", self.name,
            "-machine", machine, *accel_args,
            "-smp", str(self.cpus), "-m", self.memory,
            "-object", f"memory-backend-memfd,id=mem0,size={self.memory},share=on", *memory_args,
            "-nodefaults", "-nographic", "-no-reboot",
            "-chardev", f"file,id=console,path={self.console_log}", "-serial", "chardev:console",
            "-kernel", str(image.kernel), "-initrd", str(self.initrd),
            "-append", " ".join(kernel_args),
            # snapshot=on: writes go to a private temporary overlay, so any
            # number of guests share the one image.
            "-drive", f"file={image.disk},if=none,id=root,format=raw,snapshot=on,cache=unsafe",
            "-device", "virtio-blk-pci,drive=root",
            "-device", "virtio-serial-pci,id=agent-serial",
            "-chardev", f"socket,id=agent,path={self.agent_socket()}",
            "-device", f"virtserialport,bus=agent-serial.0,chardev=agent,name={AGENT_PORT_NAME}",
            *self._device_args(), *(self.management.qemu_args() if self.management else []), *self.qemu_args,
        ]

    def _device_args(self) -> list[str]:
        args, root_port_bus = [], "pcie.0"
        if self.numa and any(device.root_port for device in self.devices):
            # Buses 128-255 under a host bridge that ACPI places in node 0.
            args += ["-device", f"pxb-pcie,id={NUMA_BRIDGE},bus_nr=128,numa_node=0,bus=pcie.0"]
            root_port_bus = NUMA_BRIDGE
        for index, device in enumerate(self.devices):
            spec = {"driver": "vfio-user-pci", "socket": {"type": "unix", "path": str(device.socket)},
                    "id": device.id or f"nic{index}", "bus": "pcie.0", **device.properties}
            if device.root_port:
                port = f"rp{index}"
                args += ["-device", f"pcie-root-port,id={port},bus={root_port_bus},chassis={index + 1},"
                                    "x-speed=8,x-width=16"]
                spec["bus"] = port
            # QEMU 11.1 accepts the socket address only in JSON form.
            args += ["-device", json.dumps(spec)]
        return args

    # --- life cycle ----------------------------------------------------------

    def start(self) -> "Guest":
        """Start QEMU (without waiting for the guest to boot)."""
        if self.process is not None:
            raise RuntimeError(f"guest {self.name} is already started")
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="vfnic-vm-", dir="/tmp"))
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.agent_socket()))
        self._listener.listen(1)
        self._listener.setblocking(False)
        env = {**self.qemu.environ(), "TMPDIR": str(self.runtime_dir)}
        with open(self.qemu_log, "wb") as qemu_log:
            self._started_at = time.monotonic()
            self.process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                            stdout=qemu_log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self, deadline: float | None = None) -> dict:
        """Wait for the agent's hello; return it. Raises QemuError at once if
        QEMU exits, and DeadlineExceeded with the console's last lines if the
        guest does not get there in time."""
        deadline = as_deadline(self.boot_timeout if deadline is None else deadline)
        if self.agent is None:
            connection = wait_until(self._accept_agent, deadline, f"QEMU ({self.name}) to start",
                                    explain=self._progress)
            self.agent = AgentConnection(connection)
        hello = wait_until(self._hello, deadline, f"the agent in {self.name} to start",
                           explain=self._progress)
        if self.boot_seconds is None:
            self.boot_seconds = time.monotonic() - self._started_at
            if self.management:
                self._configure_management(deadline)
            for hook in self.on_ready:
                hook(self)
        return hello

    def _configure_management(self, deadline) -> None:
        """Address the management NIC (found by its MAC: its name is udev's choice)."""
        port = self.management
        # udev may still be renaming the NIC (eth0 -> enp0s4 under systemd):
        # find it by MAC after udev settles, and retry if it moved meanwhile.
        script = (f"for i in $(seq 50); do udevadm settle --timeout=10; n=; "
                  f"for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {port.mac} ] && n=${{d##*/}}; done; "
                  f"[ -n \"$n\" ] && ip addr replace {port.address} dev $n 2>/dev/null "
                  f"&& ip link set $n up 2>/dev/null && echo $n && exit 0; sleep 0.2; done; "
                  f"echo no NIC with MAC {port.mac} could be configured >&2; exit 1")
        result = self.run(script, timeout=max(5.0, deadline.remaining()))
        if not result.ok:
            raise AgentError(f"{self.name}: cannot configure the management network: {result.stderr.strip()}")
        self.management_nic = result.stdout.strip()

    def _accept_agent(self) -> socket.socket | None:
        self._check_running()
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            return None
        connection.setblocking(True)
        return connection

    def _hello(self) -> dict | None:
        self._check_running()
        if self.agent.lost:
            raise AgentError(f"{self.name}: {self.agent.lost} before the agent started")
        return self.agent.hello

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise QemuError(f"QEMU for {self.name} exited with status {self.process.returncode}; "
                            f"its output:\n{log_tail(self.qemu_log)}\n"
                            f"console ({self.console_log}):\n{log_tail(self.console_log, 10)}")
        # QEMU stops the guest but stays alive after a KVM internal error.
        if self.accel == "kvm" and "KVM internal error" in self.qemu_log.read_text(errors="replace"):
            raise QemuError(f"KVM failed to run {self.name}:\n{log_tail(self.qemu_log)}\n{KVM_HINT}")

    def _progress(self) -> str:
        hint = f"\n{KVM_HINT}" if self.accel == "kvm" else ""
        return f"console ({self.console_log}) ends with:\n{log_tail(self.console_log, 10)}{hint}"

    def __enter__(self) -> "Guest":
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, deadline: float = 30.0) -> None:
        """End the guest through the agent (sync, then an immediate restart
        that -no-reboot turns into QEMU exiting; drivers' shutdown hooks are
        skipped on purpose, see agent.power_off), then stop QEMU by PID if it
        lingers."""
        if self.process is None:
            return
        try:
            if self.process.poll() is None and self.agent and self.agent.hello and not self.agent.lost:
                self._power_off(as_deadline(deadline))
        finally:
            stop_process(self.process, grace=5.0)
            if self.agent:
                self.agent.close()
            if self._listener:
                self._listener.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.process = None

    def _power_off(self, deadline) -> None:
        try:
            # A healthy agent answers at once; a guest wedged in its kernel
            # never will, and then it is QEMU's turn to be stopped.
            self.agent.request({"op": "poweroff"}, timeout=min(POWEROFF_REPLY_SECONDS, deadline.remaining()))
            wait_until(lambda: self.process.poll() is not None, deadline,
                       f"QEMU ({self.name}) to exit after power-off")
        except (AgentError, DeadlineExceeded):
            pass  # stop_process takes over

    # --- the agent's services ------------------------------------------------

    def _request(self, header: dict, payload: bytes = b"", timeout: float = 60.0) -> tuple[dict, bytes]:
        if self.agent is None:
            raise AgentError(f"{self.name} is not ready (call wait_ready first)")
        try:
            return self.agent.request(header, payload, timeout)
        except AgentError:
            self._check_running()
            raise

    def run(self, command: str | Sequence[str], timeout: float = 60.0, *, check: bool = False,
            text: bool = True, stdin: bytes = b"", env: dict[str, str] | None = None) -> Result:
        """Run `command` (a shell string, or an argv list run without a
        shell) in the guest. The agent kills its process group after
        `timeout` seconds and reports timed_out=True."""
        request = {"op": "run", "timeout": timeout, "env": env or {}}
        if isinstance(command, str):
            request["shell"] = command
        else:
            request["argv"] = list(command)
        header, payload = self._request(request, stdin, timeout + REPLY_GRACE)
        out, err = payload[:header["stdout"]], payload[header["stdout"]:]
        if text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        shown = command if isinstance(command, str) else " ".join(command)
        result = Result(shown, header["rc"], out, err, header["timed_out"], header["truncated"],
                        header["duration"])
        return result.check() if check else result

    def put(self, path: str, data: bytes | str | Path, mode: int = 0o644, timeout: float = 120.0) -> None:
        """Write a file in the guest (atomically: temporary file, then rename)."""
        if isinstance(data, Path):
            data = data.read_bytes()
        elif isinstance(data, str):
            data = data.encode()
        self._request({"op": "put", "path": path, "mode": mode}, data, timeout)

    def get(self, path: str, timeout: float = 120.0) -> bytes:
        """Read a file from the guest."""
        return self._request({"op": "get", "path": path}, timeout=timeout)[1]

    def settle(self, timeout: float = 60.0) -> Result:
        """Wait until udev has handled every event so far: drivers bound,
        and the modules loaded that a new device's rules ask for (after a
        `modprobe hfi1`, rdma-core's ib_umad, ib_ipoib... arrive a few
        seconds later, as on real hardware)."""
        return self.run(["udevadm", "settle", f"--timeout={int(timeout)}"], timeout=timeout + 10, check=True)

    def install_helpers(self) -> None:
        """Push the host-built static helpers (vfnic-mmio) onto the guest's PATH."""
        helper = mmio_helper()
        self.put(f"{GUEST_HELPER_DIR}/{helper.name}", helper, mode=0o755)
