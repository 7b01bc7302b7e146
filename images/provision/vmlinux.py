"""The guest kernel in the form QEMU boots fastest: an uncompressed ELF
vmlinux entered through its PVH note.

A bzImage decompresses itself inside the guest before Linux starts; under
TCG that took 2-3 s of every boot for Debian's 12 MB zstd bzImage. QEMU loads
an ELF kernel carrying a PVH entry note (CONFIG_PVH=y) directly, so the
payload is decompressed once, here, and guests skip that step.

bzImage layout (Documentation/arch/x86/boot.rst): the setup header's
`setup_sects` (0x1f1) gives the real-mode part's size in 512-byte sectors
(after the boot sector); `payload_offset` (0x248) and `payload_length`
(0x24c) locate the compressed vmlinux within the protected-mode part that
follows.
"""
from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

SETUP_SECTS = 0x1F1
PAYLOAD_OFFSET = 0x248
BOOT_SIGNATURE = (0x202, b"HdrS")
XEN_ELFNOTE_PHYS32_ENTRY = 18
ELF_MAGIC = b"\x7fELF"
PT_NOTE = 4


def _zstd(data: bytes) -> bytes:
    # The kernel's build appends the uncompressed size after the zstd frame;
    # zstd then reports "unsupported format" for those 4 bytes after writing
    # the whole frame, so its exit status is not the judge: the ELF check is.
    return subprocess.run(["zstd", "-dc"], input=data, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).stdout


_DECOMPRESSORS = {
    b"\x28\xb5\x2f\xfd": _zstd,
    b"\xfd7zXZ": lambda data: lzma.LZMADecompressor().decompress(data),
    b"\x1f\x8b": gzip.decompress,
}


def bzimage_payload(image: bytes) -> bytes | None:
    """The decompressed vmlinux inside a bzImage, or None if this is not a
    bzImage or its compression is not one handled here."""
    offset, signature = BOOT_SIGNATURE
    if image[offset:offset + len(signature)] != signature:
        return None
    setup_sectors = image[SETUP_SECTS] or 4
    payload_offset, payload_length = struct.unpack_from("<II", image, PAYLOAD_OFFSET)
    start = (setup_sectors + 1) * 512 + payload_offset
    payload = image[start:start + payload_length]
    for magic, decompress in _DECOMPRESSORS.items():
        if payload.startswith(magic):
            return decompress(payload)
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether a 64-bit little-endian ELF carries a Xen PHYS32_ENTRY note."""
    if not elf.startswith(ELF_MAGIC) or elf[4] != 2:
        return False
    program_headers, = struct.unpack_from("<Q", elf, 0x20)
    entry_size, count = struct.unpack_from("<HH", elf, 0x36)
    for index in range(count):
        header = program_headers + index * entry_size
        segment_type, = struct.unpack_from("<I", elf, header)
        if segment_type == PT_NOTE:
            offset, = struct.unpack_from("<Q", elf, header + 8)
            size, = struct.unpack_from("<Q", elf, header + 32)
            if XEN_ELFNOTE_PHYS32_ENTRY in _xen_note_types(elf[offset:offset + size]):
                return True
    return False


def _xen_note_types(notes: bytes) -> set[int]:
    types, position = set(), 0
    while position + 12 <= len(notes):
        name_size, description_size, note_type = struct.unpack_from("<III", notes, position)
        name = notes[position + 12:position + 12 + name_size]
        if name.rstrip(b"\0") == b"Xen":
            types.add(note_type)
        position += 12 + _align4(name_size) + _align4(description_size)
    return types


def _align4(size: int) -> int:
    return (size + 3) & ~3


def pvh_kernel(kernel: Path, output: Path) -> bool:
    """Write the PVH-bootable vmlinux for `kernel` (a bzImage, or already an
    ELF vmlinux) to `output`; False if it cannot be booted that way."""
    data = kernel.read_bytes()
    vmlinux = data if data.startswith(ELF_MAGIC) else bzimage_payload(data)
    if not vmlinux or not has_pvh_entry(vmlinux):
        return False
    output.write_bytes(vmlinux)
    return True
