"""`vfnic up`: a fabric of guests kept running for interactive work and CI.

    vfnic up [--guests 2] [--kernel trixie|sid|FILE.deb|TREE] [--module FILE.ko ...] [--no-sm] [-d]
    vfnic exec guest0 -- cat /sys/class/infiniband/*/ports/1/state
    vfnic cp hfi1.ko guest1:/tmp/   ·   vfnic console guest0   ·   vfnic down

The `up` process is the fabric's owner: it starts `vfnic serve` and the
guests (images/lab/fabric.py), holds their agent connections, and answers
other shells on a **lab socket** in its state directory
(`$VFNIC_RUN_DIR`, else `$XDG_RUNTIME_DIR/vfnic`, else
`~/.cache/vfnic/run`, then the fabric's name). `state.json` there records
every process it started as (PID, start time), so `vfnic down` can stop
them by PID even if `up` itself was killed, and never a process that merely
reuses a PID. Logs (serve.log, guestN/console.log, qemu.log) stay in
`~/.cache/vfnic/logs/NAME/` until the next `up` of that name.

The lab socket speaks one request per connection: a JSON line (`op`, its
arguments, `size` of the bytes that follow), then the reply the same way.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.json"
LAB_SOCKET = "lab.sock"
CONTROL_SOCKET = "control.sock"
#: the status `vfnic exec` exits with when the guest command timed out (as timeout(1))
TIMED_OUT_STATUS = 124


class UpError(RuntimeError):
    """What `vfnic up` or a command on its fabric cannot do, in one line."""


def cache_root() -> Path:
    return Path(os.environ.get("VFNIC_CACHE") or Path.home() / ".cache/vfnic")


def run_root() -> Path:
    """Where running fabrics' state directories live."""
    if os.environ.get("VFNIC_RUN_DIR"):
        return Path(os.environ["VFNIC_RUN_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "vfnic"
    return cache_root() / "run"


def check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise UpError(f"fabric name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


# -- processes by PID, safely -------------------------------------------------------

def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (/proc/PID/stat field 22), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


@dataclass(frozen=True)
class Recorded:
    """A process `up` started, as recorded: alive means the same PID *and* start time."""

    pid: int
    started: int | None
    what: str

    @classmethod
    def of(cls, pid: int, what: str) -> "Recorded":
        return cls(pid, start_time(pid), what)

    def alive(self) -> bool:
        if self.started is None:
            return False
        now = start_time(self.pid)
        if now != self.started:
            return False
        with contextlib.suppress(FileNotFoundError):  # a zombie has exited
            if Path(f"/proc/{self.pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return False
        return True

    def stop(self, grace: float = 5.0) -> bool:
        """SIGTERM, then SIGKILL after `grace`; True if it was running."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        return True

    def as_json(self) -> dict:
        return {"pid": self.pid, "started": self.started, "what": self.what}

    @classmethod
    def from_json(cls, data: dict) -> "Recorded":
        return cls(data["pid"], data.get("started"), data.get("what", "?"))


# -- the state directory ------------------------------------------------------------

class StateDir:
    """A fabric's state directory: state.json, the lab and control sockets,
    the vfio-user and management sockets."""

    def __init__(self, name: str, root: Path | None = None):
        self.name = check_name(name)
        self.path = (root or run_root()) / name

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def lab_socket(self) -> Path:
        return self.path / LAB_SOCKET

    @property
    def control_socket(self) -> Path:
        return self.path / CONTROL_SOCKET

    def read(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return {}  # half-written by a killed `up`: only its processes matter, and they are unknown

    def write(self, state: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        os.replace(tmp, self.state_file)

    def processes(self, state: dict | None = None) -> list[Recorded]:
        """The processes the state records: guests' QEMUs, then the server, then `up` itself."""
        state = self.read() if state is None else state
        return [Recorded.from_json(p) for p in (state or {}).get("processes", [])]

    def owner(self, state: dict | None = None) -> Recorded | None:
        state = self.read() if state is None else state
        return Recorded.from_json(state["owner"]) if state and "owner" in state else None

    def running(self) -> dict | None:
        """The state of a fabric whose `up` is alive, else None."""
        state = self.read()
        owner = self.owner(state)
        return state if owner is not None and owner.alive() else None

    def remove(self) -> None:
        """Remove the directory and what is in it (sockets, state), nothing else."""
        if self.path.is_dir():
            for entry in self.path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    for inner in entry.iterdir():
                        inner.unlink(missing_ok=True)
                    entry.rmdir()
                else:
                    entry.unlink(missing_ok=True)
            self.path.rmdir()

    def reap(self) -> list[Recorded]:
        """Stop whatever a dead `up` of this name left running (by recorded
        PID and start time), then remove the directory. Returns what was stopped."""
        state = self.read() or {}
        stopped = [p for p in self.processes(state) if p.stop()]
        for directory in state.get("directories", []):
            if Path(directory).name.startswith("vfnic-vm-"):  # only what Guest.start makes
                shutil.rmtree(directory, ignore_errors=True)
        self.remove()
        return stopped


# -- the lab socket protocol ----------------------------------------------------------

def send_message(connection: socket.socket, header: dict, payload: bytes = b"") -> None:
    connection.sendall(json.dumps({**header, "size": len(payload)}).encode() + b"\n" + payload)


def read_message(stream) -> tuple[dict, bytes] | None:
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError(f"a lab-socket header is a JSON object, not {type(header).__name__}")
    size = int(header.get("size", 0))
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        raise ConnectionError("the lab socket closed in the middle of a message")
    return header, payload


def request(state_dir: StateDir, header: dict, payload: bytes = b"", timeout: float | None = None) -> tuple[dict, bytes]:
    """One request to a running `vfnic up`; UpError if none runs or it refuses."""
    if state_dir.running() is None:
        raise UpError(f"no fabric {state_dir.name!r} is up ({state_dir.path}): start one with `vfnic up`"
                      + ("" if state_dir.name == "default" else f" --name {state_dir.name}"))
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(str(state_dir.lab_socket))
        send_message(connection, header, payload)
        reply = read_message(connection.makefile("rb"))
    except (OSError, ValueError) as e:
        raise UpError(f"cannot talk to fabric {state_dir.name!r} ({state_dir.lab_socket}): {e}") from None
    finally:
        connection.close()
    if reply is None:
        raise UpError(f"fabric {state_dir.name!r} closed the connection without a reply")
    if "error" in reply[0]:
        raise UpError(reply[0]["error"])
    return reply


class LabSocket:
    """The `up` side: a thread accepting connections, one thread per request."""

    def __init__(self, path: Path, handle):
        self.path = path
        self.handle = handle  # (header, payload) -> (header, payload)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        self.listener.bind(str(tmp))
        self.listener.listen(16)
        os.replace(tmp, path)  # appears only once it accepts
        self.thread = threading.Thread(target=self._accept, name="lab-socket", daemon=True)
        self.closed = False

    def start(self) -> "LabSocket":
        self.thread.start()
        return self

    def _accept(self) -> None:
        while not self.closed:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), name="lab-request", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                message = read_message(connection.makefile("rb"))
                if message is None:
                    return
                try:
                    header, payload = self.handle(*message)
                except Exception as e:  # any failure is the client's answer, never the fabric's end
                    header, payload = {"error": str(e) or type(e).__name__}, b""
                send_message(connection, header, payload)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.path.unlink(missing_ok=True)


# -- signals ------------------------------------------------------------------------

class Interrupts:
    """SIGINT, SIGTERM and SIGHUP as KeyboardInterrupt, except inside
    `deferred()` (starting a child process, whose PID must be recorded
    before anything unwinds) where they wait until the block ends. While
    cleaning up (`ignore()`), further signals are noted, not obeyed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.depth = 0
        self.pending: int | None = None
        self.ignoring = False
        self.previous = {}

    def install(self) -> "Interrupts":
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handler(self, signum, frame) -> None:
        if self.ignoring:
            print(f"vfnic up: {signal.Signals(signum).name} while cleaning up: finishing the clean-up first",
                  file=sys.stderr, flush=True)
            return
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None and not self.ignoring:
                signum, self.pending = self.pending, None
                raise KeyboardInterrupt(signal.Signals(signum).name)

    def ignore(self) -> None:
        self.ignoring = True


# -- the fabric's owner -------------------------------------------------------------

@dataclass
class UpOptions:
    name: str = "default"
    guests: int = 2
    kernel: str = "trixie"
    modules: tuple[str, ...] = ()
    subnet_manager: bool = True
    init: str = "vfnic"
    memory: str = "1024M"
    trace: str | None = None
    server_options: tuple[str, ...] = ()
    timeout: float = 600.0
    #: where the logs go (default ~/.cache/vfnic/logs/NAME, replaced by the next `up` of that name)
    logs: str | None = None


def check_options(options: UpOptions) -> None:
    """What can be refused before anything starts (UpError, one line)."""
    check_name(options.name)
    if options.guests not in (1, 2):
        raise UpError(f"--guests {options.guests}: 1 or 2 (two HFIs cable back to back; more need a switch)")
    if options.init not in ("vfnic", "systemd"):
        raise UpError(f"--init {options.init!r}: vfnic or systemd")
    from images.provision.debian import ProvisionError
    from images.provision.kernel_matrix import check_kernel_spec
    try:
        check_kernel_spec(options.kernel)
    except ProvisionError as e:
        raise UpError(str(e)) from None
    from images.lab.modules import Module, ModuleError
    for path in options.modules:
        try:
            Module.read(path)
        except ModuleError as e:
            raise UpError(str(e)) from None


class Up:
    """One `vfnic up`: everything it starts is recorded in the state
    directory the moment it starts, and undone by `close()`."""

    def __init__(self, options: UpOptions, say=print):
        self.options = options
        self.say = say
        self.state_dir = StateDir(options.name)
        self.logs = Path(options.logs) if options.logs else cache_root() / "logs" / options.name
        self.stack = contextlib.ExitStack()
        self.interrupts = Interrupts()
        self.state: dict = {}
        self.fabric = None
        self.guests: dict[str, object] = {}
        self.down_requested = threading.Event()
        self.started_at = time.monotonic()

    # -- state -------------------------------------------------------------------------
    def record(self, pid: int, what: str) -> None:
        self.state.setdefault("processes", []).insert(0, Recorded.of(pid, what).as_json())
        self.state_dir.write(self.state)

    # -- life --------------------------------------------------------------------------
    def claim(self) -> None:
        """Take the name: refuse if a live `up` holds it, reap a dead one's leftovers."""
        running = self.state_dir.running()
        if running is not None:
            raise UpError(f"fabric {self.options.name!r} is already up (PID {running['owner']['pid']}): "
                          f"`vfnic down{self._name_flag()}` first, or pick another --name")
        if self.state_dir.path.exists():
            stopped = self.state_dir.reap()
            if stopped:
                self.say(f"vfnic up: stopped {len(stopped)} process(es) left by an earlier `vfnic up` "
                         f"({', '.join(f'{p.what} PID {p.pid}' for p in stopped)})", file=sys.stderr)
        self.state = {"name": self.options.name, "owner": Recorded.of(os.getpid(), "vfnic up").as_json(),
                      "phase": "starting", "processes": [], "logs": str(self.logs)}
        self.state_dir.write(self.state)
        self.stack.callback(self.state_dir.remove)

    def _name_flag(self) -> str:
        return "" if self.options.name == "default" else f" --name {self.options.name}"

    def start(self) -> None:
        from images.lab.fabric import ACTIVE, INIT, Fabric
        from images.lab.modules import GuestModules, ModuleError
        from images.lab.server import VfnicServer
        from images.lab.vm import Guest
        from images.provision.debian import ProvisionError
        from images.provision.kernel_matrix import build_guest_image
        from images.provision.qemu import Qemu

        options = self.options
        try:
            image = build_guest_image(options.kernel)
            qemu = Qemu.locate()
        except ProvisionError as e:
            raise UpError(f"cannot provision the guests ({options.kernel} kernel): {e}") from None
        try:
            modules = GuestModules.from_paths(options.modules, image.kernel_version)
        except ModuleError as e:
            raise UpError(str(e)) from None
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        directory = self.state_dir.path
        server_args = ["--control", str(self.state_dir.control_socket),
                       *(["--trace", str(Path(options.trace).resolve())] if options.trace else []),
                       *(arg for option in options.server_options for arg in ("--option", option))]
        server = VfnicServer("hfi1", [directory / f"hfi1-{i}.sock" for i in range(options.guests)],
                             log=self.logs / "serve.log", args=server_args)
        self.stack.callback(server.stop)
        with self.interrupts.deferred():
            server.start_process()
            self.record(server.process.pid, "vfnic serve")
        server.wait_started()
        count = iter(range(options.guests))

        def start_guest(devices, **guest_options) -> Guest:
            name = f"guest{next(count)}"
            guest = Guest(devices, image=image, qemu=qemu, workdir=self.logs / name, name=name,
                          init=options.init, memory=options.memory, boot_timeout=options.timeout,
                          kernel_args=modules.kernel_args(), **guest_options)
            self.stack.callback(guest.close)
            with self.interrupts.deferred():
                guest.start()
                # its agent socket's directory, for `vfnic down` to remove should `up` be killed
                self.state.setdefault("directories", []).append(str(guest.runtime_dir))
                self.record(guest.process.pid, f"QEMU {name}")
            self.guests[name] = guest
            return guest

        def prepare(guest) -> None:
            try:
                modules.install(guest)
            except ModuleError as e:
                raise UpError(str(e)) from None
            guest.install_helpers()

        self.say(f"vfnic up: booting {options.guests} guest(s) (kernel {image.kernel_version}, QEMU {qemu.version})",
                 file=sys.stderr, flush=True)
        fabric = Fabric.boot(server, start_guest, directory, prepare=prepare)
        self.fabric = fabric
        fabric.wait_ports(INIT, timeout=options.timeout)
        if options.subnet_manager:
            fabric.start_subnet_manager(systemd=options.init == "systemd")
            fabric.wait_ports(ACTIVE, timeout=options.timeout)
        self.lab_socket = LabSocket(self.state_dir.lab_socket, self.handle)
        self.stack.callback(self.lab_socket.close)
        self.lab_socket.start()
        self.state.update(phase="ready", kernel=image.kernel_version, control_socket=str(self.state_dir.control_socket),
                          lab_socket=str(self.state_dir.lab_socket), trace=options.trace,
                          seconds_to_ready=round(time.monotonic() - self.started_at, 1),
                          guests=[{"name": g.name, "address": g.management.ip, "device": device,
                                   "port_state": state, "console_log": str(g.console_log)}
                                  for g, device, state in zip(fabric.guests, fabric.devices, fabric.port_states())])
        self.state_dir.write(self.state)

    def describe(self) -> str:
        return describe(self.state)

    def wait(self) -> None:
        """Until Ctrl-C (KeyboardInterrupt), SIGTERM or `vfnic down`."""
        while not self.down_requested.wait(0.5):
            pass

    def close(self) -> None:
        self.interrupts.ignore()
        self.stack.close()

    # -- the lab socket's requests ---------------------------------------------------
    def guest(self, header: dict):
        name = header.get("guest")
        if name not in self.guests:
            raise UpError(f"no guest {name!r} in fabric {self.options.name!r} (guests: {', '.join(self.guests)})")
        return self.guests[name]

    def handle(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        op = header.get("op")
        if op == "status":
            return {"state": self.state}, b""
        if op == "down":
            self.down_requested.set()
            return {"ok": True}, b""
        if op == "exec":
            result = self.guest(header).run(header["command"], timeout=float(header.get("timeout", 600)),
                                            text=False, stdin=payload)
            return {"rc": result.rc, "timed_out": result.timed_out, "stdout": len(result.stdout)}, \
                result.stdout + result.stderr
        if op == "put":
            self.guest(header).put(header["path"], payload, mode=int(header.get("mode", 0o644)))
            return {"ok": True}, b""
        if op == "get":
            return {"ok": True}, self.guest(header).get(header["path"])
        raise UpError(f"unknown request {op!r}")


def describe(state: dict) -> str:
    """What `up` prints once ready (and `vfnic status` prints)."""
    name = state.get("name", "default")
    flag = "" if name == "default" else f" --name {name}"
    lines = [f"vfnic up: fabric {name!r} ready in {state.get('seconds_to_ready', 0):.1f} s: "
             f"{len(state.get('guests', []))} guest(s), kernel {state.get('kernel')}"]
    for g in state.get("guests", []):
        lines.append(f"  {g['name']}  address {g['address']}  device {g['device']}  port {g['port_state']}")
        lines.append(f"      vfnic exec{flag} {g['name']} -- CMD   vfnic console{flag} {g['name']}   "
                     f"vfnic cp{flag} FILE {g['name']}:/PATH")
    lines.append(f"  control socket {state.get('control_socket')}   (vfnic ctl {state.get('control_socket')} help)")
    if state.get("trace"):
        lines.append(f"  MMIO trace {state['trace']}")
    lines.append(f"  logs {state.get('logs')}")
    lines.append(f"  stop: Ctrl-C here, or `vfnic down{flag}`")
    return "\n".join(lines)


def run_up(options: UpOptions, ready=None) -> int:
    """`vfnic up` in the foreground: start, print, wait, clean up."""
    up = Up(options, say=print)
    up.interrupts.install()
    try:
        up.claim()
        up.start()
        print(up.describe(), flush=True)
        if ready is not None:
            ready(up)
        up.wait()
        print("vfnic up: stopping (vfnic down)", file=sys.stderr, flush=True)
        return 0
    except KeyboardInterrupt as e:
        print(f"vfnic up: interrupted ({e or 'SIGINT'}): stopping what was started", file=sys.stderr, flush=True)
        return 130
    finally:
        up.close()
        up.interrupts.restore()
