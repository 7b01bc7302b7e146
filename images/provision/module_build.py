"""Building a driver out of tree against the guest kernel: hfi1 from
trixie's `linux-source-6.12`, compiled on the host with Debian's
linux-headers/linux-kbuild packages of the guest kernel (issue 16 item 3).

    source = hfi1_source(work / "hfi1")              # drivers/infiniband/hw/hfi1, to edit
    ko = build_module(source, "hfi1")               # source/hfi1.ko, vermagic of the guest kernel

The headers are unpacked into the cache once (`kbuild/HASH/`). Three things
make Debian's packages usable on a host that is not trixie, without
touching it: the headers' Makefile names /usr/src, which is rewritten to the
cache; kbuild's tools (objtool, modpost, resolve_btfids) are linked against
trixie's glibc, so each runs through the guest root's dynamic loader and
libraries (as depmod does, kernel_matrix.guest_depmod); and the host's gcc
may be older than the kernel's gcc-14, so the two options that only gcc-14
has are turned off on make's command line (the minimum function alignment,
whose fallback is -falign-functions, and BTF for modules, which needs
pahole). The result is stripped of debug information (what the guest loads
is then ~2 MB, not ~40).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from images.provision.cache import build_once
from images.provision.debian import PrivateApt, ProvisionError, extract_debs, run_logged
from images.provision.kernel_source import kernel_source_files

log = logging.getLogger("vfnic.images")

GUEST_KERNEL_SUITE = "trixie"
KBUILD_LAYOUT = 1
#: kbuild's programs linked against the suite's glibc
LOADER_WRAPPED = ("tools/objtool/objtool.real-x86", "scripts/mod/modpost.real-lsb-64",
                  "tools/bpf/resolve_btfids/resolve_btfids")
#: what an older host gcc cannot do, off for an out-of-tree build
MAKE_OVERRIDES = ("CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=", "CONFIG_DEBUG_INFO_BTF_MODULES=")


def kernel_headers(release: str, suite: str = GUEST_KERNEL_SUITE) -> Path:
    """The build directory (`make -C DIR M=...`) of `release`'s headers."""
    apt = PrivateApt(suite)
    closure = apt.resolve([f"linux-headers-{release}"])
    packages = [p for p in closure if p.name.startswith(("linux-headers-", "linux-kbuild-"))]
    if not any(p.name == f"linux-headers-{release}" for p in packages):
        raise ProvisionError(f"{suite} has no linux-headers-{release}")

    def unpack(work: Path) -> None:
        from images.provision.guest_image import provision_rootfs
        apt.apt_get("download", *(f"{p.name}={p.version}" for p in packages), cwd=apt.archives,
                    what=f"downloading {', '.join(p.name for p in packages)}")
        root = work / "root"
        extract_debs([apt.archives / p.filename for p in packages], root)
        tree = provision_rootfs()
        libraries = tree / "usr/lib/x86_64-linux-gnu"
        for kbuild in (root / "usr/lib").glob("linux-kbuild-*"):
            for tool in LOADER_WRAPPED:
                path = kbuild / tool
                if path.is_file():
                    os.rename(path, f"{path}.bin")
                    path.write_text(f'#!/bin/sh\nexec {libraries}/ld-linux-x86-64.so.2 --library-path {libraries} '
                                    f'"$(dirname "$0")/{path.name}.bin" "$@"\n')
                    path.chmod(0o755)

    recipe = {"suite": suite, "packages": {p.name: p.version for p in packages}, "layout": KBUILD_LAYOUT,
              "wrapped": LOADER_WRAPPED}
    directory = build_once("kbuild", recipe, unpack)
    sources = directory / "root/usr/src"
    build_dir = sources / f"linux-headers-{release}"
    # The headers' Makefile includes the common headers' by absolute path:
    # point it where they were unpacked (after build_once moved them there).
    makefile = build_dir / "Makefile"
    text = makefile.read_text()
    if "include /usr/src/" in text:
        makefile.write_text(text.replace("include /usr/src/", f"include {sources}/"))
    return build_dir


def hfi1_source(destination: Path) -> Path:
    """A writable copy of the guest kernel's hfi1 sources (linux-source-6.12)."""
    source = kernel_source_files(["drivers/infiniband/hw/hfi1"]) / "drivers/infiniband/hw/hfi1"
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(source, destination)
    return destination


def build_module(source: Path, name: str, release: str, jobs: int | None = None) -> Path:
    """`make modules` in `source` against `release`'s headers; the stripped .ko."""
    headers = kernel_headers(release)
    config = f"CONFIG_{name.upper()}=m" if name != "hfi1" else "CONFIG_INFINIBAND_HFI1=m"
    run_logged(["make", "-C", str(headers), f"M={source}", config, "CC=gcc", *MAKE_OVERRIDES,
                f"-j{jobs or os.cpu_count() or 1}", "modules"], f"building {name}.ko out of tree")
    module = source / f"{name}.ko"
    run_logged(["strip", "--strip-debug", str(module)], f"stripping {module.name}")
    log.info("module: built %s (%d KiB)", module, module.stat().st_size >> 10)
    return module


def timed_build_and_rebuild(source: Path, name: str, release: str, touched: str = "init.c") -> tuple[Path, float, float]:
    """Build `name` from `source`, touch one .c file, build again (what a
    developer's loop costs): the module and both builds' seconds."""
    started = time.monotonic()
    module = build_module(source, name, release)
    first = time.monotonic() - started
    (source / touched).touch()
    started = time.monotonic()
    build_module(source, name, release)
    return module, first, time.monotonic() - started

