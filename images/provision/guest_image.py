"""The guest image: Debian trixie with the stock 6.12 kernel and RDMA userland.

Built in two cached stages so that editing the agent does not re-run
debootstrap:

1. **rootfs** (`cache/rootfs/HASH/`): `debootstrap --variant=minbase trixie`,
   then `images/guest/setup-rootfs.sh` inside it installs `GUEST_PACKAGES`
   (initramfs-tools configured with `MODULES=list`, so the kernel's postinst
   makes a small Debian initrd). Keyed by suite, package list, initrd
   modules and the setup script; ~1.5 min cold.
2. **image** (`cache/image/HASH/`): a hard-linked copy of the rootfs tree
   plus vfnic's guest files (init, agent, systemd unit, udev rule), the
   files each device's guests need (devmodel/registry.py `GuestFiles`: hfi1's
   firmware of `vfnic firmware` in /usr/lib/firmware, requested on RTL
   silicon), the custom kernel's modules if one is given, packed into `root.ext4` with
   `mkfs.ext4 -d` (no loop device, no mount). Next to it: `vmlinux` (the
   kernel decompressed for PVH boot, images/provision/vmlinux.py), `vmlinuz`,
   `initrd.img` (vfnic's, images/provision/initrd.py), `initrd-debian.img` and
   `manifest.json` (every package's version, the kernel version, the
   recipe). ~5 s.

Guests boot the kernel directly (`-kernel`/`-initrd`) and attach `root.ext4`
with `snapshot=on`, so any number of guests share one read-only image.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devmodel import registry
from images import GUEST_FILES_DIR
from images.provision.cache import build_once, downloads_dir, file_hash, recipe_hash, tree_hash
from images.provision.debian import ARCHIVE_KEYRING, PrivateApt, ProvisionError, debian_mirror, fetch_debootstrap, run_logged
from images.provision.helpers import compile_static
from images.provision.initrd import INITRD_MODULES, ModuleTree, build_initrd
from images.provision.vmlinux import pvh_kernel

log = logging.getLogger("vfnic.images")

GUEST_SUITE = "trixie"

GUEST_PACKAGES = [
    "linux-image-amd64", "udev", "kmod", "pciutils", "iproute2", "iputils-ping", "ethtool",
    "procps", "strace",
    # the agent (stdlib modules in python3-minimal only)
    "python3-minimal",
    # the alternative init (`Guest(init="systemd")`)
    "systemd", "systemd-sysv",
    # RDMA and Omni-Path userland
    "rdma-core", "ibverbs-utils", "ibverbs-providers", "rdmacm-utils", "perftest", "qperf",
    "infiniband-diags",
    "opa-basic-tools", "opa-fm", "libpsm2-2", "libfabric-bin",
    # MPI over PSM2 (mtl psm2, mtl ofi): Open MPI 5, NetPIPE and mpi4py
    "openmpi-bin", "netpipe-openmpi", "python3-mpi4py",
    # the upper-layer protocols' tools: IP over the fabric, NVMe over Fabrics, SRP and LIO
    "iperf3", "netcat-openbsd", "nvme-cli", "fio", "targetcli-fb", "srptools",
]

#: Modules the stock kernel must ship for vfnic's devices to be usable.
REQUIRED_MODULES = ["hfi1", "rdmavt", "ib_uverbs", "ib_ipoib", "ib_umad", "rdma_ucm",
                    # the ULPs' targets and hosts, and RAM disks to export
                    "nvmet_rdma", "nvme_rdma", "nvmet_tcp", "nvme_tcp", "ib_srpt", "ib_srp", "brd"]

#: Units that cost boot time and do nothing in a test guest (see
#: guest-facts.md); masked for the systemd init.
MASKED_UNITS = [
    "getty@.service", "serial-getty@.service", "getty-static.service", "console-getty.service",
    "systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer", "e2scrub_all.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer",
    "systemd-tpm2-setup-early.service", "systemd-tpm2-setup.service",
    "systemd-pcrmachine.service", "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
    "systemd-pcrphase-initrd.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "dev-hugepages.mount", "nvmf-autoconnect.service", "opafm.service",
    "systemd-journal-flush.service", "systemd-update-utmp.service", "systemd-random-seed.service",
    # Every boot of a snapshot image looks like a first boot (/etc/.updated
    # and machine-id are never kept), which would run these each time.
    "ldconfig.service", "systemd-journal-catalog-update.service", "systemd-update-done.service",
    "systemd-hwdb-update.service", "systemd-sysusers.service", "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    # Kernel facilities a test guest does not use.
    "modprobe@drm.service", "modprobe@efi_pstore.service", "modprobe@fuse.service",
    "sys-fs-fuse-connections.mount", "sys-kernel-config.mount", "dev-mqueue.mount",
]

#: vfnic's files in the guest: (source in images/guest, path in the guest, mode).
GUEST_FILES = [
    ("init", "usr/lib/vfnic/init", 0o755),
    ("agent.py", "usr/lib/vfnic/agent.py", 0o644),
    ("vfnic-agent.service", "etc/systemd/system/vfnic-agent.service", 0o644),
    ("90-vfnic-rdma-modules.rules", "etc/udev/rules.d/90-vfnic-rdma-modules.rules", 0o644),
    ("modprobe-vfnic.conf", "etc/modprobe.d/vfnic.conf", 0o644),
]
INITRD_INIT_SOURCE = "vfnic-initrd-init.c"
#: Free space left in root.ext4 for files tests write (the file is sparse).
IMAGE_FREE_BYTES = 1 << 30


@dataclass(frozen=True)
class GuestImage:
    """A built guest image directory (see the module docstring for its files)."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "root.ext4"

    @property
    def kernel(self) -> Path:
        """What guests boot: the PVH vmlinux when there is one (no
        decompression in the guest, images/provision/vmlinux.py), else the bzImage."""
        vmlinux = self.directory / "vmlinux"
        return vmlinux if vmlinux.is_file() else self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """vfnic's initrd (images/provision/initrd.py): the fast default."""
        return self.directory / "initrd.img"

    @property
    def debian_initrd(self) -> Path | None:
        """The stock kernel's initramfs-tools initrd (MODULES=list), kept as
        the conventional alternative; None with a custom kernel."""
        path = self.directory / "initrd-debian.img"
        return path if path.is_file() else None

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / "manifest.json").read_text())

    @property
    def kernel_version(self) -> str:
        return self.manifest["kernel_version"]


def build(kernel: Path | None = None, modules: Path | None = None) -> GuestImage:
    """The guest image, built on first use and cached by recipe.

    With `kernel` (a bzImage) and `modules` (an `INSTALL_MOD_PATH` tree, i.e.
    containing lib/modules/VERSION), the stock kernel and its modules are
    replaced and an initrd is made for the new ones.
    """
    if (kernel is None) != (modules is None):
        raise ValueError("a custom kernel needs both kernel= (bzImage) and modules= (modules tree)")
    rootfs = provision_rootfs()
    custom = None
    if kernel is not None:
        custom = CustomKernel(Path(kernel).resolve(), Path(modules).resolve())
    recipe = {
        "rootfs": rootfs.parent.name,
        "guest_files": {source: file_hash(GUEST_FILES_DIR / source) for source, _, _ in GUEST_FILES},
        "masked_units": MASKED_UNITS,
        "custom_kernel": custom.recipe() if custom else None,
        "initrd_init": file_hash(GUEST_FILES_DIR / INITRD_INIT_SOURCE),
        "device_files": {path: hashlib.sha256(data).hexdigest() for path, data in device_files().items()},
        # The code that assembles the image: editing it rebuilds the image
        # (seconds), never the rootfs.
        "builders": {name: file_hash(Path(__file__).parent / name)
                     for name in ("guest_image.py", "initrd.py", "vmlinux.py")},
    }
    directory = build_once("image", recipe, lambda work: assemble_image(work, rootfs, custom))
    return GuestImage(directory)


# --- stage 1: the root file system -------------------------------------------

def provision_rootfs() -> Path:
    """The debootstrapped and customised trixie tree (built on first use)."""
    recipe = {
        "suite": GUEST_SUITE,
        "packages": GUEST_PACKAGES,
        "initrd_modules": INITRD_MODULES,
        "setup_script": file_hash(GUEST_FILES_DIR / "setup-rootfs.sh"),
    }
    return build_once("rootfs", recipe, _build_rootfs) / "tree"


def _build_rootfs(work: Path) -> None:
    tree = work / "tree"
    debootstrap(tree)
    log.info("guest: installing %d packages into the %s root", len(GUEST_PACKAGES), GUEST_SUITE)
    apt_archives = PrivateApt(GUEST_SUITE).archives
    shutil.copy(GUEST_FILES_DIR / "setup-rootfs.sh", tree / "tmp/setup-rootfs.sh")
    with host_resolver(tree):
        run_in_root(tree, ["/bin/sh", "/tmp/setup-rootfs.sh", " ".join(INITRD_MODULES), "--",
                           *GUEST_PACKAGES],
                    what="installing the guest packages",
                    binds={apt_archives: "var/cache/apt/archives"})
    (tree / "tmp/setup-rootfs.sh").unlink()
    kernel_version = installed_kernel_version(tree)
    modules = ModuleTree(tree / "usr/lib/modules" / kernel_version)
    missing = [m for m in REQUIRED_MODULES if not modules.has(m)]
    if missing:
        raise ProvisionError(f"the {GUEST_SUITE} kernel {kernel_version} lacks modules {missing}")
    (work / "packages.json").write_text(json.dumps(installed_packages(tree), indent=1) + "\n")


def debootstrap(tree: Path) -> None:
    tool = fetch_debootstrap(GUEST_SUITE)
    mirror = debian_mirror()
    log.info("guest: debootstrap --variant=minbase %s from %s", GUEST_SUITE, mirror)
    package_cache = downloads_dir(f"debootstrap-{GUEST_SUITE}")
    # A private mount namespace: whatever debootstrap mounts inside the
    # target disappears with it, even if it is killed half-way.
    run_logged(["unshare", "--mount", "--propagation", "private",
                str(tool / "usr/sbin/debootstrap"), "--variant=minbase",
                f"--cache-dir={package_cache}", f"--keyring={ARCHIVE_KEYRING}",
                GUEST_SUITE, str(tree), mirror],
               what=f"debootstrap of {GUEST_SUITE}",
               hint=f"(mirror {mirror}; set VFNIC_DEBIAN_MIRROR to use another)",
               env={**os.environ, "DEBOOTSTRAP_DIR": str(tool / "usr/share/debootstrap")})


_CHROOT_WRAPPER = """
set -e
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
while [ "$1" != "--" ]; do
    mount --bind "$1" "$root/$2"; shift 2
done
shift
exec chroot "$root" "$@"
"""


def run_in_root(tree: Path, argv: list[str], what: str, binds: dict[Path, str] | None = None) -> str:
    """Run `argv` chrooted into `tree`, with /proc, /sys, /dev and `binds`
    (host directory -> path in the tree) mounted in a private mount namespace
    that vanishes with the command, so nothing stays mounted on the host."""
    bind_args = [arg for host_dir, inside in (binds or {}).items() for arg in (str(host_dir), inside)]
    return run_logged(["unshare", "--mount", "--propagation", "private", "sh", "-c", _CHROOT_WRAPPER,
                       "chroot-wrapper", str(tree), *bind_args, "--", *argv],
                      what=what, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})


@contextmanager
def host_resolver(tree: Path) -> Iterator[None]:
    """The host's DNS configuration in the tree while apt runs there, and an
    empty one afterwards: the image must not carry the host's."""
    resolv_conf = tree / "etc/resolv.conf"
    resolv_conf.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv_conf)
    try:
        yield
    finally:
        resolv_conf.unlink(missing_ok=True)
        resolv_conf.write_text("")


def installed_kernel_version(tree: Path) -> str:
    versions = sorted(p.name for p in (tree / "usr/lib/modules").iterdir())
    if len(versions) != 1:
        raise ProvisionError(f"expected one kernel in {tree}/usr/lib/modules, found {versions}")
    return versions[0]


def installed_packages(tree: Path) -> dict[str, str]:
    output = run_logged(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W",
                         "-f=${Package}\\t${Version}\\n"], "listing the guest's packages")
    return dict(line.split("\t", 1) for line in output.splitlines() if line)


# --- stage 2: the image -------------------------------------------------------

@dataclass(frozen=True)
class CustomKernel:
    """A kernel built outside Debian: its bzImage and `modules_install` tree."""

    image: Path
    modules_root: Path

    @property
    def version(self) -> str:
        versions = [p.name for p in (self.modules_root / "lib/modules").iterdir() if p.is_dir()]
        if len(versions) != 1:
            raise ProvisionError(f"{self.modules_root}/lib/modules should hold one kernel "
                                 f"version, found {versions or 'none'}")
        return versions[0]

    def recipe(self) -> dict:
        if not self.image.is_file():
            raise ProvisionError(f"custom kernel image {self.image} does not exist")
        return {"version": self.version, "image": file_hash(self.image),
                "modules": tree_hash(self.modules_root / "lib/modules" / self.version)}


def assemble_image(work: Path, rootfs: Path, custom: CustomKernel | None) -> None:
    stage = work / "tree"
    log.info("guest: assembling the image")
    # Hard links: quick, and safe because every file changed below is
    # unlinked first rather than written through a shared inode.
    run_logged(["cp", "-a", "--link", str(rootfs), str(stage)], "copying the root tree")
    install_guest_files(stage)
    install_device_files(stage)
    mask_units(stage)
    if custom:
        kernel_version = install_custom_kernel(stage, custom, work)
    else:
        kernel_version = installed_kernel_version(stage)
        shutil.copy(stage / "boot" / f"vmlinuz-{kernel_version}", work / "vmlinuz")
        shutil.copy(stage / "boot" / f"initrd.img-{kernel_version}", work / "initrd-debian.img")
        # Guests get these from the host (-kernel/-initrd): not in the disk.
        for name in (f"vmlinuz-{kernel_version}", f"initrd.img-{kernel_version}"):
            (stage / "boot" / name).unlink()
    modules = ModuleTree(stage / "usr/lib/modules" / kernel_version)
    initrd_modules = build_initrd(modules, compile_static(INITRD_INIT_SOURCE), work / "initrd.img")
    if not pvh_kernel(work / "vmlinuz", work / "vmlinux"):
        log.info("guest: kernel %s cannot boot through PVH; guests decompress it", kernel_version)
    make_ext4(stage, work / "root.ext4")
    shutil.rmtree(stage)
    recipe = json.loads((work / "recipe.json").read_text())
    manifest = {
        "recipe_hash": recipe_hash(recipe),
        "suite": GUEST_SUITE,
        "kernel_version": kernel_version,
        "kernel": str(custom.image) if custom else "debian linux-image-amd64",
        "initrd_modules": initrd_modules,
        "required_modules": {m: modules.has(m) for m in REQUIRED_MODULES},
        "packages": json.loads((rootfs.parent / "packages.json").read_text()),
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Write `path` as a new inode (never through a hard link into the rootfs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def install_guest_files(stage: Path) -> None:
    for source, inside, mode in GUEST_FILES:
        replace_file(stage / inside, (GUEST_FILES_DIR / source).read_bytes(), mode)
    wants = stage / "etc/systemd/system/multi-user.target.wants/vfnic-agent.service"
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.symlink_to("../vfnic-agent.service")


def device_files() -> dict[str, bytes]:
    """Every device's guest files, by path relative to the guest's root."""
    return {path: data for device in sorted(registry.DEVICES) for path, data in registry.guest_files(device).items()}


def install_device_files(stage: Path) -> None:
    """The files devices' guests need where they look for them (hfi1 on RTL
    silicon, `--option icode=silicon`, refuses to probe without its firmware)."""
    for path, data in device_files().items():
        replace_file(stage / path, data, 0o644)


def mask_units(stage: Path) -> None:
    for unit in MASKED_UNITS:
        link = stage / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def install_custom_kernel(stage: Path, custom: CustomKernel, work: Path) -> str:
    """Swap the stock kernel and its modules for the custom ones (whose
    modules.dep `make modules_install` already wrote)."""
    version = custom.version
    for stock in (stage / "usr/lib/modules").iterdir():
        shutil.rmtree(stock)
    for stock in (stage / "boot").glob("*-*-amd64"):
        stock.unlink()
    shutil.copytree(custom.modules_root / "lib/modules" / version, stage / "usr/lib/modules" / version,
                    symlinks=True)
    for link in ("build", "source"):
        (stage / "usr/lib/modules" / version / link).unlink(missing_ok=True)
    shutil.copy(custom.image, work / "vmlinuz")
    return version


def make_ext4(tree: Path, image: Path) -> None:
    """Pack `tree` into a journal-less ext4 image (guests write only to their
    own snapshot overlay, so a journal would be pure boot-time cost)."""
    used = int(run_logged(["du", "-s", "--block-size=1", str(tree)], "sizing the tree").split()[0])
    size_kib = (used * 5 // 4 + IMAGE_FREE_BYTES) // 1024
    run_logged(["mkfs.ext4", "-q", "-F", "-L", "vfnic-root", "-O", "^has_journal",
                "-E", "root_owner=0:0", "-d", str(tree), str(image), f"{size_kib}k"],
               "making the ext4 image")
