"""Guests for vfnic: a QEMU with vfio-user-pci, a Debian trixie guest image,
and the launcher and agent that run commands inside guests.

- `images.qemu.Qemu.locate()`: the QEMU to use (host's, or sid's unpacked).
- `images.guest.build()`: the guest image (kernel, initrd, ext4 root).
- `images.vm.Guest`: one running guest, driven through its agent.
- `images.server.VfnicServer`: a `vfnic serve` process for a guest to attach to.

Everything built is cached under `${VFNIC_CACHE:-~/.cache/vfnic}`; see
docs/images.md.
"""

from pathlib import Path

#: Files that go into guests (agent, init, helpers' sources).
GUEST_FILES_DIR = Path(__file__).parent / "guest"
