"""Where one small message's time goes: `ib_send_lat -s 2` between two guests
on one `vfnic serve`, broken down per message, for one or more server
variants side by side in one run.

    benchmarks/latency [--iters N] [--variant LABEL=SERVE-ARGS ...] [--server-arg=ARG ...]
    benchmarks/latency --variant base= --variant nowm=--no-write-multiple
    benchmarks/latency --rounds 6 --variant host="--sched host" --variant fifo="--sched fifo"
    benchmarks/latency --rounds 4 --bw 300 --variant engine="--option pio-launch=engine" \
                       --variant inline="--option pio-launch=inline"
    benchmarks/latency --idle 30 --bw 300 --variant base= --variant mmap="--option mmap=pio"

Each variant boots the same two guests (Debian trixie, TCG, 1 vCPU each) on a
two-socket `vfnic serve --profile` with that variant's arguments (plus every
`--server-arg`), brings the ports Active under opafm, and runs
`ib_send_lat -F -s 2 -n N`. Every count is read before and after the run
and divided by its messages. The connection's set-up is included (a few
accesses against thousands of messages); subtracting a shorter run's
figures instead proved too noisy on a loaded machine, where the shorter
run's wait times often exceeded the longer's. A message is one way: an
iteration of ib_send_lat is two (a ping and its pong), and its reported
latency is half the round trip.

Per message, what is counted (the server's `--profile` and /proc):

  trapped writes/reads  BAR accesses the guests made (both), by register
  serving them          the server's time inside the device for them
  server CPU            the server process's user + system time
  thread wake-ups       context switches of each server thread (voluntary:
                        it blocked and was woken; involuntary: preempted),
                        and its time runnable but waiting for a core
                        (/proc/PID/task/TID/schedstat)
  engine                chip events run, and how late they started
  interrupts            MSI-X vectors signalled, and the time from the
                        eventfd write to the guest's next trapped access
                        (its interrupt handler: ib_send_lat polls its CQ in
                        user space and traps nothing else meanwhile)
  QEMU                  the guests' QEMU threads' wake-ups and run-queue wait
  path, remainder       what a message's path is known to cost (serving the
                        accesses, the engine's wait and work, one interrupt
                        delivery; an over-estimate, since the ACK's share
                        is off the path) and t_avg minus it: the guests'
                        own time, QEMU's hops, the socket

`--idle S` adds the server's CPU over S seconds with the ports Active and
nothing sent (what a poller costs when idle; a boot per variant only).

With `--rounds R` the guests boot once and the variants alternate R times
on them (order rotated from round to round), the server re-tuned through
its control socket (`tune`) in between: only `--switch-interval`, `--sched`,
`--vcpu-sched` and runtime device options (`--option pio-launch=...`), but a
slow drift of the machine's load then hits every variant alike, where a boot
per variant lets it decide the comparison. `--bw N` also runs `ib_write_bw -s
65536 -n N` after each variant's ib_send_lat (outside the counted window) and
reports its bandwidth (with --rounds, the rounds' median).

The table has one column per variant and the ratio of each to the first.
The machine's absolute figures drift with its load (printed with each
variant): only figures of one run compare, and one noisy run proves nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

from devmodel import registry
from emulator import tuning
from images.lab.fabric import ACTIVE, INIT, Fabric, parse_perftest
from images.lab.process import run_directory

CLK_TCK = os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def threads(pid: int) -> dict[str, dict[str, float]]:
    """Per thread name (threads of one name summed): context switches, run
    and run-queue time (ns), from /proc/PID/task."""
    out: dict[str, dict[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            comm = Path(f"{base}/comm").read_text().strip()
            status = dict(line.split(":", 1) for line in Path(f"{base}/status").read_text().splitlines() if ":" in line)
            run_ns, wait_ns, _slices = (int(x) for x in Path(f"{base}/schedstat").read_text().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # the thread ended meanwhile
        row = out.setdefault(comm, {"voluntary": 0, "involuntary": 0, "run_ns": 0, "wait_ns": 0})
        row["voluntary"] += int(status["voluntary_ctxt_switches"])
        row["involuntary"] += int(status["nonvoluntary_ctxt_switches"])
        row["run_ns"] += run_ns
        row["wait_ns"] += wait_ns
    return out


def snapshot(fabric: Fabric, ending: bool = False) -> dict:
    """Every counter the breakdown needs, now. The server writes its stats
    on its main thread (SIGUSR1), which costs it CPU: /proc is read after
    that at the start of a run and before it at the end (`ending`), so the
    run's figures leave it out."""
    pid = fabric.server.process.pid
    proc = (process_cpu_s(pid), threads(pid)) if ending else None
    stats = fabric.server.stats()
    cpu_s, server_threads = proc or (process_cpu_s(pid), threads(pid))
    devices = list(stats.values())
    registers: dict[str, dict] = {}
    for device in devices:
        for name, row in device["access_profile"]["registers"].items():
            # one row per register, whatever the context: each run's queue pair may get another
            total = registers.setdefault(re.sub(r"\[\d+\]", "", name), {"accesses": 0, "ns": 0})
            total["accesses"] += row["accesses"]
            total["ns"] += row["ns"]
    qemu: dict[str, dict] = {}
    for guest in fabric.guests:
        for name, row in threads(guest.process.pid).items():
            total = qemu.setdefault(name, dict.fromkeys(row, 0))
            for key, value in row.items():
                total[key] += value
    return {
        "cpu_s": cpu_s,
        "threads": server_threads,
        "qemu": qemu,
        "registers": registers,
        "interrupts": sum(d["access_profile"]["interrupts"] for d in devices),
        "interrupts_delivered": sum(d["access_profile"]["interrupts_delivered"] for d in devices),
        "interrupt_delivery_ns": sum(d["access_profile"]["interrupt_delivery_ns"] for d in devices),
        "engine_jobs": devices[0]["engine"]["jobs_run"],  # one engine thread: every device reports it
        "engine_late_s": devices[0]["engine"]["late_s"],
        "packets": sum(v["packets"] for k, v in devices[0]["port"]["link"].items() if "->" in k),
        "inline_launches": sum(d["pio"].get("inline_launches", 0) for d in devices),
        "undeclared": sum(d["undeclared_csr_accesses"] for d in devices),
        "pio_polls": sum(d["pio"].get("mapped", {}).get("polls", 0) for d in devices),
    }


def difference(after: dict, before: dict):
    """after - before, recursively (numbers only)."""
    if isinstance(after, dict):
        return {k: difference(v, before.get(k, 0 if not isinstance(v, dict) else {})) for k, v in after.items()}
    return after - before


def ib_send_lat(fabric: Fabric, iterations: int) -> tuple[dict, dict]:
    """One ib_send_lat run; (its result row, the counters it moved)."""
    before = snapshot(fabric)
    run = fabric.run_pair(f"ib_send_lat -F -s 2 -n {iterations}", timeout=900)
    rows = parse_perftest(run.client.stdout)
    if not run.ok or not rows:
        raise RuntimeError(f"ib_send_lat failed:\n{run.explain()}")
    return rows[0], difference(snapshot(fabric, ending=True), before)


def ib_write_bw(fabric: Fabric, iterations: int) -> float:
    """One ib_write_bw -s 65536 run: its average bandwidth, MiB/s."""
    run = fabric.run_pair(f"ib_write_bw -F -s 65536 -n {iterations}", timeout=900)
    rows = parse_perftest(run.client.stdout)
    if not run.ok or not rows:
        raise RuntimeError(f"ib_write_bw failed:\n{run.explain()}")
    return rows[0]["bw_avg_mib_s"]


def breakdown(d: dict, messages: int, latency: dict) -> dict:
    """Per message, from the counters a run of `messages` one-way messages moved."""
    per = 1.0 / messages
    out: dict[str, float] = {"latency t_typical (us)": latency["t_typical_us"],
                             "latency t_avg (us)": latency["t_avg_us"]}
    regs = d["registers"]
    writes = {k: v for k, v in regs.items() if k.startswith("W ")}
    reads = {k: v for k, v in regs.items() if k.startswith("R ")}
    out["trapped writes"] = sum(v["accesses"] for v in writes.values()) * per
    out["trapped reads"] = sum(v["accesses"] for v in reads.values()) * per
    for kind in (writes, reads):
        for name, row in sorted(kind.items(), key=lambda kv: -kv[1]["accesses"]):
            if row["accesses"] * per >= 0.05:
                out[f"  {name} (n)"] = row["accesses"] * per
    serving_us = sum(v["ns"] for v in regs.values()) / 1e3 * per
    out["serving accesses (us)"] = serving_us
    for label, kind in (("write", writes), ("read", reads)):
        count = sum(v["accesses"] for v in kind.values())
        out[f"  per trapped {label} (us)"] = sum(v["ns"] for v in kind.values()) / 1e3 / count if count else 0.0
    out["server CPU (us)"] = d["cpu_s"] * 1e6 * per
    out["link packets"] = d["packets"] * per
    out["PIO packets launched inline"] = d["inline_launches"] * per
    for name, row in sorted(d["threads"].items()):
        if row["voluntary"] + row["involuntary"] == 0 and row["run_ns"] == 0:
            continue
        out[f"thread {name}: wake-ups"] = row["voluntary"] * per
        out[f"thread {name}: preempted"] = row["involuntary"] * per
        out[f"thread {name}: CPU (us)"] = row["run_ns"] / 1e3 * per
        out[f"thread {name}: runnable, waiting (us)"] = row["wait_ns"] / 1e3 * per
    out["engine events"] = d["engine_jobs"] * per
    engine_wait_us = d["engine_late_s"] * 1e6 * per
    out["engine: events' wait to start (us)"] = engine_wait_us
    out["interrupts"] = d["interrupts"] * per
    delivered = d["interrupts_delivered"]
    delay_us = d["interrupt_delivery_ns"] / 1e3 / delivered if delivered else 0.0
    out["interrupt -> handler's first access (us)"] = delay_us
    for name, row in sorted(d["qemu"].items(), key=lambda kv: -kv[1]["wait_ns"]):
        if row["voluntary"] * per < 0.05 and row["wait_ns"] / 1e3 * per < 1:
            continue
        out[f"QEMU {name}: wake-ups"] = row["voluntary"] * per
        out[f"QEMU {name}: runnable, waiting (us)"] = row["wait_ns"] / 1e3 * per
    engine_cpu_us = sum(row["run_ns"] for name, row in d["threads"].items() if "engine" in name) / 1e3 * per
    # on one message's path: the sender's accesses, the engine's wait and work, one interrupt to the receiver
    path = serving_us + engine_wait_us + engine_cpu_us + delay_us
    out["path: serving + engine wait + engine CPU + 1 interrupt (us)"] = path
    out["remainder: t_avg - path (us)"] = latency["t_avg_us"] - path
    out["PIO space polls (mmap=pio)"] = d["pio_polls"] * per
    out["undeclared accesses"] = d["undeclared"]
    return out


def idle_cpu(fabric: Fabric, seconds: float) -> float:
    """The server's CPU (percent of one core) over `seconds` with both ports
    Active and nothing sent."""
    pid = fabric.server.process.pid
    before = process_cpu_s(pid)
    time.sleep(seconds)
    return 100 * (process_cpu_s(pid) - before) / seconds


def measure(workdir: Path, label: str, server_args: list[str], iterations: int, bw_iterations: int = 0,
            idle_s: float = 0.0) -> dict:
    print(f"{label}: vfnic serve {' '.join(server_args) or '(defaults)'}; load {load_average()}", flush=True)
    stats = workdir / "stats.json"
    args = ["--stats", str(stats), "--profile", *server_args]
    with Fabric.launch(workdir, server_args=args) as fabric:
        fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        idle = idle_cpu(fabric, idle_s) if idle_s else None
        started = time.monotonic()
        row, counters = ib_send_lat(fabric, iterations)
        took = time.monotonic() - started
        bandwidth = ib_write_bw(fabric, bw_iterations) if bw_iterations else None
    result = breakdown(counters, 2 * iterations, row)
    if idle is not None:
        result[f"idle server CPU over {idle_s:.0f} s (% of a core)"] = idle
    if bandwidth is not None:
        result["ib_write_bw 64 KiB (MiB/s)"] = bandwidth
    result["load average (1 min)"] = os.getloadavg()[0]
    print(f"  t_typical {row['t_typical_us']:.1f} us, t_avg {row['t_avg_us']:.1f} us ({took:.0f} s); "
          f"load {load_average()}", flush=True)
    return result


#: the `vfnic serve` arguments the control socket's `tune` changes on a running server, their defaults
RUNTIME = argparse.ArgumentParser(add_help=False)
RUNTIME.add_argument("--switch-interval", type=float, default=5.0)  # Python's own
RUNTIME.add_argument("--sched", default=tuning.DEFAULT_SCHED)
RUNTIME.add_argument("--sched-slice-us", type=int, default=100)
RUNTIME.add_argument("--vcpu-sched", default=tuning.DEFAULT_VCPU_SCHED)
RUNTIME.add_argument("--option", action="append", default=[])


def runtime_settings(label: str, args: list[str]) -> dict:
    """A variant's arguments as `tune` arguments, every runtime device option
    included (its default unless the variant sets it); ValueError if it has
    others (they need a server of their own)."""
    settings, rest = RUNTIME.parse_known_args(args)
    fixed = [o for o in settings.option if o.partition("=")[0] not in registry.DEVICES["hfi1"].runtime_options]
    if rest or fixed:
        raise ValueError(f"variant {label}: {' '.join([*rest, *fixed])} cannot change on a running server "
                         "(--rounds alternates --switch-interval, --sched, --vcpu-sched and runtime --option only)")
    try:
        options = registry.runtime_options("hfi1", settings.option, defaults=True)
    except registry.OptionError as e:
        raise ValueError(f"variant {label}: {e}") from None
    return {"switch_interval_ms": settings.switch_interval, "sched": settings.sched,
            "slice_us": settings.sched_slice_us, "vcpu_sched": settings.vcpu_sched,
            "option": [f"{k}={v}" for k, v in options.items()]}


def combine(a: dict, b: dict) -> dict:
    """a + b, recursively (numbers only)."""
    return {k: combine(a.get(k, {}), b.get(k, {})) if isinstance(a.get(k, b.get(k)), dict)
            else a.get(k, 0) + b.get(k, 0) for k in {**a, **b}}


def measure_alternating(workdir: Path, variants: list[tuple[str, list[str]]], server_args: list[str],
                        iterations: int, rounds: int, bw_iterations: int = 0) -> dict[str, dict]:
    """Every variant on one boot: `rounds` rounds, each running every
    variant once (`iterations / rounds` iterations, the order rotated from
    round to round), the server re-tuned through its control socket in
    between; the counters of a variant's runs summed, its latency the
    median of its rounds' t_typical."""
    settings = {label: runtime_settings(label, extra) for label, extra in variants}
    print(f"one boot, {rounds} rounds of {' '.join(settings)}; vfnic serve {' '.join(server_args) or '(defaults)'}; "
          f"load {load_average()}", flush=True)
    args = ["--stats", str(workdir / "stats.json"), "--profile", "--control", str(workdir / "control.sock"),
            *server_args]
    per_round = max(iterations // rounds, 10)
    counters: dict[str, dict] = {label: {} for label in settings}
    rows: dict[str, list[dict]] = {label: [] for label in settings}
    bandwidths: dict[str, list[float]] = {label: [] for label in settings}
    with Fabric.launch(workdir, server_args=args) as fabric:
        fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        labels = list(settings)
        for r in range(rounds):
            for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                fabric.server.ctl("tune", **settings[label])
                row, moved = ib_send_lat(fabric, per_round)
                counters[label] = combine(counters[label], moved)
                rows[label].append(row)
                bandwidth = ""
                if bw_iterations:
                    bandwidths[label].append(ib_write_bw(fabric, bw_iterations))
                    bandwidth = f", ib_write_bw {bandwidths[label][-1]:.1f} MiB/s"
                print(f"  round {r + 1} {label}: t_typical {row['t_typical_us']:.1f} us, t_avg {row['t_avg_us']:.1f} us"
                      f"{bandwidth}; load {load_average()}", flush=True)
    results = {}
    for label in settings:
        typical = sorted(row["t_typical_us"] for row in rows[label])
        latency = {"t_typical_us": typical[len(typical) // 2],
                   "t_avg_us": sum(row["t_avg_us"] for row in rows[label]) / len(rows[label])}
        results[label] = breakdown(counters[label], 2 * per_round * rounds, latency)
        results[label]["rounds' best t_typical (us)"] = typical[0]
        results[label]["rounds' worst t_typical (us)"] = typical[-1]
        if bandwidths[label]:
            ordered = sorted(bandwidths[label])
            results[label]["ib_write_bw 64 KiB, median (MiB/s)"] = ordered[len(ordered) // 2]
            results[label]["ib_write_bw 64 KiB, rounds' worst (MiB/s)"] = ordered[0]
            results[label]["ib_write_bw 64 KiB, rounds' best (MiB/s)"] = ordered[-1]
        results[label]["load average (1 min)"] = os.getloadavg()[0]
    return results


def table(results: dict[str, dict]) -> str:
    labels = list(results)
    rows = list(dict.fromkeys(k for r in results.values() for k in r))
    width = max(len(r) for r in rows) + 2
    head = f"{'per one-way message':<{width}}" + "".join(f"{label:>12}" for label in labels) \
        + "".join(f"{label + '/' + labels[0]:>14}" for label in labels[1:])
    lines = [head, "-" * len(head)]
    first = results[labels[0]]
    for row in rows:
        values = [results[label].get(row) for label in labels]
        text = f"{row:<{width}}" + "".join(f"{v:>12.2f}" if v is not None else f"{'-':>12}" for v in values)
        for v in values[1:]:
            base = first.get(row)
            text += f"{v / base:>13.2f}x" if v is not None and base else f"{'':>14}"
        lines.append(text)
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, list[str]]:
    label, sep, args = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"a variant is LABEL=SERVE-ARGS, not {text!r}")
    return label, shlex.split(args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=1000,
                        help="ib_send_lat iterations per variant (split over the rounds with --rounds)")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="LABEL=SERVE-ARGS",
                        help="a server variant (e.g. nowm=--no-write-multiple); repeat to compare, the first is "
                             "the reference; default: one, the defaults")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="a `vfnic serve` argument every variant gets (--server-arg=--no-write-multiple)")
    parser.add_argument("--rounds", type=int, default=0, metavar="R",
                        help="boot once and alternate the variants R times (only --switch-interval, --sched, --vcpu-sched and "
                             "runtime --option variants: the control socket changes them); default: a boot per "
                             "variant")
    parser.add_argument("--bw", type=int, default=0, metavar="N",
                        help="also run ib_write_bw -s 65536 -n N after each variant's ib_send_lat (default: not)")
    parser.add_argument("--idle", type=float, default=0.0, metavar="S",
                        help="also measure the server's CPU over S idle seconds (ports Active) before the run "
                             "(a boot per variant only)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the guests' and server's logs")
    args = parser.parse_args()
    variants = args.variant or [("vfnic", [])]
    if len({label for label, _ in variants}) != len(variants):
        parser.error("two variants have the same label")
    if args.rounds:
        try:
            for label, extra in variants:
                runtime_settings(label, extra)
        except ValueError as e:
            parser.error(str(e))
    results = {}
    with run_directory("vfnic-bench-latency-", args.keep) as workdir:
        if args.rounds:
            results = measure_alternating(workdir / "alternating", variants, args.server_arg, args.iters, args.rounds,
                                          args.bw)
        else:
            for label, extra in variants:
                results[label] = measure(workdir / label, label, [*extra, *args.server_arg], args.iters, args.bw,
                                         args.idle)
    how = (f"one boot, {args.rounds} rounds alternating the variants (latency: the rounds' median)" if args.rounds
           else "a boot per variant")
    print(f"\nib_send_lat -s 2 between two TCG guests (1 vCPU each) on one vfnic serve, "
          f"{args.iters} iterations per variant, {how}; per one-way message")
    for label, extra in variants:
        print(f"  {label}: {' '.join([*extra, *args.server_arg]) or '(defaults)'}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"variants": dict(variants), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
