"""Guests for vfnic: a QEMU with vfio-user-pci, a Debian trixie guest image,
and the launcher and agent that run commands inside guests. Two rooms:
`provision/` builds (QEMU, Debian, kernels, the image) and `lab/` runs (VMs,
the agent connection, fabrics of guests, `vfnic serve` processes); the files
that go into guests are in `guest/`.

- `images.provision.qemu.Qemu.locate()`: the QEMU to use (host's, or sid's unpacked).
- `images.provision.guest_image.build()`: the guest image (kernel, initrd, ext4 root).
- `images.lab.vm.Guest`: one running guest, driven through its agent.
- `images.lab.server.VfnicServer`: a `vfnic serve` process for a guest to attach to.

Everything built is cached under `${VFNIC_CACHE:-~/.cache/vfnic}`; see
docs/images.md.
"""

from pathlib import Path

#: Files that go into guests (agent, init, helpers' sources).
GUEST_FILES_DIR = Path(__file__).parent / "guest"
