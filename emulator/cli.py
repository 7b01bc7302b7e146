"""`vfnic` command line.

    vfnic serve --device NAME --socket PATH [--socket PATH ...] [--option KEY=VALUE ...]
                [--switch [PORTS] | --cable-listen HOST:PORT | --cable-connect HOST:PORT]
                [--control PATH] [--trace FILE] [--stats FILE] [--profile]
                [--no-write-multiple] [--switch-interval MS] [--sched host|fifo|fifo-engines|slice]
                [--vcpu-sched host|idle|auto] [-v]
    vfnic serve --device NAME --topology FILE [--option ...] [--control PATH] ...
    vfnic ctl PATH COMMAND [KEY=VALUE ...]
    vfnic trace-diff A B [--ignore-values REGEX] [--most N]
    vfnic trace-stats FILE
    vfnic COMMAND --output DIR          (a device's guest files, e.g. hfi1's `firmware`)
    vfnic up | down | status | exec | cp | console ...   (installed commands, see below)

`serve` serves one device per socket, in the foreground, until SIGINT or
SIGTERM, then removes its sockets. Devices with ports share one fabric in
this process: two hfi1 sockets are two HFIs cabled back to back; a lone hfi1
trains with its built-in link partner. With `--switch` every device is
cabled to a port of one edge switch instead (PORTS ports, by default a few
more than the sockets; docs/switch.md), whose state, ports and counters
`ctl C query` and `--stats` include. `--topology FILE` serves the fabric a
topology file describes (docs/topology.md): switches, the HFIs it serves
and their sockets, simulated HFIs, and the cables between them. With
`--cable-listen` or `--cable-connect` the one device's port is cabled to
the device of another `vfnic serve`, on this host or another, over TCP
(emulator/cable.py, docs/fabric.md). `--control` opens the control socket
(emulator/control.py) that `ctl` talks to: `vfnic ctl C query`, `vfnic ctl
C fault-set link=0 from=hfi1_0 kind=drop rate=0.01`, `vfnic ctl C help`.

A device whose guests need files of vfnic's (devmodel/registry.py,
`GuestFiles`) adds a command that writes them: `vfnic firmware --output DIR`
writes the four files hfi1 requests on RTL silicon (`--option icode=silicon`),
to copy into a guest's /lib/firmware.

`trace-diff` compares two MMIO traces (`serve --trace`) by what the driver
did, ignoring timing and polling repeats, and prints the first and every
differing access (exit status 0 the same, 1 different, like diff(1));
`trace-stats` counts accesses and time per register block
(emulator/trace_compare.py). `--profile` counts and times accesses and
interrupt delivery cheaply, into `--stats` (emulator/profile.py);
`--switch-interval` and `--sched` set how the server's threads are
scheduled (emulator/tuning.py, docs/operations.md).

Other packages add commands through the `vfnic.commands` entry points
(importlib.metadata): each is a function `register(subparsers)` that adds
a sub-command and sets `run=function(args) -> status` on it. vfnic's own
lab registers `up`, `down`, `status`, `exec`, `cp` and `console` this way
(images/lab/commands.py), so this module knows no lab and no device.

Bad arguments exit with status 2 and one line; a command the control socket
refuses exits with status 1 and one line saying why.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import textwrap
import threading

from common.threads import name_native_thread
from devmodel import registry
from devmodel.fabric import topology as fabric_topology
from devmodel.fabric.remote_cable import CableRole

from . import cable as cable_transport
from . import control, tuning
from .pci.function import PciFunction
from .server import Server, ServerError
from .trace import MmioTrace, TraceError, read_trace
from .trace_compare import block_costs, diff, format_diff, format_stats


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        raise UsageError(message)


def device_options_help() -> str:
    """The devices' --option keys, their values (default first) and what they do."""
    lines = ["device options (--option KEY=VALUE):"]
    for device, entry in sorted(registry.DEVICES.items()):
        for key, (allowed, default, doc) in {**entry.options, **entry.runtime_options}.items():
            values = "|".join([default, *(v for v in allowed if v != default)])
            lines.append(f"  {device} {key}={values}")
            if key in entry.runtime_options:
                doc += f"; changes while serving: `vfnic ctl C tune option={key}=VALUE`"
            lines += textwrap.wrap(doc, 74, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vfnic", description="vfio-user NIC emulator")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="serve emulated devices on vfio-user sockets",
                           epilog=device_options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--device", required=True, help=f"device model ({', '.join(sorted(registry.DEVICES))})")
    serve.add_argument("--socket", action="append", default=[],
                       help="AF_UNIX socket path; repeat for more devices (not with --topology)")
    serve.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a device option, e.g. hfi1's link-partner=none; repeat for more")
    serve.add_argument("--switch", nargs="?", const=0, type=int, metavar="PORTS",
                       help="cable every device to one edge switch (of PORTS ports; default: a few spare)")
    serve.add_argument("--topology", metavar="FILE",
                       help="serve the fabric FILE describes: switches, HFIs on sockets, simulated HFIs, cables "
                            "(docs/topology.md)")
    cable = serve.add_mutually_exclusive_group()
    cable.add_argument("--cable-listen", metavar="HOST:PORT",
                       help="cable the device to the device of the vfnic serve that connects here (TCP)")
    cable.add_argument("--cable-connect", metavar="HOST:PORT",
                       help="cable the device to the device of the vfnic serve listening there (TCP)")
    serve.add_argument("--stats", help="write device statistics as JSON here on exit and on SIGUSR1")
    serve.add_argument("--control", metavar="PATH", help="open a control socket here (see vfnic ctl)")
    serve.add_argument("--trace", metavar="FILE", help="write every MMIO access, with the register's name, here")
    serve.add_argument("--no-write-multiple", action="store_true", help="do not offer REGION_WRITE_MULTI to clients")
    serve.add_argument("--profile", action="store_true",
                       help="count and time every BAR access and interrupt, by register, in --stats")
    serve.add_argument("--switch-interval", type=float, metavar="MS",
                       help="Python's GIL switch interval in milliseconds (emulator/tuning.py)")
    serve.add_argument("--sched", choices=tuning.SCHED_CHOICES,
                       help=f"scheduling of the server's threads: the host's, SCHED_FIFO 1 (all, or all but the "
                            f"socket threads), a short EEVDF slice (default {tuning.DEFAULT_SCHED})")
    serve.add_argument("--sched-slice-us", type=int, default=tuning.DEFAULT_SLICE_US, metavar="US",
                       help="the slice of --sched slice (default %(default)s)")
    serve.add_argument("--vcpu-sched", choices=tuning.VCPU_SCHED_CHOICES, default=tuning.DEFAULT_VCPU_SCHED,
                       help="scheduling of the connected QEMUs' vCPU threads: the host's; SCHED_IDLE, so the "
                            "server's and QEMU's helper threads never wait for a spinning vCPU; or that while the "
                            "devices move little data and the host's during bulk transfers (default %(default)s; "
                            "emulator/tuning.py)")
    serve.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    ctl = sub.add_parser("ctl", help="send a command to a running vfnic serve's control socket")
    ctl.add_argument("path", help="the control socket (vfnic serve --control PATH)")
    ctl.add_argument("name", metavar="COMMAND", help="query, stats, fault-set, ..., help")
    ctl.add_argument("arguments", nargs="*", metavar="KEY=VALUE", help="the command's arguments")
    tdiff = sub.add_parser("trace-diff", help="compare two MMIO traces (serve --trace), timing and polling aside")
    tdiff.add_argument("a", metavar="A", help="a trace file")
    tdiff.add_argument("b", metavar="B", help="another trace file")
    tdiff.add_argument("--ignore-values", metavar="REGEX",
                       help="compare registers whose names match only by name, not value (e.g. DMA addresses)")
    tdiff.add_argument("--most", type=int, metavar="N", help="print at most N differing stretches")
    tstats = sub.add_parser("trace-stats", help="accesses and time per register block of an MMIO trace")
    tstats.add_argument("file", metavar="FILE", help="a trace file")
    add_installed_commands(sub)
    for device, entry in sorted(registry.DEVICES.items()):
        if entry.guest_files is not None:
            files = sub.add_parser(entry.guest_files.command, help=entry.guest_files.help)
            files.add_argument("--output", required=True, metavar="DIR",
                               help=f"where to write them (the guest's /{entry.guest_files.directory})")
            files.set_defaults(device=device)
    return parser


#: the entry point group other packages register commands in
COMMANDS_GROUP = "vfnic.commands"


def add_installed_commands(sub) -> None:
    """Let each `vfnic.commands` entry point add its sub-command; one that
    cannot be loaded is reported and left out, never fatal to the others."""
    from importlib.metadata import entry_points
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        if entry.name in sub.choices:
            continue  # two installs of one package (an editable and a plain one) register twice
        try:
            entry.load()(sub)
        except Exception as e:  # a broken plugin must not take `vfnic serve` down with it
            print(f"vfnic: warning: command {entry.name!r} ({entry.value}) cannot be loaded: {e}", file=sys.stderr)


def _stats(servers: list[Server], nodes: list = ()) -> dict:
    return {**{s.path: {"clients": s.clients, "resets": s.function.resets,
                        **({"shared_memory_trapped": s.function.shared_trapped} if s.function.shared else {}),
                        "messages": dict(s.connection.counts) if s.connection else {},
                        "refused_messages": s.refused.count,
                        **s.function.model.stats(),
                        **({"access_profile": s.function.profile_stats()} if s.function.profile else {})}
                    for s in servers},
            **{f"{node.name} ({node.kind})": node.stats() for node in nodes}}


def _write_stats(path: str | None, servers: list[Server], nodes: list = ()) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(_stats(servers, nodes), f, indent=2)
        os.replace(tmp, path)


def serve(args: argparse.Namespace) -> int:
    if args.device not in registry.DEVICES:
        raise UsageError(f"unknown device {args.device!r} (known: {', '.join(sorted(registry.DEVICES))})")
    if args.topology is not None and (args.socket or args.switch is not None):
        raise UsageError("--topology names the sockets and switches itself: no --socket or --switch with it")
    if args.topology is None and not args.socket:
        raise UsageError("the following arguments are required: --socket (or --topology)")
    if len(set(args.socket)) != len(args.socket):
        raise UsageError("the same --socket is given twice")
    try:
        registry.parse_options(args.device, args.option)
    except registry.OptionError as e:
        raise UsageError(str(e)) from None
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.switch_interval is not None:
            tuning.set_switch_interval(args.switch_interval)
        tuning.sched_attr(args.sched or tuning.DEFAULT_SCHED, args.sched_slice_us)
    except tuning.TuningError as e:
        raise UsageError(str(e)) from None
    try:
        trace = MmioTrace(args.trace) if args.trace else None
    except OSError as e:
        raise UsageError(f"cannot write the trace {args.trace}: {e.strerror}") from None
    servers, cables = [], []
    vcpus = tuning.ClientVcpus(args.vcpu_sched, activity=lambda: sum(s.function.dma.moved for s in servers))
    try:
        remote = _remote_cable(args)
        if remote is not None:
            models, cables = _create_remote_cabled(args, *remote)
            sockets, nodes, links = args.socket, [], []
        else:
            sockets, models, nodes, links = _fabric(args)
    except UsageError:
        if trace is not None:
            trace.close()
        raise
    try:
        for path, model in zip(sockets, models):
            ports = model.ports()
            function = PciFunction(model, name=ports[0].name if ports else os.path.basename(path))
            function.trace = trace
            if args.profile:
                function.enable_profile()
            server = Server(path, function, write_multiple=not args.no_write_multiple, vcpus=vcpus)
            servers.append(server)
            server.bind()
        controller = None
        if args.control:
            controller = control.ControlServer(args.control, control.Controller(
                servers, lambda: _stats(servers, nodes), nodes, links, vcpus=vcpus))
            controller.bind()
    except ServerError as e:
        for s in servers:
            s.close()
            s.function.close()
        for model in models[len(servers):]:
            model.close()
        for node in [*cables, *nodes]:
            node.close()
        if trace is not None:
            trace.close()
        raise UsageError(str(e)) from None

    def stop(signum, frame):
        for s in servers:
            s.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, lambda *_: _write_stats(args.stats, servers, nodes))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def serving(server: Server, name: str) -> None:
        name_native_thread(name)
        server.serve_forever()

    threads = [threading.Thread(target=serving, args=(s, f"{tuning.SOCKET_THREAD_PREFIX}{i}"), name=f"serve-{i}",
                                daemon=True)
               for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    if controller is not None:
        controller.start()
    try:
        tuning.apply_sched(args.sched or tuning.DEFAULT_SCHED, args.sched_slice_us,  # every thread runs by now
                           socket_threads=frozenset(t.native_id for t in threads))
    except tuning.TuningError as e:
        if args.sched:  # asked for: say so; the default quietly falls back (an unprivileged user)
            print(f"vfnic: warning: {e}; the host's scheduling stays", file=sys.stderr, flush=True)
        else:
            logging.getLogger("vfnic.serve").info("%s; the host's scheduling stays", e)
    control_note = f", control socket {args.control}" if args.control else ""
    cable_note = "".join(f", cable {t['role']} {t['address']}" for t in (c.status()["transport"] for c in cables))
    print(f"vfnic: serving {args.device} on {', '.join(sockets)}{cable_note}{control_note}", file=sys.stderr,
          flush=True)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    vcpus.close()
    if controller is not None:
        controller.stop()
    if trace is not None:
        trace.close()
    for s in servers:
        s.close()
        s.function.close()
    for node in [*cables, *nodes]:  # after the devices: a port going offline tells the far side first
        node.close()
    _write_stats(args.stats, servers, nodes)
    for s in servers:
        undeclared = s.function.model.stats().get("undeclared_csr_accesses", 0)
        print(f"vfnic: {s.path}: {s.clients} client(s), {undeclared} undeclared register access(es)", file=sys.stderr)
    return 0


def _fabric(args: argparse.Namespace) -> tuple[list[str], list, list, list]:
    """The sockets, the devices served on them, the fabric's other nodes
    (switches, simulated HFIs) and its links, as --topology, --switch or
    the device's own back-to-back cabling make them."""
    if args.topology is None and args.switch is None:
        return args.socket, registry.create_fabric(args.device, len(args.socket), args.option), [], []
    try:
        if args.topology is not None:
            topology = fabric_topology.read_topology(args.topology)
            if not topology.hfis:
                raise UsageError(f"{args.topology}: it serves no HFI ([hfis] names none)")
        else:
            topology = fabric_topology.edge_switch(args.socket, args.switch)
        fabric = registry.create_topology_fabric(args.device, topology, args.option)
    except (fabric_topology.TopologyError, registry.OptionError) as e:
        raise UsageError(str(e)) from None
    return fabric.sockets, fabric.devices, fabric.nodes, fabric.links


def _remote_cable(args: argparse.Namespace) -> tuple[CableRole, tuple[str, int]] | None:
    """--cable-listen/--cable-connect: (role, address), or None."""
    text = args.cable_listen or args.cable_connect
    if text is None:
        return None
    role = CableRole.LISTEN if args.cable_listen else CableRole.CONNECT
    if args.topology is not None:
        raise UsageError(f"--cable-{role.value} and --topology: the topology file cables its own ports")
    if len(args.socket) != 1:
        raise UsageError(f"--cable-{role.value} cables one device: give one --socket, not {len(args.socket)}")
    if args.switch is not None:
        raise UsageError(f"--cable-{role.value} and --switch: a device has one port, cabled one way")
    try:
        return role, cable_transport.parse_address(text, listening=role is CableRole.LISTEN)
    except ValueError as e:
        raise UsageError(f"--cable-{role.value}: {e}") from None


def _create_remote_cabled(args: argparse.Namespace, role: CableRole, address: tuple[str, int]) -> tuple[list, list]:
    try:
        return registry.create_remote_cabled(args.device, args.option, role, address, cable_transport.open_tcp)
    except registry.OptionError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"--cable-{role.value} {cable_transport.format_address(address)}: "
                         f"{e.strerror or e}") from None


def ctl(args: argparse.Namespace) -> int:
    arguments = {}
    for pair in args.arguments:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {pair!r} is not KEY=VALUE")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value  # a plain string: a link name, a file
    try:
        reply = control.request(args.path, args.name, arguments)
    except (OSError, ValueError) as e:
        print(f"vfnic ctl: cannot talk to {args.path}: {e}", file=sys.stderr)
        return 1
    if "error" in reply:
        print(f"vfnic ctl: {args.name}: {reply['error']['desc']}", file=sys.stderr)
        return 1
    print(json.dumps(reply.get("return"), indent=2))
    return 0


def write_guest_files(args: argparse.Namespace) -> int:
    import hashlib

    try:
        paths = registry.write_guest_files(args.device, args.output)
    except OSError as e:
        raise UsageError(f"cannot write {args.command} into {args.output}: {e.strerror}") from None
    for path in paths:
        print(f"{path}  {path.stat().st_size} bytes  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


def _read(path: str):
    try:
        return read_trace(path)
    except TraceError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None


def trace_diff(args: argparse.Namespace) -> int:
    try:
        ignore = re.compile(args.ignore_values) if args.ignore_values else None
    except re.error as e:
        raise UsageError(f"--ignore-values {args.ignore_values!r}: {e}") from None
    if args.most is not None and args.most < 1:
        raise UsageError("--most takes a number of at least 1")
    result = diff(_read(args.a), _read(args.b), ignore)
    print("\n".join(format_diff(result, args.a, args.b, args.most)))
    return 0 if result.same else 1


def trace_stats(args: argparse.Namespace) -> int:
    accesses = _read(args.file)
    span = accesses[-1].time - accesses[0].time if accesses else 0.0
    print(f"{args.file}: {len(accesses)} accesses over {span:.3f} s")
    print("\n".join(format_stats(block_costs(accesses))))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        commands = {"ctl": ctl, "serve": serve, "trace-diff": trace_diff, "trace-stats": trace_stats}
        if hasattr(args, "run"):
            return args.run(args)
        return commands.get(args.command, write_guest_files)(args)
    except UsageError as e:
        print(f"vfnic: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vfnic ctl ... | head`: the reader has gone, nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # `python -m emulator.cli`: run the importable module's main, so that the
    # commands of entry points (which import emulator.cli) and this one share
    # one UsageError.
    from emulator.cli import main as module_main
    sys.exit(module_main())
