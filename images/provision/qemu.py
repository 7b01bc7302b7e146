"""The QEMU that runs vfnic's guests: the host's, or one unpacked from sid.

`vfio-user-pci` first shipped in QEMU 10.1; bookworm has 7.2. Rather than a
chroot (which would turn every socket and image path into a path inside the
root), sid's `qemu-system-x86` and its dependency closure are unpacked with
`dpkg-deb -x` into the cache and started through that root's own dynamic
loader::

    ROOT/usr/lib64/ld-linux-x86-64.so.2 --library-path ROOT/usr/lib/... \\
        ROOT/usr/bin/qemu-system-x86_64 -L ROOT/usr/share/qemu ...

with `QEMU_MODULE_DIR` pointing at its modules, so QEMU sees host paths for
everything it is given and loads nothing from the host's /usr.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from images.provision.debian import provision_unpacked

log = logging.getLogger("vfnic.images")

MINIMUM_VERSION = (10, 1)
QEMU_SUITE = "sid"
QEMU_PACKAGES = ["qemu-system-x86"]
#: Bump when the unpacked layout or its fix-ups change.
QEMU_LAYOUT = 1
FIRMWARE_DIRS = ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
LIBRARY_DIRS = ["usr/lib/x86_64-linux-gnu", "usr/lib"]


class QemuError(RuntimeError):
    """No usable QEMU, or QEMU failed; the message carries QEMU's own words."""


@dataclass(frozen=True)
class Qemu:
    """How to start qemu-system-x86_64: `argv` is the command prefix (loader,
    binary, firmware search paths), `env` the variables to add."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    version: str = ""
    origin: str = ""

    @classmethod
    def locate(cls, provision: bool = True) -> "Qemu":
        """`VFNIC_QEMU` if set, else the host's QEMU if new enough and built
        with vfio-user-pci, else the cached sid QEMU (built if `provision`)."""
        explicit = os.environ.get("VFNIC_QEMU")
        if explicit:
            qemu = cls.from_binary(Path(explicit))
            qemu.check()
            return qemu
        host_binary = shutil.which("qemu-system-x86_64")
        if host_binary:
            qemu = cls.from_binary(Path(host_binary))
            if qemu.usable():
                return qemu
            log.info("qemu: host %s (%s) lacks vfio-user-pci or is older than %d.%d",
                     host_binary, qemu.version or "unknown version", *MINIMUM_VERSION)
        if not provision:
            raise QemuError("no QEMU with vfio-user-pci; run `python -m images provision`")
        return cls.from_root(provision_qemu())

    @classmethod
    def from_binary(cls, binary: Path) -> "Qemu":
        unversioned = cls(argv=[str(binary)], origin=str(binary))
        try:
            return replace(unversioned, version=unversioned.query_version())
        except QemuError:
            return unversioned

    @classmethod
    def from_root(cls, root: Path, version: str | None = None) -> "Qemu":
        """A QEMU unpacked into `root`, run through the root's own loader.
        `version` defaults to the one recorded when the root was built."""
        library_path = ":".join(str(root / d) for d in LIBRARY_DIRS)
        argv = [str(root / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path", library_path,
                str(root / "usr/bin/qemu-system-x86_64")]
        for firmware in FIRMWARE_DIRS:
            if (root / firmware).is_dir():
                argv += ["-L", str(root / firmware)]
        env = {"QEMU_MODULE_DIR": str(root / "usr/lib/x86_64-linux-gnu/qemu")}
        if version is None:
            version = json.loads((root.parent / "manifest.json").read_text())["qemu_version"]
        return cls(argv=argv, env=env, version=version, origin=str(root))

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def output(self, *args: str) -> str:
        """Run QEMU with `args` (queries such as -version); return its output."""
        try:
            result = subprocess.run([*self.argv, *args], env=self.environ(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        except OSError as error:
            raise QemuError(f"cannot run {self.origin}: {error}") from error
        if result.returncode != 0:
            raise QemuError(f"{self.origin} {' '.join(args)} failed: {result.stdout.strip()}")
        return result.stdout

    def query_version(self) -> str:
        match = re.search(r"version (\d+\.\d+(?:\.\d+)?)", self.output("-version"))
        return match.group(1) if match else ""

    def usable(self) -> bool:
        try:
            self.check()
        except QemuError:
            return False
        return True

    def check(self) -> None:
        """Raise QemuError unless this QEMU is >= 10.1 with vfio-user-pci."""
        numbers = tuple(int(n) for n in self.version.split(".")[:2]) if self.version else (0, 0)
        if numbers < MINIMUM_VERSION:
            raise QemuError(f"{self.origin} is QEMU {self.version or '?'}; vfnic needs "
                            f">= {MINIMUM_VERSION[0]}.{MINIMUM_VERSION[1]}")
        if '"vfio-user-pci"' not in self.output("-device", "help"):
            raise QemuError(f"{self.origin} (QEMU {self.version}) has no vfio-user-pci device")


def provision_qemu() -> Path:
    """The root of sid's QEMU unpacked into the cache (built on first use)."""
    return provision_unpacked("qemu", QEMU_SUITE, QEMU_PACKAGES, QEMU_LAYOUT, _check_qemu_root)


def _check_qemu_root(root: Path) -> dict:
    unversioned = Qemu.from_root(root, version="")
    qemu = replace(unversioned, version=unversioned.query_version())
    qemu.check()
    log.info("qemu: QEMU %s from %s is ready", qemu.version, QEMU_SUITE)
    return {"qemu_version": qemu.version}
