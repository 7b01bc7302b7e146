"""The guest platform itself: the agent under abuse, the alternative boot
path (systemd as init, Debian's initramfs-tools initrd) and images derived
for a custom kernel. These keep the tools other tests stand on honest."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from devmodel.testdev import DEVICE_ID, VENDOR_ID
from images.lab.fabric import rdma_device
from images.lab.lspci import lspci
from images.lab.vm import AgentError
from images.provision.guest_image import build, installed_kernel_version, provision_rootfs
from images.provision.initrd import INITRD_MODULES, ModuleTree, module_name

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def plain_guest(module_lab):
    return module_lab.guest()


def test_agent_returns_megabytes_of_output_from_both_streams(plain_guest):
    result = plain_guest.run("head -c 20000000 /dev/zero; head -c 3000000 /dev/zero >&2",
                             timeout=120, text=False)
    assert (result.rc, len(result.stdout), len(result.stderr), result.truncated) == \
        (0, 20_000_000, 3_000_000, False)


def test_agent_kills_a_hanging_command_and_keeps_serving(plain_guest):
    result = plain_guest.run("echo started; exec sleep 600", timeout=2)
    assert (result.timed_out, result.rc, result.stdout) == (True, -9, "started\n")
    assert plain_guest.run("pgrep -x sleep").rc == 1, "the timed-out command's process survived"
    assert plain_guest.run("echo still here").stdout == "still here\n"


def test_files_put_into_the_guest_come_back_intact(plain_guest):
    data = os.urandom(3 << 20)
    plain_guest.put("/var/tmp/vfnic-blob", data, mode=0o640)
    assert plain_guest.run("stat -c %a /var/tmp/vfnic-blob").stdout.strip() == "640"
    assert hashlib.sha256(plain_guest.get("/var/tmp/vfnic-blob")).digest() == hashlib.sha256(data).digest()
    with pytest.raises(AgentError, match="FileNotFoundError"):
        plain_guest.get("/var/tmp/vfnic-no-such-file")


def test_systemd_init_with_the_debian_initrd_still_serves_the_agent(vfnic_server, boot_guest):
    guest = boot_guest(vfnic_server("testdev"), init="systemd", initrd="debian")
    assert guest.run("cat /proc/1/comm").stdout.strip() == "systemd"
    assert guest.run("systemctl is-active vfnic-agent.service").stdout.strip() == "active"
    assert len(lspci(guest, "-d", f"{VENDOR_ID:04x}:{DEVICE_ID:04x}")) == 1


def fake_custom_kernel(directory: Path) -> tuple[Path, Path]:
    """A stand-in for a `make modules_install` result: the stock bzImage with
    only the modules the initrd needs, and a modules.dep listing them."""
    stock_tree = provision_rootfs()
    version = installed_kernel_version(stock_tree)
    stock = ModuleTree(stock_tree / "usr/lib/modules" / version)
    modules = directory / "lib/modules" / version
    dependencies = []
    for path in stock.load_order(INITRD_MODULES):
        (modules / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(stock.directory / path, modules / path)
        dependencies.append(f"{path}: {' '.join(stock.dependencies[module_name(path)][1])}")
    (modules / "modules.dep").write_text("\n".join(dependencies) + "\n")
    shutil.copy(stock.directory / "modules.builtin", modules / "modules.builtin")
    bzimage = directory / "bzImage"
    shutil.copy(build().directory / "vmlinuz", bzimage)
    return bzimage, directory


def test_an_image_for_a_custom_kernel_boots_with_its_modules(tmp_path, boot_guest):
    bzimage, modules_root = fake_custom_kernel(tmp_path / "kernel")
    image = build(kernel=bzimage, modules=modules_root)
    assert image.directory != build().directory
    assert image.manifest["required_modules"]["hfi1"] is False

    guest = boot_guest(image=image)
    loaded = guest.run("cut -d' ' -f1 /proc/modules", check=True).stdout.split()
    assert "ext4" in loaded and "virtio_blk" in loaded
    assert guest.run("ls /lib/modules/*/kernel/drivers/infiniband 2>/dev/null | wc -l").stdout.strip() == "0"


def test_an_hfi_autoloads_hfi1_then_rdma_core_modules_and_rdma_core_names_it(vfnic_server, boot_guest):
    """What the image's udev set-up promises without systemd: hfi1 binds to
    8086:24f0 at boot, rdma-core's module lists follow the RDMA device,
    rdma-core's naming rule renames hfi1_0 as in a stock guest, and the
    device sits in NUMA node 0."""
    guest = boot_guest(vfnic_server("hfi1"))
    name = rdma_device(guest)
    loaded = set(guest.run("cut -d' ' -f1 /proc/modules", check=True).stdout.split())
    assert {"hfi1", "rdmavt", "ib_uverbs", "ib_umad", "ib_ipoib", "rdma_ucm"} <= loaded
    assert name.startswith("opap"), f"rdma-core's persistent naming gives OPA devices opap names, not {name}"
    (device,) = lspci(guest, "-d", "8086:24f0")
    assert guest.run(f"cat /sys/bus/pci/devices/{device.address}/numa_node").stdout.strip() == "0"
