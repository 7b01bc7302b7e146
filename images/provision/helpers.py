"""Static helper programs compiled on the host and pushed into guests.

The guest image has no compiler; a statically linked binary built here runs
there unchanged (same architecture, and a static binary does not care that
the host's libc is older than the guest's).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from images import GUEST_FILES_DIR
from images.provision.cache import build_once, file_hash
from images.provision.debian import ProvisionError, run_logged

#: Where `Guest.install_helpers()` puts them in the guest (on PATH).
GUEST_HELPER_DIR = "/usr/local/bin"


def compile_static(source_name: str) -> Path:
    """Compile images/guest/SOURCE_NAME (C) with `gcc -static -O2`, cached by
    the source's hash and the compiler's version."""
    compiler = shutil.which("gcc")
    if compiler is None:
        raise ProvisionError("gcc is needed to build the guest helpers (package gcc and libc6-dev)")
    source = GUEST_FILES_DIR / source_name
    program = source.stem
    recipe = {"source": file_hash(source),
              "compiler": run_logged([compiler, "-dumpfullversion"], "asking gcc its version").strip()}

    def compile_into(work: Path) -> None:
        run_logged([compiler, "-static", "-O2", "-Wall", "-o", str(work / program), str(source)],
                   f"compiling {source_name}")

    return build_once("helpers", recipe, compile_into) / program


def mmio_helper() -> Path:
    """vfnic-mmio: BAR reads, writes and timing from inside a guest."""
    return compile_static("vfnic-mmio.c")


class GuestMmio:
    """vfnic-mmio in a guest, for one PCI function's BAR, with parsed results.

        bar0 = GuestMmio(guest, "0000:01:00.0")
        bar0.write(0x08, 0x1234); assert bar0.read(0x08) == 0x1234
    """

    def __init__(self, guest, address: str, bar: int = 0):
        self.guest = guest
        self.prefix = [f"{GUEST_HELPER_DIR}/vfnic-mmio", "-b", str(bar), address]

    def _run(self, *args: str) -> str:
        return self.guest.run([*self.prefix, *args], timeout=120, check=True).stdout

    def read(self, offset: int, width: int = 8) -> int:
        return int(self._run("read", hex(offset), str(width)), 16)

    def write(self, offset: int, value: int, width: int = 8) -> None:
        self._run("write", hex(offset), hex(value), str(width))

    def bench(self, operation: str, offset: int, count: int, width: int = 8) -> dict[str, float]:
        """Time `count` reads or writes; returns the helper's key=value line
        as numbers (ns_per_access, total_ns, count, ...)."""
        line = self._run("bench", operation, hex(offset), str(count), str(width))
        fields = dict(pair.split("=", 1) for pair in line.split())
        return {key: float(int(value, 16) if value.startswith("0x") else value)
                for key, value in fields.items() if key != "op"}
