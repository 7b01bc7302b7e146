"""The guest half of benchmarks/mmio: a compiled loop over testdev's BAR0 in a
TCG guest (vfnic-mmio bench), beside QEMU's own emulated MMIO as the floor.
Run with and without write_multiple, which makes QEMU queue every send
through its iothread."""
from __future__ import annotations

import tempfile
from pathlib import Path

from images.lab.lspci import lspci
from images.lab.server import VfnicServer
from images.lab.vm import Guest
from images.provision.helpers import GuestMmio

SCRATCH = 0x08


def _measure(tmp: Path, n: int, server_args: tuple[str, ...]) -> tuple[float, float]:
    sock = tmp / f"bench{len(server_args)}.sock"
    with VfnicServer("testdev", sock, log=tmp / f"serve{len(server_args)}.log", args=server_args):
        with Guest([sock], workdir=tmp / f"guest{len(server_args)}", name="bench") as guest:
            guest.install_helpers()
            (device,) = lspci(guest, "-d", "1234:11f0")
            bar0 = GuestMmio(guest, device.address)
            bar0.bench("read", SCRATCH, n // 10)  # warm-up: first touches map the BAR
            read = bar0.bench("read", SCRATCH, n)["ns_per_access"] / 1000
            write = bar0.bench("write", SCRATCH, n)["ns_per_access"] / 1000
            return read, write


def guest_figures(n: int) -> None:
    print(f"\nFrom inside a TCG guest (vfnic-mmio, {n} accesses, microseconds per access)")
    print(f"{'server':<28}{'trapped read':>15}{'posted write':>15}")
    with tempfile.TemporaryDirectory(prefix="vfnic-bench-", dir="/tmp") as tmp:
        for label, args in (("write_multiple offered", ()), ("write_multiple not offered", ("--no-write-multiple",))):
            read, write = _measure(Path(tmp), n, args)
            print(f"{label:<28}{read:>15.2f}{write:>15.2f}")
