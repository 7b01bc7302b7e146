"""The lab's `vfnic` commands: up, down, status, exec, console, cp.

They reach `vfnic` (emulator/cli.py, which knows no lab and no device)
through the `vfnic.commands` entry points in pyproject.toml: each entry
point is a function `register(subparsers)` that adds its sub-command and
sets `run=function(args) -> exit status` on it. Importing this module is
cheap; what a command needs is imported when it runs.

Exit statuses: 0 done; `exec` passes the guest command's own status through
(124 if it timed out, as timeout(1)); 2 bad input (an unknown guest, a
kernel or module that does not exist or does not fit), with one line; 1
anything else that failed (with what was seen).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from emulator.cli import UsageError
from images.lab.up import TIMED_OUT_STATUS, StateDir, UpError, UpOptions, check_options, request


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=os.environ.get("VFNIC_FABRIC", "default"),
                        help="the fabric's name (default: $VFNIC_FABRIC or 'default'), to run several at once")


def _state(args) -> StateDir:
    try:
        return StateDir(args.name)
    except UpError as e:
        raise UsageError(str(e)) from None


# -- up -------------------------------------------------------------------------------

def register_up(sub) -> None:
    up = sub.add_parser("up", help="boot guests on an emulated fabric and keep them (until Ctrl-C or vfnic down)",
                        description="Boot guests, each with an emulated hfi1, on one fabric; start opafm; "
                                    "keep them until Ctrl-C or `vfnic down`. See docs/driver-developers.md.")
    _name(up)
    up.add_argument("--guests", type=int, default=2, help="how many guests (1 or 2; default 2)")
    up.add_argument("--kernel", default=os.environ.get("VFNIC_GUEST_KERNEL", "trixie"),
                    help="trixie (default), sid, a Debian linux-image .deb, or a kernel build tree "
                         "(arch/x86/boot/bzImage and modules_install'ed modules in TREE/modules-install)")
    up.add_argument("--module", action="append", default=[], metavar="FILE.ko",
                    help="a module to load in every guest instead of (or besides) the kernel's own; repeatable")
    up.add_argument("--no-sm", action="store_true", help="do not start opafm (ports stay Init)")
    up.add_argument("--init", default="vfnic", choices=("vfnic", "systemd"), help="the guests' PID 1")
    up.add_argument("--memory", default="1024M", help="each guest's RAM (default 1024M)")
    up.add_argument("--trace", metavar="FILE", help="write every MMIO access to FILE (vfnic trace-diff/-stats)")
    up.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an hfi1 device option for vfnic serve; repeatable")
    up.add_argument("--timeout", type=float, default=600.0,
                    help="seconds allowed for the guests to boot and their ports to come up (default 600)")
    up.add_argument("-d", "--detach", action="store_true",
                    help="return once the fabric is ready, leaving it running in the background")
    up.set_defaults(run=run_up)


def options_of(args) -> UpOptions:
    return UpOptions(name=args.name, guests=args.guests, kernel=args.kernel, modules=tuple(args.module),
                     subnet_manager=not args.no_sm, init=args.init, memory=args.memory, trace=args.trace,
                     server_options=tuple(args.option), timeout=args.timeout)


def run_up(args) -> int:
    options = options_of(args)
    try:
        check_options(options)
    except UpError as e:
        raise UsageError(str(e)) from None
    if args.detach:
        return detach(args)
    from images.lab.up import run_up as run
    try:
        return run(options)
    except UpError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # a server, QEMU, agent or fabric failure: say what was seen
        print(f"vfnic up: error: {e}", file=sys.stderr)
        return 1


def up_argv(args) -> list[str]:
    """The `vfnic up` command line (without --detach) that does what `args` say,
    rebuilt from them, not from sys.argv: a value that reads "-d" stays a value."""
    argv = ["up", f"--name={args.name}", f"--guests={args.guests}", f"--kernel={args.kernel}",
            f"--init={args.init}", f"--memory={args.memory}", f"--timeout={args.timeout}"]
    argv += [f"--module={m}" for m in args.module] + [f"--option={o}" for o in args.option]
    if args.no_sm:
        argv.append("--no-sm")
    if args.trace:
        argv.append(f"--trace={args.trace}")
    return argv


def detach(args) -> int:
    """Run `vfnic up` (without -d) as a session of its own; return once its fabric is ready."""
    from images.lab.up import Recorded, cache_root, describe
    state_dir = _state(args)
    argv = up_argv(args)
    log = cache_root() / "logs" / f"{args.name}.up.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "emulator.cli", *argv], stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if child.poll() is not None:
                sys.stderr.write(log.read_text(errors="replace"))
                return child.returncode
            state = state_dir.read() or {}
            owner = state.get("owner", {})
            if state.get("phase") == "ready" and owner.get("pid") == child.pid:
                print(describe(state), flush=True)
                print(f"  (running in the background as PID {child.pid}; its output: {log})")
                return 0
            time.sleep(0.25)
    except KeyboardInterrupt:
        Recorded.of(child.pid, "vfnic up").stop(grace=60)
        return 130


# -- down, status ----------------------------------------------------------------------

def register_down(sub) -> None:
    down = sub.add_parser("down", help="stop a fabric started by vfnic up, and everything it started")
    _name(down)
    down.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a clean stop")
    down.set_defaults(run=run_down)


def run_down(args) -> int:
    state_dir = _state(args)
    state = state_dir.read()
    if state is None:
        print(f"vfnic down: no fabric {args.name!r} is up", file=sys.stderr)
        return 0
    owner = state_dir.owner(state)
    if owner is not None and owner.alive():
        try:
            request(state_dir, {"op": "down"}, timeout=30)
        except UpError:
            owner.stop(grace=args.timeout)  # it does not answer: SIGTERM makes it clean up too
        deadline = time.monotonic() + args.timeout
        while owner.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if owner.alive():
            owner.stop()
    leftovers = state_dir.reap()
    for p in leftovers:
        print(f"vfnic down: stopped {p.what} (PID {p.pid}), which `vfnic up` had left", file=sys.stderr)
    print(f"vfnic down: fabric {args.name!r} stopped", file=sys.stderr)
    return 0


def register_status(sub) -> None:
    status = sub.add_parser("status", help="the guests and sockets of a fabric started by vfnic up")
    _name(status)
    status.add_argument("--json", action="store_true", help="the whole state as JSON")
    status.set_defaults(run=run_status)


def run_status(args) -> int:
    import json

    from images.lab.up import describe
    state_dir = _state(args)
    state = state_dir.running()
    if state is None:
        print(f"vfnic status: no fabric {args.name!r} is up", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({**state, "state_dir": str(state_dir.path)}, indent=1))
    elif state.get("phase") != "ready":
        print(f"fabric {args.name!r} is starting (vfnic up PID {state['owner']['pid']})")
    else:
        print(describe(state))
    return 0


# -- exec, cp, console -----------------------------------------------------------------

def _on_fabric(args, header: dict, payload: bytes = b"", timeout: float | None = None):
    try:
        return request(_state(args), header, payload, timeout)
    except UpError as e:
        raise UsageError(str(e)) from None


def register_exec(sub) -> None:
    run = sub.add_parser("exec", help="run a command in a guest of vfnic up (its status and output passed through)")
    _name(run)
    run.add_argument("--timeout", type=float, default=600.0, help="seconds before the command is killed")
    run.add_argument("-i", "--stdin", action="store_true", help="pass this command's standard input to it")
    run.add_argument("guest", metavar="GUEST", help="guest0, guest1, ...")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                     help="the command, run by the guest's shell (as ssh does)")
    run.set_defaults(run=run_exec)


def run_exec(args) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise UsageError("exec: no command given (vfnic exec GUEST -- CMD ...)")
    command = " ".join(words)  # the guest's shell parses it, as ssh's remote side does
    payload = sys.stdin.buffer.read() if args.stdin else b""
    header, output = _on_fabric(args, {"op": "exec", "guest": args.guest, "command": command,
                                       "timeout": args.timeout}, payload)
    sys.stdout.buffer.write(output[:header["stdout"]])
    sys.stdout.flush()
    sys.stderr.buffer.write(output[header["stdout"]:])
    sys.stderr.flush()
    if header.get("timed_out"):
        print(f"vfnic exec: {command!r} timed out after {args.timeout:.0f} s in {args.guest}", file=sys.stderr)
        return TIMED_OUT_STATUS
    return int(header["rc"])


def register_cp(sub) -> None:
    cp = sub.add_parser("cp", help="copy a file into or out of a guest of vfnic up (GUEST:PATH on one side)")
    _name(cp)
    cp.add_argument("source", metavar="SRC", help="a host file, or GUEST:PATH")
    cp.add_argument("destination", metavar="DST", help="a host path, or GUEST:PATH (a directory if it ends in /)")
    cp.set_defaults(run=run_cp)


def _guest_path(spec: str) -> tuple[str, str] | None:
    guest, sep, path = spec.partition(":")
    return (guest, path) if sep and guest and "/" not in guest and path.startswith("/") else None


def run_cp(args) -> int:
    source, destination = _guest_path(args.source), _guest_path(args.destination)
    if (source is None) == (destination is None):
        raise UsageError("cp: exactly one of SRC and DST is GUEST:/PATH (e.g. vfnic cp hfi1.ko guest0:/tmp/)")
    if destination is not None:
        local = Path(args.source)
        if not local.is_file():
            raise UsageError(f"cp: {local} is not a file")
        guest, path = destination
        if path.endswith("/"):
            path += local.name
        _on_fabric(args, {"op": "put", "guest": guest, "path": path, "mode": local.stat().st_mode & 0o777},
                   local.read_bytes())
        return 0
    guest, path = source
    _, data = _on_fabric(args, {"op": "get", "guest": guest, "path": path})
    local = Path(args.destination)
    if local.is_dir() or args.destination.endswith("/"):
        local = local / Path(path).name
    if str(local) == "-":
        sys.stdout.buffer.write(data)
    else:
        local.write_bytes(data)
    return 0


def register_console(sub) -> None:
    console = sub.add_parser("console", help="a guest's serial console (kernel and init messages), followed")
    _name(console)
    console.add_argument("guest", metavar="GUEST")
    console.add_argument("--no-follow", action="store_true", help="print what is there and return")
    console.set_defaults(run=run_console)


def run_console(args) -> int:
    state = _state(args).running()
    if state is None:
        raise UsageError(f"no fabric {args.name!r} is up")
    guests = {g["name"]: g for g in state.get("guests", [])}
    if args.guest not in guests:
        raise UsageError(f"no guest {args.guest!r} in fabric {args.name!r} (guests: {', '.join(guests)})")
    path = Path(guests[args.guest]["console_log"])
    print(f"--- {args.guest}'s console ({path}); the serial port has no login, `vfnic exec` runs commands; "
          f"Ctrl-C leaves ---", file=sys.stderr, flush=True)
    owner = _state(args).owner(state)
    try:
        with open(path, "rb") as console:
            while True:
                chunk = console.read(65536)
                if chunk:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                elif args.no_follow or not owner.alive():
                    return 0
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    except FileNotFoundError:
        raise UsageError(f"{path} is gone (the fabric stopped)") from None

