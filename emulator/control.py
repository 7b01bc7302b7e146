"""The control socket of a running `vfnic serve` (`--control PATH`): JSON
commands in the style of QMP, one JSON object per line.

    server -> {"vfnic": {"version": "0.1.0", "commands": [...]}}       greeting
    client -> {"execute": "fault-set", "arguments": {"link": "hfi1_0<->hfi1_1",
               "from": "hfi1_0", "kind": "drop", "rate": 0.01, "seed": 1}}
    server -> {"return": {...}}     or     {"error": {"class": "...", "desc": "..."}}

Commands (`help` lists them with their arguments):

    query           devices (socket, clients, ports), links (state,
                    counters per direction, faults, capture) and, with
                    serve --switch or --topology, the fabric: every node
                    (served HFI, switch, simulated HFI) with every port's
                    state, peer, link and counters, and a summary
    stats           what SIGUSR1 writes to --stats
    fault-set       link, from (the sending end), kind (drop, corrupt, delay,
                    duplicate, reorder), rate and/or count, seed, delay_ms
    fault-clear     link, [from]
    link-down       link, [seconds]: take the link down (for `seconds`)
    link-up         link
    capture-start   link, file: a pcap of what crosses the link
    capture-stop    link
    tune            [switch_interval_ms], [sched] (host, fifo, fifo-engines, slice), [slice_us],
                    [vcpu_sched] (host, idle): how the server's threads and its
                    clients' vCPU threads are scheduled from now on
                    (emulator/tuning.py; `host` undoes slice, fifo or idle);
                    [option]: a device option that changes while serving
                    (KEY=VALUE, or a list of them: hfi1's pio-launch=inline),
                    set on every served device

Links are named as `query` shows them ("hfi1_0<->hfi1_1") or by their index.
A malformed line, an unknown command or a bad argument gets an error reply
naming the problem; the connection and the server go on. The socket is mode
0600; each connection has a thread (at most 16) and is closed after five
idle minutes.

`vfnic ctl PATH COMMAND [KEY=VALUE ...]` is the client (`emulator/cli.py`).
"""
from __future__ import annotations

import json
import logging
import os
import select
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from devmodel import registry
from devmodel.fabric import Fault, FaultError, Link, LinkError

from . import tuning
from .server import close_unix_listener, listen_unix

log = logging.getLogger("vfnic.control")

VERSION = "0.1.0"
MAX_LINE = 64 * 1024
CLIENT_TIMEOUT_S = 300.0  # an idle connection is closed after this
MAX_CONNECTIONS = 16


class CommandError(Exception):
    """A command the control socket refuses; `kind` is the QMP-style class."""

    def __init__(self, desc: str, kind: str = "GenericError"):
        super().__init__(desc)
        self.kind = kind


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[[dict], object]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    doc: str


class Controller:
    """What the commands act on: the served devices (with their vfio-user
    servers) and the links between their ports. Thread-safe as far as the
    devices and links are."""

    def __init__(self, servers: list, stats: Callable[[], dict], nodes: list = (), links: list = (),
                 vcpus: tuning.ClientVcpus | None = None):
        self.servers = servers
        #: the connected QEMUs' vCPU threads' scheduling (`tune vcpu_sched=`)
        self.vcpus = vcpus
        #: the fabric's nodes that are no PCI function (switches, simulated HFIs: registry.FabricNode)
        self.nodes = list(nodes)
        #: the fabric's links besides the served devices' own (between switches, to simulated HFIs)
        self.fabric_links = list(links)
        self._stats = stats
        self.commands = {c.name: c for c in (
            Command("query", self.query, (), (), "devices, their ports, and the links between them"),
            Command("stats", lambda _a: self._stats(), (), (), "the statistics SIGUSR1 writes"),
            Command("fault-set", self.fault_set, ("link", "from", "kind"),
                    ("rate", "count", "seed", "delay_ms"), "add a fault to the packets one end sends"),
            Command("fault-clear", self.fault_clear, ("link",), ("from",), "remove a link's faults"),
            Command("link-down", self.link_down, ("link",), ("seconds",), "take a link down (for N seconds)"),
            Command("link-up", self.link_up, ("link",), (), "bring a link taken down back"),
            Command("capture-start", self.capture_start, ("link", "file"), (), "write a pcap of a link's packets"),
            Command("capture-stop", self.capture_stop, ("link",), (), "stop a link's capture"),
            Command("tune", self.tune, (), ("switch_interval_ms", "sched", "slice_us", "vcpu_sched", "option"),
                    "how the server's threads and its clients' vCPU threads are scheduled now (emulator/tuning.py), "
                    "and device options that change while serving (option=KEY=VALUE); returns the settings"),
            Command("help", self.help, (), (), "the commands and their arguments"),
        )}

    # -- dispatch ------------------------------------------------------------------------
    def execute(self, request: object) -> dict:
        """One request object -> one reply object. Never raises."""
        try:
            if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
                raise CommandError('a request is {"execute": COMMAND, "arguments": {...}}')
            name = request["execute"]
            command = self.commands.get(name)
            if command is None:
                raise CommandError(f"unknown command {name!r} (try help)", "CommandNotFound")
            arguments = request.get("arguments", {})
            if not isinstance(arguments, dict):
                raise CommandError("arguments must be a JSON object")
            unknown = sorted(set(arguments) - set(command.required) - set(command.optional))
            if unknown:
                raise CommandError(f"{name} takes no argument {', '.join(unknown)} "
                                   f"(arguments: {', '.join(command.required + command.optional) or 'none'})")
            missing = [a for a in command.required if a not in arguments]
            if missing:
                raise CommandError(f"{name} needs {', '.join(missing)}")
            return {"return": command.handler(arguments)}
        except CommandError as e:
            return {"error": {"class": e.kind, "desc": str(e)}}
        except (FaultError, LinkError, ValueError, TypeError, OSError) as e:
            return {"error": {"class": "GenericError", "desc": str(e)}}
        except Exception as e:  # a bug: report it, keep serving
            log.exception("control command failed")
            return {"error": {"class": "InternalError", "desc": f"{type(e).__name__}: {e}"}}

    # -- what there is ---------------------------------------------------------------------
    def links(self) -> list[Link]:
        seen: list[Link] = []
        ports = [port for server in self.servers for port in server.function.model.ports()]
        for link in [getattr(port, "link", None) for port in ports] + self.fabric_links:
            if link is not None and all(link is not s for s in seen):
                seen.append(link)
        return seen

    def link(self, name: object) -> Link:
        links = self.links()
        for i, link in enumerate(links):
            if name == link.name or name == i or name == str(i):
                return link
        known = ", ".join(f"{i}: {link.name}" for i, link in enumerate(links)) or "none"
        raise CommandError(f"no link {name!r} (links: {known})")

    # -- commands ------------------------------------------------------------------------------
    def query(self, _arguments: dict) -> dict:
        devices = []
        for server in self.servers:
            model = server.function.model
            devices.append({
                "socket": server.path,
                "device": model.name,
                "state": server.run_state.value,
                "clients": server.clients,
                "ports": [port.status() for port in model.ports()],
            })
        links = self.links()
        reply = {"devices": devices, "links": [link.describe() for link in links]}
        if self.nodes:
            nodes = [self._served_node(server, links) for server in self.servers]
            nodes += [node.status() for node in self.nodes]
            reply["nodes"] = nodes
            reply["summary"] = _summary(nodes, links)
            reply["switches"] = [node for node in nodes if node["kind"] == "switch"]
        return reply

    @staticmethod
    def _served_node(server, links: list[Link]) -> dict:
        """A served device as a node of the fabric: its ports (with the peer at the far end of each cable)."""
        model = server.function.model
        ports = []
        for number, port in enumerate(model.ports(), start=1):
            status = {"port": number, **port.status()}
            status.setdefault("state", status.get("logical_state"))
            link = getattr(port, "link", None)
            status["peer"] = link.peer_of(port.name) if link is not None else None
            ports.append(status)
        return {"name": ports[0]["name"] if ports else server.path, "kind": model.name, "socket": server.path,
                "clients": server.clients, "num_ports": len(ports), "ports": ports}

    def fault_set(self, a: dict) -> dict:
        link = self.link(a["link"])
        fault = Fault(a["kind"], rate=_number(a, "rate", float), count=_number(a, "count", int),
                      seed=_number(a, "seed", int) or 0, delay_ms=_number(a, "delay_ms", float) or 0.0)
        link.set_fault(str(a["from"]), fault)
        return link.describe()["faults"]

    def fault_clear(self, a: dict) -> dict:
        link = self.link(a["link"])
        link.clear_faults(str(a["from"]) if "from" in a else None)
        return link.describe()["faults"]

    def link_down(self, a: dict) -> dict:
        link = self.link(a["link"])
        link.take_down(_number(a, "seconds", float))
        return link.counters()

    def link_up(self, a: dict) -> dict:
        link = self.link(a["link"])
        link.bring_up()
        return link.counters()

    def capture_start(self, a: dict) -> dict:
        path = str(a["file"])
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise CommandError(f"capture directory {directory} does not exist")
        return self.link(a["link"]).start_capture(path).describe()

    def capture_stop(self, a: dict) -> dict:
        return self.link(a["link"]).stop_capture()

    def tune(self, a: dict) -> dict:
        interval = _number(a, "switch_interval_ms", float)
        slice_us = _number(a, "slice_us", int)
        options = _options(a.get("option", []))
        models = [server.function.model for server in self.servers]
        for key, value in options:  # every one checked before any is set
            for model in models:
                _check_option(model, key, value)
        try:
            if interval is not None:
                tuning.set_switch_interval(interval)
            if "sched" in a:
                tuning.apply_sched(str(a["sched"]), slice_us or tuning.DEFAULT_SLICE_US, reset=True)
            if "vcpu_sched" in a:
                if self.vcpus is None:
                    raise CommandError("this server does not schedule its clients' vCPU threads")
                self.vcpus.set_policy(str(a["vcpu_sched"]))
        except tuning.TuningError as e:
            raise CommandError(str(e)) from None
        for key, value in options:
            for model in models:
                model.set_option(key, value)
        reply: dict = {"switch_interval_ms": sys.getswitchinterval() * 1000}
        if options:
            reply["options"] = dict(options)
        if self.vcpus is not None:
            reply.update(self.vcpus.describe())
        return reply

    def help(self, _arguments: dict) -> dict:
        return {c.name: {"arguments": list(c.required), "optional": list(c.optional), "doc": c.doc}
                for c in self.commands.values()}


def _summary(nodes: list[dict], links: list[Link]) -> dict:
    """How many nodes of each kind, cabled ports in each state, and links up."""
    kinds: dict[str, int] = {}
    states: dict[str, int] = {}
    for node in nodes:
        kinds[node["kind"]] = kinds.get(node["kind"], 0) + 1
        for port in node["ports"]:
            if port.get("link"):
                states[str(port["state"])] = states.get(str(port["state"]), 0) + 1
    up = sum(1 for link in links if link.state.value == "up")
    return {"nodes": kinds, "cabled_ports": states, "links": len(links), "links_up": up}


def _options(value: object) -> list[tuple[str, str]]:
    """tune's `option`: "KEY=VALUE" or a list of them."""
    pairs = [value] if isinstance(value, str) else value
    if not isinstance(pairs, list) or not all(isinstance(p, str) and "=" in p for p in pairs):
        raise CommandError(f"option must be KEY=VALUE or a list of them, not {value!r}")
    return [tuple(p.split("=", 1)) for p in pairs]


def _check_option(model, key: str, value: str) -> None:
    """CommandError unless `model` knows the runtime option `key` and takes `value`."""
    entry = registry.DEVICES.get(model.name)
    known = entry.runtime_options if entry is not None else {}
    if key not in known:
        raise CommandError(f"{model.name} has no option {key!r} that changes while serving "
                           f"(those that do: {', '.join(known) or 'none'})")
    if value not in known[key][0]:
        raise CommandError(f"{model.name} option {key} takes {' or '.join(known[key][0])}, not {value!r}")


def _number(arguments: dict, key: str, kind: type) -> float | int | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CommandError(f"{key} must be a number, not {value!r}")
    try:
        number = kind(value)
    except ValueError:
        raise CommandError(f"{key} must be a number, not {value!r}") from None
    if kind is int and isinstance(value, float) and value != number:
        raise CommandError(f"{key} must be a whole number, not {value!r}")
    return number


class ControlServer:
    """Serves a Controller on an AF_UNIX socket, on a thread of its own."""

    def __init__(self, path: str, controller: Controller):
        self.path = path
        self.controller = controller
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()
        self._open = 0

    def bind(self) -> None:
        """Create the socket (mode 0600); raises ServerError with the reason."""
        self._listener = listen_unix(self.path, backlog=4)

    def start(self) -> None:
        if self._listener is None:
            self.bind()
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        backoff = 0.0
        while not self._stopping.is_set():
            readable, _, _ = select.select([self._listener, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            try:
                conn, _ = self._listener.accept()
            except OSError as e:  # out of descriptors: wait rather than spin
                backoff = min(1.0, backoff * 2 or 0.01)
                log.warning("control: accept failed: %s; retrying in %.2f s", e, backoff)
                select.select([self._wake_r], [], [], backoff)
                continue
            backoff = 0.0
            with self._count_lock:
                busy = self._open >= MAX_CONNECTIONS
                if not busy:
                    self._open += 1
            if busy:
                with conn:
                    _send(conn, {"error": {"class": "GenericError",
                                           "desc": f"more than {MAX_CONNECTIONS} control connections"}})
                continue
            threading.Thread(target=self._connection, args=(conn,), name="control-conn", daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._converse(conn)
        except OSError as e:
            log.info("control: connection ended: %s", e)
        finally:
            with self._count_lock:
                self._open -= 1

    def _converse(self, conn: socket.socket) -> None:
        conn.settimeout(CLIENT_TIMEOUT_S)
        _send(conn, {"vfnic": {"version": VERSION, "commands": sorted(self.controller.commands)}})
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    _send(conn, self._reply(line))
            if len(buffer) > MAX_LINE:
                _send(conn, {"error": {"class": "GenericError", "desc": f"request longer than {MAX_LINE} bytes"}})
                return

    def _reply(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return {"error": {"class": "GenericError", "desc": f"not JSON: {e}"}}
        reply = self.controller.execute(request)
        if "error" in reply:
            log.info("control: %s refused: %s", request.get("execute") if isinstance(request, dict) else request,
                     reply["error"]["desc"])
        return reply

    def stop(self) -> None:
        self._stopping.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        close_unix_listener(self._listener, self.path)
        self._listener = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def request(path: str, command: str, arguments: dict | None = None, timeout: float = 10.0) -> dict:
    """One command over a control socket; the reply object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        reader = sock.makefile("rb")
        json.loads(reader.readline())  # greeting
        sock.sendall(json.dumps({"execute": command, "arguments": arguments or {}}).encode() + b"\n")
        line = reader.readline()
        if not line:
            raise ConnectionError("the control socket closed without a reply")
        return json.loads(line)
