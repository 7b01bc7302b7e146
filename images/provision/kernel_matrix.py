"""Debian kernels other than the image's own, for the kernel matrix: sid's
current `linux-image-amd64`, unpacked into the cache as a "custom" kernel
(its vmlinuz and a modules tree with modules.dep) that `images.provision.guest_image.build`
swaps into the guest image.

    kernel, modules = provision_debian_kernel("sid")
    image = build(kernel=kernel, modules=modules)

The guest tests choose with VFNIC_GUEST_KERNEL (`trixie`, the default: the
image's own; `sid`): see guest-tests/conftest.py.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from images.provision.cache import build_once
from images.provision.debian import PrivateApt, ProvisionError, extract_debs, run_logged

log = logging.getLogger("vfnic.images")

KERNELS = ("trixie", "sid")
KERNEL_LAYOUT = 1


def guest_kernel_choice() -> str:
    choice = os.environ.get("VFNIC_GUEST_KERNEL", "trixie")
    if choice not in KERNELS:
        raise ProvisionError(f"VFNIC_GUEST_KERNEL={choice!r}: choose one of {', '.join(KERNELS)}")
    return choice


def guest_depmod() -> list[str]:
    """The guest root's own depmod (trixie's kmod), run through the root's
    loader: the host may have no kmod, or an older one."""
    from images.provision.guest_image import provision_rootfs
    tree = provision_rootfs()
    return [str(tree / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), "--library-path",
            f"{tree}/usr/lib/x86_64-linux-gnu", "--argv0", "depmod", str(tree / "usr/bin/kmod")]


def provision_debian_kernel(suite: str) -> tuple[Path, Path]:
    """(vmlinuz, modules root holding lib/modules/VERSION) of `suite`'s
    linux-image-amd64, unpacked and depmod'ed on first use."""
    apt = PrivateApt(suite)
    closure = apt.resolve(["linux-image-amd64"])
    image = next((p for p in closure if p.name.startswith("linux-image-") and p.name != "linux-image-amd64"), None)
    if image is None:
        raise ProvisionError(f"{suite} has no linux-image-amd64 to resolve")
    flavour = image.name.removeprefix("linux-image-")  # e.g. 7.2.13+deb14-amd64
    # Newer kernels split the image: linux-binary-* (vmlinuz), linux-modules-*.
    packages = [p for p in closure if p.name.endswith(flavour) and p.name.startswith("linux-")]

    def unpack(work: Path) -> None:
        apt.apt_get("download", *(f"{p.name}={p.version}" for p in packages), cwd=apt.archives,
                    what=f"downloading {', '.join(p.name for p in packages)}")
        root = work / "root"
        extract_debs([apt.archives / p.filename for p in packages], root)
        usr_modules = root / "usr/lib/modules"
        modules_dir = usr_modules if usr_modules.is_dir() else root / "lib/modules"
        versions = [p.name for p in modules_dir.iterdir() if p.is_dir()]
        if len(versions) != 1:
            raise ProvisionError(f"{image.name} holds kernel versions {versions}, expected one")
        version = versions[0]
        if modules_dir == usr_modules:  # the layout CustomKernel expects: ROOT/lib/modules/VERSION
            (root / "lib").mkdir(exist_ok=True)
            os.rename(usr_modules, root / "lib/modules")
        vmlinuz = root / "boot" / f"vmlinuz-{version}"
        beside_modules = root / "lib/modules" / version / "vmlinuz"  # where newer packages put it
        if beside_modules.is_file():
            vmlinuz.parent.mkdir(exist_ok=True)
            os.rename(beside_modules, vmlinuz)
        log.info("kernel: depmod %s (%s)", version, suite)
        run_logged([*guest_depmod(), "-b", str(root), version], f"depmod for {version}")
        if not vmlinuz.is_file():
            raise ProvisionError(f"{image.name} has no boot/vmlinuz-{version}")

    recipe = {"suite": suite, "packages": {p.name: p.version for p in packages}, "layout": KERNEL_LAYOUT}
    root = build_once("kernel", recipe, unpack) / "root"
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    return vmlinuz, root


def build_guest_image(suite: str):
    """The guest image booting `suite`'s kernel: the image as built for
    trixie, or with sid's kernel and modules swapped in."""
    from images.provision.guest_image import build
    if suite == "trixie":
        return build()
    return build(*provision_debian_kernel(suite))
