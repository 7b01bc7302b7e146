"""vfnic's initrd: a static /init and the root disk's modules, uncompressed.

    /init               images/guest/vfnic-initrd-init.c, built with gcc -static
    /dev/console        so the kernel can give /init a console before devtmpfs
    /modules/NN-x.ko    loaded in name order: dependencies first

Built from any kernel's modules tree (the stock one inside the rootfs, or a
custom `modules_install` tree) using only its modules.dep and
modules.builtin, so a custom kernel needs no chroot and no initramfs-tools.
Modules are decompressed here, once, rather than by the guest at every boot
(xz under TCG is slow), and the archive itself is left uncompressed.
"""
from __future__ import annotations

import gzip
import lzma
import subprocess
from pathlib import Path

from images.provision.debian import ProvisionError

#: What the guest needs to reach its root disk: virtio-blk and ext4 (plus
#: their dependencies, found in modules.dep). Built-in ones are skipped; in
#: Debian's 6.12, virtio_pci and virtio_console are built in, these are not.
INITRD_MODULES = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]
#: Needed where they exist: 6.12's ext4 reaches crc32c through the crypto API
#: (crc32c_generic); newer kernels (sid's 7.x) link the crc32c library in.
OPTIONAL_INITRD_MODULES = {"crc32c_generic"}

_CONSOLE_DEVICE = (5, 1)


def module_name(path: str) -> str:
    """`kernel/fs/ext4/ext4.ko.xz` -> `ext4` (modprobe treats - and _ alike)."""
    return Path(path).name.split(".ko")[0].replace("-", "_")


class ModuleTree:
    """A kernel's /lib/modules/VERSION directory, read through its index files."""

    def __init__(self, directory: Path):
        self.directory = directory
        dep_file = directory / "modules.dep"
        if not dep_file.is_file():
            raise ProvisionError(f"{dep_file} is missing: run depmod for this kernel")
        self.dependencies: dict[str, tuple[str, list[str]]] = {}
        for line in dep_file.read_text().splitlines():
            path, _, deps = line.partition(":")
            self.dependencies[module_name(path)] = (path, deps.split())
        builtin_file = directory / "modules.builtin"
        self.builtin = {module_name(p) for p in builtin_file.read_text().split()} \
            if builtin_file.is_file() else set()

    def has(self, name: str) -> bool:
        return name in self.dependencies or name in self.builtin

    def load_order(self, names: list[str]) -> list[str]:
        """Module files (relative paths) for `names` and their dependencies,
        each after everything it depends on; built-in modules are left out."""
        order: list[str] = []

        def visit(path: str) -> None:
            for dependency in self.dependencies[module_name(path)][1]:
                visit(dependency)
            if path not in order:
                order.append(path)

        for name in names:
            name = name.replace("-", "_")
            if name in self.builtin or (name in OPTIONAL_INITRD_MODULES and name not in self.dependencies):
                continue
            if name not in self.dependencies:
                raise ProvisionError(f"kernel modules in {self.directory} have no {name} "
                                     "(neither a module nor built in)")
            visit(self.dependencies[name][0])
        return order

    def read_uncompressed(self, path: str) -> bytes:
        data = (self.directory / path).read_bytes()
        if path.endswith(".xz"):
            return lzma.decompress(data)
        if path.endswith(".gz"):
            return gzip.decompress(data)
        if path.endswith(".zst"):
            return subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE,
                                  check=True).stdout
        return data


class NewcArchive:
    """Writes a cpio archive in the "newc" format the kernel unpacks."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.inode = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08x" % value for value in fields)
        self.inode += 1
        self.parts.append(_pad(header + name.encode() + b"\0"))
        self.parts.append(_pad(data))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def build_initrd(tree: ModuleTree, init_program: Path, output: Path,
                 modules: list[str] = INITRD_MODULES) -> list[str]:
    """Write the initrd for the kernel whose modules are `tree`; return the
    module files it loads, in order."""
    order = tree.load_order(modules)
    archive = NewcArchive()
    for directory in ("dev", "proc", "sys", "newroot", "modules"):
        archive.directory(directory)
    archive.char_device("dev/console", *_CONSOLE_DEVICE)
    archive.file("init", init_program.read_bytes(), 0o755)
    for index, path in enumerate(order):
        archive.file(f"modules/{index:02d}-{module_name(path)}.ko", tree.read_uncompressed(path))
    output.write_bytes(archive.finish())
    return order
