"""A developer's kernel modules in running guests (`vfnic up --module
FILE.ko`, VFNIC_GUEST_MODULES for the guest tests).

    modules = GuestModules.from_paths(["hfi1.ko"], kernel_version=image.kernel_version)
    guest = Guest(..., kernel_args=modules.kernel_args())   # hfi1 not autoloaded at boot
    modules.install(guest)                                  # updates/, depmod, modprobe

Each .ko is checked on the host before any guest boots: it must exist, be a
kernel module (an ELF file with a .modinfo section) and carry the guest
kernel's release in its vermagic; otherwise `ModuleError` says which and why
in one line. The modules are blacklisted on the kernel command line (only
automatic loading: udev would otherwise load the stock ones at boot) with
the driver of the emulated device, then copied into the guest's
/lib/modules/RELEASE/updates/vfnic/ (which depmod ranks above the stock
tree), `depmod -a` runs in the guest for its kernel, and they are loaded with
modprobe, the driver last. A module that fails to load raises ModuleError
carrying the guest's new dmesg lines.
"""
from __future__ import annotations

import lzma
import shlex
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the driver udev loads for the emulated device: held back when modules are replaced
DRIVER = "hfi1"
UPDATES = "updates/vfnic"
ENVIRONMENT = "VFNIC_GUEST_MODULES"


class ModuleError(RuntimeError):
    """A module that cannot be used: missing, not a module, built for
    another kernel, or refused by the guest's kernel."""


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as e:
            raise ModuleError(f"{path}: not a valid .xz file: {e}") from None
    if path.name.endswith((".zst", ".gz")):
        raise ModuleError(f"{path}: compressed modules other than .ko.xz are not read; give the .ko")
    return data


def modinfo(data: bytes, what: str = "module") -> dict[str, str]:
    """The key=value strings of an ELF64 little-endian module's .modinfo
    section (what `modinfo` prints), first value of each key."""
    if data[:4] != b"\x7fELF":
        raise ModuleError(f"{what}: not an ELF file, so not a kernel module")
    if data[4] != 2 or data[5] != 1:
        raise ModuleError(f"{what}: not a 64-bit little-endian ELF file (guests are x86-64)")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

        def section(index: int) -> tuple[int, int, int]:
            name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + index * shentsize)
            return name, offset, size

        _, names_offset, _ = section(shstrndx)
        for index in range(shnum):
            name, offset, size = section(index)
            end = data.index(b"\0", names_offset + name)
            if data[names_offset + name:end] == b".modinfo":
                info: dict[str, str] = {}
                for entry in data[offset:offset + size].split(b"\0"):
                    key, sep, value = entry.decode(errors="replace").partition("=")
                    if sep:
                        info.setdefault(key, value)
                return info
    except (struct.error, ValueError):
        raise ModuleError(f"{what}: a truncated or damaged ELF file") from None
    raise ModuleError(f"{what}: an ELF file without a .modinfo section, so not a kernel module")


@dataclass(frozen=True)
class Module:
    path: Path
    name: str
    vermagic: str

    @property
    def release(self) -> str:
        return self.vermagic.split()[0] if self.vermagic else ""

    @classmethod
    def read(cls, path: Path | str) -> "Module":
        path = Path(path)
        if not path.is_file():
            raise ModuleError(f"module {path} does not exist")
        info = modinfo(read_module(path), str(path))
        name = info.get("name") or path.name.split(".ko")[0]
        return cls(path.resolve(), name.replace("-", "_"), info.get("vermagic", ""))


@dataclass(frozen=True)
class GuestModules:
    """Checked modules for guests of one kernel release."""

    modules: tuple[Module, ...]

    @classmethod
    def from_paths(cls, paths: Iterable[Path | str], kernel_version: str) -> "GuestModules":
        modules = tuple(Module.read(p) for p in paths)
        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            raise ModuleError(f"the same module is given twice: {', '.join(sorted(names))}")
        for module in modules:
            if module.release != kernel_version:
                raise ModuleError(f"{module.path} was built for kernel {module.release or '(no vermagic)'}, "
                                  f"the guests run {kernel_version} (vermagic {module.vermagic!r})")
        return cls(modules)

    def __bool__(self) -> bool:
        return bool(self.modules)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.modules]

    def kernel_args(self) -> list[str]:
        """Keep udev from loading the stock modules (and the driver) at boot."""
        if not self.modules:
            return []
        held = dict.fromkeys([*self.names, DRIVER])
        return [f"modprobe.blacklist={','.join(held)}"]

    def install(self, guest, timeout: float = 300.0, load: bool = True) -> None:
        """Copy the modules into `guest`, run depmod for its kernel, load
        them and the driver (unless `load` is false: a test that loads the
        driver itself, and times it); ModuleError with the guest's dmesg
        on failure."""
        if not self.modules:
            return
        release = guest.run("uname -r", check=True).stdout.strip()
        directory = f"/lib/modules/{release}/{UPDATES}"
        for module in self.modules:
            guest.put(f"{directory}/{module.path.name}", module.path)
        before = int(guest.run("dmesg | wc -l", check=True).stdout.strip() or 0)
        depmod = guest.run(f"depmod -a {shlex.quote(release)}", timeout=timeout)
        if not depmod.ok:
            why = f"timed out after {timeout:.0f} s" if depmod.timed_out else f"exited with status {depmod.rc}"
            raise ModuleError(f"{guest.name}: depmod -a {release} {why}: {(depmod.stderr or depmod.stdout).strip()}")
        if not load:
            return
        for name in dict.fromkeys([*self.names, DRIVER]):
            loaded = guest.run(f"modprobe {shlex.quote(name)}", timeout=timeout)
            if not loaded.ok:
                dmesg = guest.run(f"dmesg | tail -n +{before + 1} | tail -20").stdout.rstrip()
                raise ModuleError(f"{guest.name}: modprobe {name} failed: {loaded.stderr.strip()}"
                                  + (f"\n{guest.name}'s dmesg:\n{dmesg}" if dmesg else ""))
        guest.settle()


def from_environment(value: str | None, kernel_version: str) -> GuestModules:
    """VFNIC_GUEST_MODULES: paths separated by ':' or ','."""
    paths: Sequence[str] = [p for part in (value or "").split(":") for p in part.split(",") if p.strip()]
    return GuestModules.from_paths(paths, kernel_version)
