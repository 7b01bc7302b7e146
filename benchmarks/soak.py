"""Soak: a server that keeps serving whatever its guests do, for long.

  messages    random, valid and mutated vfio-user messages against a served
              testdev and a served hfi1 (half each), from a client that now
              and then hangs up mid-message (testkit/fuzzing.py)
  sequences   random BAR, PIO, SDMA descriptor and receive-ring sequences
              against two hfi1 models on one fabric, with the driver's
              recovery after each (testkit/hfi1/datapath_fuzz.py): no
              internal error, no hang, no write outside what the guest
              pointed at (accesses outside guest memory are refused, counted)
  qemu        guests booted one after another against one `vfnic serve
              --device hfi1`, each to port Init, each SIGKILLed; the server's
              open fds and RSS after the last cycle against cycle 10
  reload      `rmmod hfi1; modprobe hfi1` in one guest, each back to port
              Init with the port up (RTL silicon, the built-in link partner)

Defaults are the issue's: 10^6 messages, 10^6 sequences, 100 QEMU cycles,
100 reloads (about an hour and a half here); CI runs 10^5, 10^5, 10 and 3
as tests (test_fuzz, test_datapath_fuzz, guest-tests/test_soak.py,
guest-tests/test_hfi1_silicon.py). Figures printed; exit status 1 if a check failed.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import traceback
from pathlib import Path

from images.lab.server import VfnicServer
from images.lab.soak import guest_factory, reload_cycles, sigkill_cycles, within
from images.provision.guest_image import build
from images.provision.qemu import Qemu
from testkit.fuzzing import fuzz_messages
from testkit.hfi1.datapath_fuzz import run_datapath_fuzz
from testkit.served import ServedDevice


def messages(count: int) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory(prefix="vfnic-soak-") as tmp:
        for device in ("testdev", "hfi1"):
            served = ServedDevice(f"{tmp}/{device}.sock", device)
            started = time.monotonic()
            try:
                outcome = fuzz_messages(served, count // 2)
                outcome.pop("client").close()
                alive = served.thread.is_alive()
            finally:
                served.stop()
            outcome.update(seconds=round(time.monotonic() - started, 1), server_alive=alive)
            figures[device] = outcome
            print(f"  {device}: {outcome}", flush=True)
    return figures


def sequences(count: int) -> dict:
    started = time.monotonic()
    outcome = run_datapath_fuzz(count)
    outcome["seconds"] = round(time.monotonic() - started, 1)
    print(f"  {outcome}", flush=True)
    return outcome


#: reloads with the port up: RTL silicon mode, the built-in link partner
RELOAD_OPTIONS, RELOAD_STATE = ["--option", "icode=silicon"], "2: INIT"


def qemu_cycles(count: int, workdir: Path) -> dict:
    image, qemu = build(), Qemu.locate()
    server = VfnicServer("hfi1", [workdir / "q.sock"], log=workdir / "serve-qemu.log",
                         args=["--control", str(workdir / "q-control.sock")]).start()
    try:
        prints = sigkill_cycles(server, guest_factory(image, qemu, server, workdir / "qemu"), count,
                                report=lambda c, s, fp: print(f"  cycle {c}: Init in {s:.0f} s, {fp.fds} fds, "
                                                              f"{fp.rss_kib} KiB RSS", flush=True))
        alive = server.process.poll() is None
    finally:
        server.stop()
    reference, last = prints[min(9, len(prints) - 1)], prints[-1]
    return {"cycles": count, "server_alive": alive, "fds": (reference.fds, last.fds),
            "rss_kib": (reference.rss_kib, last.rss_kib), "within_10_percent": within(last, reference)}


def reloads(count: int, workdir: Path) -> dict:
    options, state = RELOAD_OPTIONS, RELOAD_STATE
    image, qemu = build(), Qemu.locate()
    server = VfnicServer("hfi1", [workdir / "r.sock"], log=workdir / "serve-reload.log", args=options).start()
    try:
        guest = guest_factory(image, qemu, server, workdir / "reload")(0)
        try:
            seconds = reload_cycles(guest, count, state,
                                    report=lambda c, s: print(f"  reload {c}: {state} in {s:.1f} s", flush=True))
        finally:
            guest.close()
    finally:
        server.stop()
    return {"cycles": count, "state": state, "options": " ".join(options),
            "seconds_mean": round(sum(seconds) / len(seconds), 1), "seconds_max": round(max(seconds), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--sequences", type=int, default=1_000_000)
    parser.add_argument("--qemu-cycles", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=100)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="vfnic-bench-soak-"))
    # The in-process servers log every message they refuse: to a file, not the terminal.
    logging.basicConfig(filename=workdir / "servers.log", level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print(f"the in-process servers' log: {workdir / 'servers.log'}", flush=True)
    phases = [("messages", args.messages, lambda: messages(args.messages)),
              ("sequences", args.sequences, lambda: sequences(args.sequences)),
              ("qemu", args.qemu_cycles, lambda: qemu_cycles(args.qemu_cycles, workdir)),
              ("reload", args.reloads, lambda: reloads(args.reloads, workdir))]
    results, failed = {}, []
    for name, count, phase in phases:
        if count <= 0:
            continue
        print(f"{name}:", flush=True)
        started = time.monotonic()
        try:
            results[name] = phase()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        print(f"  {name} done in {time.monotonic() - started:.0f} s", flush=True)
    print("\nSoak summary")
    if "messages" in results:
        m = results["messages"]
        print(f"  vfio-user messages: {sum(d['sent'] for d in m.values())} sent, "
              f"{sum(d['replies'] for d in m.values())} answered, {sum(d['reconnects'] for d in m.values())} "
              f"reconnects; servers alive: {all(d['server_alive'] for d in m.values())}; 0 hangs (a hang fails)")
    if "sequences" in results:
        s = results["sequences"]
        print(f"  data-path sequences: {s['sequences']}, {s['launched']} packets launched, {s['delivered']} "
              f"delivered, {s['restarts']} driver recoveries; internal errors {s['internal_errors']}, stray "
              f"writes {s['stray_writes']}, accesses outside guest memory refused {s['refused_outside_guest_memory']}")
    if "qemu" in results:
        q = results["qemu"]
        print(f"  SIGKILLed QEMU cycles: {q['cycles']}, each to Init; server fds {q['fds'][0]} -> {q['fds'][1]}, "
              f"RSS {q['rss_kib'][0]} -> {q['rss_kib'][1]} KiB (cycle 10 -> last): "
              f"{'within' if q['within_10_percent'] else 'NOT within'} 10 %")
        if not q["within_10_percent"]:
            failed.append("qemu footprint")
    if "reload" in results:
        r = results["reload"]
        print(f"  rmmod/modprobe cycles ({r['options']}): {r['cycles']}, each back to {r['state']}, "
              f"{r['seconds_mean']} s mean, {r['seconds_max']} s max")
    print(f"  failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
