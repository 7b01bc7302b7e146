"""Guests on a fabric of HFIs: what the demo, the guest tests and the
benchmarks all need. Two HFIs are cabled back to back; more (or two with
`vfnic serve --switch`) are all cabled to one edge switch.

    with Fabric.launch(workdir) as fabric:       # vfnic serve with two sockets, two guests
        fabric.start_subnet_manager()            # opafm in guest 0
        fabric.wait_ports("4: ACTIVE")
        server, client = fabric.run_pair("ibv_rc_pingpong -c -n 20")

Each guest has one emulated HFI (all of one `vfnic serve`) and a private
management Ethernet: a link to the other for two guests (`ManagementPort`),
a hub on the host for more (`ManagementHub`), as on a real cluster: the RDMA tools exchange their
queue-pair numbers over TCP before any RDMA traffic flows. Device names come
from sysfs, never from the image: stock Debian renames hfi1_0 (opap...).
Nothing sleeps for a fixed time: a server tool's readiness is its listening
TCP port, a port's state is read until it is the one wanted.
"""
from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from images.lab.management_hub import ManagementHub
from images.lab.server import VfnicServer
from images.lab.vm import Guest, ManagementPort, Result, VfioUserDevice
from images.lab.wait import wait_until

INIT, ACTIVE = "2: INIT", "4: ACTIVE"
OPAFM = "/usr/lib/opa-fm/bin/opafmd"
#: where each tool listens: a distinct port per run avoids TIME_WAIT surprises
FIRST_TOOL_PORT = 18600


class FabricError(RuntimeError):
    """The fabric did not get where it was asked to (with what was seen)."""


def rdma_device(guest: Guest, timeout: float = 120.0) -> str:
    """The name of the guest's hfi1 RDMA device, once udev is done renaming
    it (rdma-core's rules rename hfi1_0 in a stock guest)."""
    def found() -> str | None:
        guest.settle()
        names = guest.run("for d in /sys/class/infiniband/*; do "
                          "[ \"$(basename $(readlink $d/device/driver 2>/dev/null) 2>/dev/null)\" = hfi1 ] "
                          "&& basename $d; done").stdout.split()
        return names[0] if len(names) == 1 else None
    return wait_until(found, timeout, f"an hfi1 RDMA device in {guest.name}")


def port_state(guest: Guest, device: str) -> str:
    return guest.run(f"cat /sys/class/infiniband/{device}/ports/1/state", check=True).stdout.strip()


def wait_port_state(guest: Guest, device: str, wanted: str, timeout: float) -> float:
    """Wait until port 1 reads `wanted`; the seconds it took."""
    start = time.monotonic()
    wait_until(lambda: port_state(guest, device) == wanted, timeout,
               f"{guest.name}'s {device} port 1 to be {wanted}",
               explain=lambda: f"it reads {port_state(guest, device)!r}")
    return time.monotonic() - start


@dataclass
class ToolRun:
    """A tool run as server in one guest and client in the other."""

    command: str
    server: Result
    client: Result

    @property
    def ok(self) -> bool:
        return self.server.ok and self.client.ok

    def explain(self) -> str:
        return "\n".join(f"--- {side} ({r.command}): exit {r.rc}{' (timed out)' if r.timed_out else ''}\n"
                         f"{r.stdout}{r.stderr}" for side, r in (("server", self.server), ("client", self.client)))


class Fabric:
    """Guests, one HFI each, of one server (see the module docstring)."""

    def __init__(self, server: VfnicServer, guests: Sequence[Guest], hub: ManagementHub | None = None,
                 servers: Sequence[VfnicServer] = ()):
        self.server = server
        #: every server whose sockets the guests use, in guest order (the first is `server`)
        self.servers = list(servers) or [server]
        self.guests = list(guests)
        #: the management network's hub (more than two guests); None: a point-to-point link
        self.hub = hub
        self.devices: list[str] = []
        self._next_port = FIRST_TOOL_PORT
        self.sm_started_at: float | None = None

    # -- set-up ------------------------------------------------------------------------
    @classmethod
    def launch(cls, workdir: Path, server_args: Sequence[str] = (), guests: int = 2,
               topology: Callable[[list[Path]], str] | None = None, **guest_options) -> "LaunchedFabric":
        """Start `vfnic serve` with `guests` sockets and a guest on each in
        `workdir` (a context manager that stops them, guests first). More
        than two need a switch in `server_args` (`--switch`), or `topology`:
        a function of the socket paths that returns a topology file's text
        (docs/topology.md), served with `--topology` instead of `--socket`s."""
        return LaunchedFabric(Path(workdir), list(server_args), guest_options, guests, topology)

    @classmethod
    def boot(cls, server: VfnicServer | Sequence[VfnicServer], start_guest: Callable[..., Guest], socket_dir: Path,
             prepare: Callable[[Guest], None] | None = None, **guest_options) -> "Fabric":
        """Boot a guest on each of `server`'s sockets (or each socket of
        several servers: HFIs cabled across servers) side by side
        (`start_guest(devices, management=..., **options)` starts one without
        waiting: the guest-test lab's, or a plain Guest), each with one end of
        the management link (two guests) or a port of a management hub (more),
        and find their hfi1 devices. `prepare(guest)` runs in each guest once
        it is up, before its device is looked for (e.g. loading a developer's
        hfi1.ko, images/lab/modules.py). `close()` stops the hub."""
        servers = [server] if isinstance(server, VfnicServer) else list(server)
        sockets = [path for each in servers for path in each.sockets]
        hub = None
        if len(sockets) == 2:
            ends = ManagementPort.pair(socket_dir)
        else:
            hub = ManagementHub(socket_dir, len(sockets)).start()
            ends = hub.ports
        try:
            guests = [start_guest([VfioUserDevice(path)], management=end, **guest_options)
                      for path, end in zip(sockets, ends)]
            for guest in guests:
                guest.wait_ready()
            if prepare is not None:  # side by side: depmod and modprobe cost seconds in each TCG guest
                with ThreadPoolExecutor(len(guests), thread_name_prefix="prepare") as pool:
                    for done in [pool.submit(prepare, guest) for guest in guests]:
                        done.result()
            fabric = cls(servers[0], guests, hub, servers)
            fabric.devices = [rdma_device(g) for g in guests]
        except BaseException:
            if hub is not None:
                hub.close()
            raise
        return fabric

    def close(self) -> None:
        """Stop what the fabric owns beyond its guests and server (the management hub)."""
        if self.hub is not None:
            self.hub.close()

    def wait_ports(self, wanted: str, timeout: float = 180.0) -> list[float]:
        return [wait_port_state(g, d, wanted, timeout) for g, d in zip(self.guests, self.devices)]

    def port_states(self) -> list[str]:
        return [port_state(g, d) for g, d in zip(self.guests, self.devices)]

    def start_subnet_manager(self, index: int = 0, systemd: bool = False) -> None:
        """opafm in one guest: `systemctl start opa-fm` under systemd, its daemon directly otherwise."""
        guest = self.guests[index]
        # The daemon keeps the stdout it was started with: give it a file, or
        # the agent would wait for the pipe to close.
        command = "systemctl start opa-fm" if systemd else f"{OPAFM} -D </dev/null >/run/opafm.out 2>&1"
        result = guest.run(command, timeout=120)
        if not result.ok:
            raise FabricError(f"{command} in {guest.name} failed ({result.rc}): {result.stdout}{result.stderr}")
        self.sm_started_at = time.monotonic()

    # -- tools ------------------------------------------------------------------------
    def port(self) -> int:
        self._next_port += 1
        return self._next_port

    def run_pair(self, command: str, server: int = 1, client: int = 0, timeout: float = 300.0,
                 server_options: str = "", port_option: str = "-p") -> ToolRun:
        """Run `command` as a server in guest `server` and as its client in
        guest `client`, pointed at the server's management address. The
        device name is appended as `-d NAME` for each guest."""
        port = self.port()
        server_guest = self.guests[server]
        server_cmd = f"{command} -d {self.devices[server]} {port_option} {port} {server_options}".strip()
        client_cmd = f"{command} -d {self.devices[client]} {port_option} {port} {server_guest.management.ip}"
        return self.run_commands(server_cmd, client_cmd, lambda: listening(server_guest, port),
                                 f"port {port}", server, client, timeout)

    def run_cm_pair(self, server_cmd: str, client_cmd: str, port: int, server: int = 1, client: int = 0,
                    timeout: float = 300.0) -> ToolRun:
        """A server and client that meet through RDMA CM (over IPoIB): the
        client starts once the server's CM ID listens on `port`."""
        server_guest = self.guests[server]
        return self.run_commands(server_cmd, client_cmd, lambda: rdma_cm_listening(server_guest, port),
                                 f"RDMA CM port {port}", server, client, timeout)

    def run_commands(self, server_cmd: str, client_cmd: str, ready: Callable[[], bool], what: str,
                     server: int = 1, client: int = 0, timeout: float = 300.0) -> ToolRun:
        """Start `server_cmd` in guest `server`; once `ready()`, run
        `client_cmd` in guest `client`; both results."""
        server_guest, client_guest = self.guests[server], self.guests[client]
        outcome: dict[str, Result] = {}

        def serve() -> None:
            outcome["server"] = server_guest.run(server_cmd, timeout=timeout)

        thread = threading.Thread(target=serve, name="tool-server", daemon=True)
        thread.start()
        wait_until(lambda: "server" in outcome or ready(), 60.0,
                   f"{shlex.split(server_cmd)[0]} to listen on {what} in {server_guest.name}")
        outcome["client"] = client_guest.run(client_cmd, timeout=timeout)
        thread.join(timeout + 30)
        if "server" not in outcome:
            raise FabricError(f"{server_cmd} in {server_guest.name} never finished")
        return ToolRun(client_cmd, outcome["server"], outcome["client"])


def listening(guest: Guest, port: int) -> bool:
    return bool(guest.run(f"ss -Hltn 'sport = :{port}'").stdout.strip())


def rdma_cm_listening(guest: Guest, port: int) -> bool:
    """Does an RDMA CM ID listen on `port` (iproute2's `rdma resource`)?"""
    out = guest.run("rdma resource show cm_id").stdout
    return any("LISTEN" in line and f":{port} " in f"{line} " for line in out.splitlines())


class LaunchedFabric:
    """`Fabric.launch(...)`: a Fabric that owns its server and guests."""

    def __init__(self, workdir: Path, server_args: list[str], guest_options: dict, guests: int = 2,
                 topology: Callable[[list[Path]], str] | None = None):
        self.workdir, self.server_args, self.guest_options = workdir, server_args, guest_options
        self.guests, self.topology = guests, topology
        self._stack = ExitStack()

    def __enter__(self) -> Fabric:
        import shutil
        import tempfile
        socket_dir = Path(tempfile.mkdtemp(prefix="vfnic-fabric-", dir="/tmp"))
        self._stack.callback(shutil.rmtree, socket_dir, True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            sockets = [socket_dir / f"hfi1-{chr(ord('a') + i)}.sock" for i in range(self.guests)]
            args = self.server_args
            if self.topology is not None:
                path = self.workdir / "topology.toml"
                path.write_text(self.topology(sockets))
                args = ["--topology", str(path), *args]
            server = VfnicServer("hfi1", sockets, log=self.workdir / "serve.log", args=args, start_timeout=120)
            self._stack.callback(server.stop)
            server.start()
            count = iter(range(self.guests))

            def start_guest(devices, **options) -> Guest:
                name = f"guest{next(count)}"
                guest = Guest(devices, workdir=self.workdir / name, name=name, **{**self.guest_options, **options})
                self._stack.callback(guest.close)
                return guest.start()

            return Fabric.boot(server, start_guest, socket_dir)
        except BaseException:
            self._stack.close()
            raise

    def __exit__(self, *exc) -> None:
        self._stack.close()


# -- reading what the tools print ---------------------------------------------------------

_PINGPONG = re.compile(r"(\d+) bytes in ([\d.]+) seconds = ([\d.]+) Mbit/sec\s+(\d+) iters in ([\d.]+) seconds "
                       r"= ([\d.]+) usec/iter")


def parse_pingpong(output: str) -> dict | None:
    """rdma-core's ibv_*_pingpong summary: bytes, seconds, Mbit/s, iters, usec/iter."""
    match = _PINGPONG.search(" ".join(output.split()))
    if not match:
        return None
    return {"bytes": int(match[1]), "seconds": float(match[2]), "mbit_s": float(match[3]),
            "iters": int(match[4]), "usec_per_iter": float(match[6])}


def parse_perftest(output: str) -> list[dict]:
    """perftest's result rows: a bandwidth table (#bytes #iterations BW peak
    BW average MsgRate, MiB/s and Mpps) or a latency table (#bytes
    #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%, usec)."""
    rows, kind = [], None
    for line in output.splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "#bytes":
            kind = "lat" if any(w.startswith("t_") for w in words) else "bw"
            continue
        if kind and re.fullmatch(r"\d+", words[0]) and len(words) >= 5:
            numbers = [float(w) for w in words if re.fullmatch(r"[\d.]+", w)]
            if kind == "bw":
                rows.append({"bytes": int(numbers[0]), "iterations": int(numbers[1]), "bw_peak_mib_s": numbers[2],
                             "bw_avg_mib_s": numbers[3], "msg_rate_mpps": numbers[4]})
            else:
                rows.append({"bytes": int(numbers[0]), "iterations": int(numbers[1]), "t_min_us": numbers[2],
                             "t_max_us": numbers[3], "t_typical_us": numbers[4], "t_avg_us": numbers[5]})
    return rows
