"""tshark, the judge of vfnic's capture files, unpacked from Debian into the
cache and run through its root's own loader (as the QEMU in qemu.py is), so
that the host needs no Wireshark and a different Debian release does not
matter."""
from __future__ import annotations

import subprocess
from pathlib import Path

from images.provision.debian import provision_unpacked
from images.provision.qemu import LIBRARY_DIRS

TSHARK_SUITE = "trixie"
TSHARK_PACKAGES = ["tshark"]
TSHARK_LAYOUT = 1


class Tshark:
    def __init__(self, root: Path):
        self.root = root
        library_path = ":".join(str(root / d) for d in LIBRARY_DIRS)
        self.argv = [str(root / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path", library_path,
                     str(root / "usr/bin/tshark")]
        self.env = {"WIRESHARK_DATA_DIR": str(root / "usr/share/wireshark"),
                    "WIRESHARK_CONFIG_DIR": str(root / "config")}

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        import os
        return subprocess.run([*self.argv, *args], env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout)

    def fields(self, capture: str, *names: str, display_filter: str = "") -> list[list[str]]:
        """`tshark -T fields` of a capture: one row of field values per packet."""
        args = ["-r", capture, "-T", "fields", "-E", "separator=\t"]
        for name in names:
            args += ["-e", name]
        if display_filter:
            args += ["-Y", display_filter]
        result = self.run(*args)
        if result.returncode != 0:
            raise RuntimeError(f"tshark failed: {result.stderr.strip()}")
        return [line.split("\t") for line in result.stdout.splitlines()]


def provision_tshark() -> Tshark:
    """Debian's tshark, unpacked into the cache on first use."""
    return Tshark(provision_unpacked("tshark", TSHARK_SUITE, TSHARK_PACKAGES, TSHARK_LAYOUT, _check))


def _check(root: Path) -> dict:
    (root / "config").mkdir()
    version = Tshark(root).run("--version")
    if version.returncode != 0:
        raise RuntimeError(f"the unpacked tshark does not run: {version.stderr.strip()}")
    return {"version": version.stdout.splitlines()[0]}
