"""Provisioning: what guests are built from, fetched and built once into the
cache (`${VFNIC_CACHE:-~/.cache/vfnic}`, `cache`): Debian packages without
the host's apt (`debian`), the QEMU with vfio-user-pci (`qemu`), the guest
image (`guest_image`: rootfs, `initrd`, the PVH `vmlinux`), the static
helpers pushed into guests (`helpers`), Debian's other kernels for the kernel
matrix (`kernel_matrix`) and files of its kernel source (`kernel_source`),
and tshark to judge captures (`tshark`). Imports nothing of `images.lab`."""
