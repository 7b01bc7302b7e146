"""`vfnic` command line.

    vfnic serve --device NAME --socket PATH [--socket PATH ...] [--option KEY=VALUE ...] [--stats FILE] [-v]

Serves one device per socket, in the foreground, until SIGINT or SIGTERM,
then removes its sockets. Devices with ports share one fabric in this
process: two hfi1 sockets are two HFIs cabled back to back; a lone hfi1
trains with its built-in link partner. Bad arguments exit with status 2 and
one line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from devmodel import registry

from .pci.function import PciFunction
from .server import Server, ServerError


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vfnic", description="vfio-user NIC emulator")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="serve emulated devices on vfio-user sockets")
    serve.add_argument("--device", required=True, help=f"device model ({', '.join(sorted(registry.DEVICES))})")
    serve.add_argument("--socket", required=True, action="append", help="AF_UNIX socket path; repeat for more devices")
    serve.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a device option, e.g. hfi1's link-partner=none; repeat for more")
    serve.add_argument("--stats", help="write device statistics as JSON here on exit and on SIGUSR1")
    serve.add_argument("--no-write-multiple", action="store_true", help="do not offer REGION_WRITE_MULTI to clients")
    serve.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    return parser


def _stats(servers: list[Server]) -> dict:
    return {s.path: {"clients": s.clients, "resets": s.function.resets,
                     "messages": dict(s.connection.counts) if s.connection else {},
                     **s.function.model.stats()} for s in servers}


def _write_stats(path: str | None, servers: list[Server]) -> None:
    if path:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(_stats(servers), f, indent=2)
        os.replace(tmp, path)


def serve(args: argparse.Namespace) -> int:
    if args.device not in registry.DEVICES:
        raise UsageError(f"unknown device {args.device!r} (known: {', '.join(sorted(registry.DEVICES))})")
    if len(set(args.socket)) != len(args.socket):
        raise UsageError("the same --socket is given twice")
    try:
        registry.parse_options(args.device, args.option)
    except registry.OptionError as e:
        raise UsageError(str(e)) from None
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    servers = []
    models = registry.create_fabric(args.device, len(args.socket), args.option)
    try:
        for path, model in zip(args.socket, models):
            server = Server(path, PciFunction(model), write_multiple=not args.no_write_multiple)
            servers.append(server)
            server.bind()
    except ServerError as e:
        for s in servers:
            s.close()
            s.function.close()
        for model in models[len(servers):]:
            model.close()
        raise UsageError(str(e)) from None

    def stop(signum, frame):
        for s in servers:
            s.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, lambda *_: _write_stats(args.stats, servers))
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    threads = [threading.Thread(target=s.serve_forever, name=f"serve-{i}", daemon=True) for i, s in enumerate(servers)]
    for t in threads:
        t.start()
    print(f"vfnic: serving {args.device} on {', '.join(args.socket)}", file=sys.stderr, flush=True)
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    for s in servers:
        s.close()
        s.function.close()
    _write_stats(args.stats, servers)
    for s in servers:
        undeclared = s.function.model.stats().get("undeclared_csr_accesses", 0)
        print(f"vfnic: {s.path}: {s.clients} client(s), {undeclared} undeclared register access(es)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return serve(args)
    except UsageError as e:
        print(f"vfnic: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
