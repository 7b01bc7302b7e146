"""Debian kernels other than the image's own, for the kernel matrix: sid's
current `linux-image-amd64`, unpacked into the cache as a "custom" kernel
(its vmlinuz and a modules tree with modules.dep) that `images.provision.guest_image.build`
swaps into the guest image.

    kernel, modules = provision_debian_kernel("sid")
    image = build(kernel=kernel, modules=modules)

The guest tests choose with VFNIC_GUEST_KERNEL (`trixie`, the default: the
image's own; `sid`; a Debian kernel .deb; a kernel build tree), as `vfnic up
--kernel` does: see guest-tests/conftest.py and docs/driver-developers.md.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from images.provision.cache import build_once, file_hash
from images.provision.debian import PrivateApt, ProvisionError, extract_debs, run_logged

log = logging.getLogger("vfnic.images")

KERNELS = ("trixie", "sid")
KERNEL_LAYOUT = 1


def guest_kernel_choice() -> str:
    """VFNIC_GUEST_KERNEL: a suite name (trixie, the default; sid), a Debian
    kernel package (.deb) or a kernel build tree (see `kernel_spec`)."""
    choice = os.environ.get("VFNIC_GUEST_KERNEL", "trixie")
    try:
        check_kernel_spec(choice)
    except ProvisionError as error:
        raise ProvisionError(f"VFNIC_GUEST_KERNEL={choice!r}: {error}") from None
    return choice


def check_kernel_spec(spec: str) -> str:
    """What `spec` names: "suite", "deb" or "tree"; ProvisionError (one
    line) if it is none of them."""
    if spec in KERNELS:
        return "suite"
    path = Path(spec)
    if spec.endswith(".deb"):
        if not path.is_file():
            raise ProvisionError(f"kernel package {spec} does not exist")
        return "deb"
    if path.is_dir():
        if not (path / BZIMAGE).is_file():
            raise ProvisionError(f"{spec} is a directory without {BZIMAGE}: not a built kernel tree")
        if not _tree_modules(path):
            raise ProvisionError(f"{spec} has no installed modules: run `make modules_install "
                                 f"INSTALL_MOD_PATH={path / MODULES_INSTALL}` there (or give --kernel-modules)")
        return "tree"
    if not path.exists() and "/" not in spec:
        raise ProvisionError(f"unknown kernel {spec!r}: a suite ({', '.join(KERNELS)}), a .deb or a kernel build tree")
    raise ProvisionError(f"kernel {spec} does not exist" if not path.exists()
                         else f"kernel {spec} is neither a .deb nor a kernel build tree")


#: in a kernel build tree: the image, and where `vfnic up` looks for modules_install's output
BZIMAGE = "arch/x86/boot/bzImage"
MODULES_INSTALL = "modules-install"


def _tree_modules(tree: Path) -> Path | None:
    """The INSTALL_MOD_PATH of a build tree: TREE/modules-install, or TREE
    itself if it holds lib/modules."""
    for root in (tree / MODULES_INSTALL, tree):
        if (root / "lib/modules").is_dir():
            return root
    return None


def provision_deb_kernel(deb: Path) -> tuple[Path, Path]:
    """(vmlinuz, modules root) of a Debian linux-image .deb (and, beside it,
    the linux-base-/linux-binary-/linux-modules- packages of the same flavour, which
    newer kernels split the image into)."""
    deb = deb.resolve()
    flavour = deb.name.split("_")[0].removeprefix("linux-image-")  # e.g. 7.2.13+deb14-amd64
    companions = sorted(p for part in ("base", "binary", "modules")
                        for p in deb.parent.glob(f"linux-{part}-{flavour}_*.deb") if p != deb)

    def unpack(work: Path) -> None:
        root = work / "root"
        extract_debs([deb, *companions], root)
        _normalise_kernel_root(root, deb.name, "a .deb")

    recipe = {"deb": file_hash(deb), "companions": [file_hash(p) for p in companions], "layout": KERNEL_LAYOUT}
    root = build_once("kernel", recipe, unpack) / "root"
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    return vmlinuz, root


def _normalise_kernel_root(root: Path, what: str, suite: str) -> str:
    """Move a kernel package's files where CustomKernel expects them
    (ROOT/lib/modules/VERSION, ROOT/boot/vmlinuz-VERSION) and run depmod."""
    usr_modules = root / "usr/lib/modules"
    modules_dir = usr_modules if usr_modules.is_dir() else root / "lib/modules"
    if not modules_dir.is_dir():
        raise ProvisionError(f"{what} holds no kernel modules (is it a linux-image package?)")
    versions = [p.name for p in modules_dir.iterdir() if p.is_dir()]
    if len(versions) != 1:
        raise ProvisionError(f"{what} holds kernel versions {versions}, expected one")
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
        raise ProvisionError(f"{what} has no boot/vmlinuz-{version}")
    return version


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
        _normalise_kernel_root(root, image.name, suite)

    recipe = {"suite": suite, "packages": {p.name: p.version for p in packages}, "layout": KERNEL_LAYOUT}
    root = build_once("kernel", recipe, unpack) / "root"
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    return vmlinuz, root


def build_guest_image(spec: str):
    """The guest image booting the kernel `spec` names: a suite (the image
    as built for trixie, or with sid's kernel and modules swapped in), a
    Debian kernel .deb, or a kernel build tree (its bzImage and the
    modules `make modules_install INSTALL_MOD_PATH=TREE/modules-install`
    wrote)."""
    from images.provision.guest_image import build
    kind = check_kernel_spec(spec)
    if spec == "trixie":
        return build()
    if kind == "suite":
        return build(*provision_debian_kernel(spec))
    if kind == "deb":
        return build(*provision_deb_kernel(Path(spec)))
    tree = Path(spec)
    return build(tree / BZIMAGE, _tree_modules(tree))
