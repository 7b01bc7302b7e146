"""The HFI's firmware: vfnic's own images, and how the chip checks them.

On RTL silicon (implementation code 0) the driver requests four files and
downloads them into the chip (firmware.c), which runs them only once its
MISC block has authenticated them (`misc.py`):

    file             downloaded to                      through
    hfi1_fabric.fw   the port's 4 fabric SerDes SPICOs  SBus (`asic.py`), at probe and every link start
    hfi1_dc8051.fw   the DC's 8051 code RAM             DC_DC8051_CFG_RAM_ACCESS_* (`dc8051.py`)
    hfi1_sbus.fw     the SBus master's SPICO            SBus, only on the PCIe Gen3 path (not taken)
    hfi1_pcie.fw     the PCIe SerDes                    SBus, only on the PCIe Gen3 path (not taken)

Debian ships none of them and no vendor binary belongs in vfnic: these are
vfnic's own, with small payloads the model reads (the chip runs no code), in
the augmented CSS layout the driver validates (`formats.AugmentedFirmware`)
and signed with vfnic's test key (`firmware_key.py`):

    payload (64 bytes; the 8051's is written 8 bytes at a time, SerDes' 4)
    0   8  magic: VFNIC051 (8051), VFNICFSD (fabric), VFNICSBM (SBus), VFNICPCI (PCIe)
    8   4  8051: major, minor, patch, 0      others: u32 revision (the fabric SerDes reports
                                       its own once running; SBus and PCIe
                                       images are carried, never run)
    12  .. "vfnic test firmware, not for hardware", zero padded

The signature scheme is the model's choice [proposal]: the driver never
computes a hash or checks a signature, it only hands the chip the pieces
(`load_security_variables`, `run_rsa`). vfnic uses RSASSA-PKCS1-v1_5 with
SHA-256 over the CSS header followed by the payload -- exactly the bytes the
chip sees, in order: the header through MISC_CFG_SHA_PRELOAD, the payload
through the download path -- with the r2 = R^2 mod n (R = 2^2048) and
mu = -n^-1 mod 2^64 a 64-bit-word Montgomery multiplier needs, which is what
the file's r2 (256 bytes) and mu (8 bytes) fields are sized for. The
exponent is fused in the chip, like the modulus it must match; the file's
exponent field is never written to it.

`vfnic firmware --output DIR` writes the four files (`write_firmware`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import construct as c

from . import firmware_key
from .formats import (
    AUGMENTED_FIRMWARE_PREFIX,
    CSS_HEADER_BYTES,
    PLAIN_FIRMWARE_PREFIX,
    RSA_KEY_BYTES,
    AugmentedFirmware,
    CssHeader,
)

# verify_css_header's expected values (firmware.c)
CSS_MODULE_TYPE = 0x00000006
CSS_HEADER_LEN = PLAIN_FIRMWARE_PREFIX // 4  # 0xa1
CSS_HEADER_VERSION = 0x00010000
CSS_MODULE_VENDOR = 0x00008086
KEY_DWORDS = RSA_KEY_BYTES // 4
#: the date every vfnic image carries (BCD yyyymmdd): fixed, so builds are reproducible
IMAGE_DATE = 0x20261130
PAYLOAD_BYTES = 64
PAYLOAD_NOTE = b"vfnic test firmware, not for hardware"

#: DER DigestInfo prefix of a SHA-256 digest (RFC 8017, 9.2 note 1)
DIGEST_INFO_SHA256 = bytes.fromhex("3031300d060960864801650304020105000420")
MONTGOMERY_R_BITS = 2048
MU_MODULUS = 1 << 64

Dc8051Descriptor = c.Struct(
    "magic" / c.Const(b"VFNIC051"),
    "major" / c.Int8ul,
    "minor" / c.Int8ul,
    "patch" / c.Int8ul,
    c.Padding(1),
)
SerdesDescriptor = c.Struct(
    "magic" / c.Bytes(8),
    "revision" / c.Int32ul,
)

#: what vfnic's images carry
DC8051_VERSION = (1, 27, 0)  # >= 1.25: LCB writes through the 8051, LCB reset supported
SBUS_MASTER_REVISION = 0x10A1
PCIE_SERDES_REVISION = 0x20A1
FABRIC_SERDES_REVISION = 0x30A1


class Image(Enum):
    """The four files, in the order the driver requests them, with their CSS
    module ids (not checked by the driver) and payload magics."""

    SBUS = ("hfi1_sbus.fw", 1, b"VFNICSBM")
    PCIE = ("hfi1_pcie.fw", 2, b"VFNICPCI")
    FABRIC = ("hfi1_fabric.fw", 3, b"VFNICFSD")
    DC8051 = ("hfi1_dc8051.fw", 4, b"VFNIC051")

    @property
    def filename(self) -> str:
        return self.value[0]

    @property
    def module_id(self) -> int:
        return self.value[1]

    @property
    def magic(self) -> bytes:
        return self.value[2]


class FirmwareError(ValueError):
    """A file the driver would refuse, with the driver's reason."""


class Verdict(Enum):
    """What the RSA engine concludes (MISC_CFG_FW_CTRL.RSA_STATUS and MISC_ERR_STATUS)."""

    GOOD = "authenticated"
    KEY_MISMATCH = "the modulus is not the fused key"
    AUTH_FAILED = "the signature does not verify"


# -- payloads ------------------------------------------------------------------------

def _pad(descriptor: bytes) -> bytes:
    body = descriptor + PAYLOAD_NOTE
    return body + bytes(PAYLOAD_BYTES - len(body))


def dc8051_payload(version: tuple[int, int, int] = DC8051_VERSION) -> bytes:
    major, minor, patch = version
    return _pad(Dc8051Descriptor.build(dict(major=major, minor=minor, patch=patch)))


def serdes_payload(image: Image, revision: int) -> bytes:
    return _pad(SerdesDescriptor.build(dict(magic=image.magic, revision=revision)))


def dc8051_version(code: bytes) -> tuple[int, int, int] | None:
    """The version a code RAM's descriptor names; None if it holds none."""
    try:
        descriptor = Dc8051Descriptor.parse(code[:Dc8051Descriptor.sizeof()])
    except c.ConstructError:
        return None
    return descriptor.major, descriptor.minor, descriptor.patch


def serdes_revision(image: Image, payload: bytes) -> int | None:
    """The revision a SerDes payload's descriptor names; None if it holds none."""
    if len(payload) < SerdesDescriptor.sizeof():
        return None
    descriptor = SerdesDescriptor.parse(payload)
    return descriptor.revision if descriptor.magic == image.magic else None


# -- the signature scheme ----------------------------------------------------------------

def montgomery_r2(modulus: int) -> int:
    return pow(2, 2 * MONTGOMERY_R_BITS, modulus)


def montgomery_mu(modulus: int) -> int:
    return -pow(modulus, -1, MU_MODULUS) % MU_MODULUS


def encoded_message(header: bytes, payload: bytes) -> bytes:
    """EMSA-PKCS1-v1_5 of SHA-256(header || payload), 256 bytes."""
    digest = hashlib.sha256(header + payload).digest()
    padding = RSA_KEY_BYTES - 3 - len(DIGEST_INFO_SHA256) - len(digest)
    return b"\x00\x01" + b"\xff" * padding + b"\x00" + DIGEST_INFO_SHA256 + digest


def verify(header: bytes, payload: bytes, modulus: int, signature: int, r2: int, mu: int,
           fused_modulus: int | None, exponent: int = firmware_key.E) -> Verdict:
    """The chip's check of one download: `header` as streamed to the SHA
    preload, `payload` as it went down the download path, the rest as
    written to MISC_CFG_RSA_*. `fused_modulus` None accepts any key."""
    if fused_modulus is not None and modulus != fused_modulus:
        return Verdict.KEY_MISMATCH
    if modulus < 3 or modulus % 2 == 0 or len(header) != CSS_HEADER_BYTES:
        return Verdict.AUTH_FAILED
    if r2 != montgomery_r2(modulus) or mu != montgomery_mu(modulus) or not 0 < signature < modulus:
        return Verdict.AUTH_FAILED
    recovered = pow(signature, exponent, modulus).to_bytes(RSA_KEY_BYTES, "big")
    return Verdict.GOOD if recovered == encoded_message(header, payload) else Verdict.AUTH_FAILED


# -- files ---------------------------------------------------------------------------------

def build_image(image: Image, payload: bytes, modulus: int = firmware_key.N,
                private_exponent: int = firmware_key.D, exponent: int = firmware_key.E,
                date: int = IMAGE_DATE) -> bytes:
    """An augmented CSS file carrying `payload`, signed with the given key."""
    if len(payload) % 4 or not payload:
        raise FirmwareError("a payload is a whole, non-zero number of dwords (SBus downloads 4 bytes at a time)")
    header = CssHeader.build(dict(
        module_type=CSS_MODULE_TYPE, header_len=CSS_HEADER_LEN, header_version=CSS_HEADER_VERSION,
        module_id=image.module_id, module_vendor=CSS_MODULE_VENDOR, date=date,
        size=(PLAIN_FIRMWARE_PREFIX + len(payload)) // 4, key_size=KEY_DWORDS, modulus_size=KEY_DWORDS,
        exponent_size=1))
    signature = pow(int.from_bytes(encoded_message(header, payload), "big"), private_exponent, modulus)
    return AugmentedFirmware.build(dict(
        css=CssHeader.parse(header), modulus=modulus, exponent=exponent, signature=signature,
        r2=montgomery_r2(modulus), mu=montgomery_mu(modulus), payload=payload))


@dataclass(frozen=True)
class ParsedImage:
    header: bytes  # the raw 128 bytes: what the driver streams to the SHA preload
    modulus: int
    exponent: int
    signature: int
    r2: int
    mu: int
    payload: bytes


def parse_image(data: bytes) -> ParsedImage:
    """The checks `obtain_one_firmware` makes, in its order, with its
    messages; then the pieces the driver writes to the chip."""
    if len(data) < CSS_HEADER_BYTES:
        raise FirmwareError("firmware is too small")
    css = CssHeader.parse(data)
    expected = (("module_type", CSS_MODULE_TYPE), ("header_len", CSS_HEADER_LEN),
                ("header_version", CSS_HEADER_VERSION), ("module_vendor", CSS_MODULE_VENDOR),
                ("key_size", KEY_DWORDS), ("modulus_size", KEY_DWORDS), ("exponent_size", 1))
    for name, value in expected:
        if css[name] != value:
            raise FirmwareError(f"invalid firmware header field {name}: expected {value:#x}, actual {css[name]:#x}")
    augment = AUGMENTED_FIRMWARE_PREFIX - PLAIN_FIRMWARE_PREFIX
    if css.size * 4 == len(data):
        raise FirmwareError("driver is unable to validate firmware without r2 and mu (not in firmware file)")
    if css.size * 4 + augment != len(data):
        raise FirmwareError(f"invalid firmware header field size: expected {len(data) // 4:#x} or "
                            f"{(len(data) - augment) // 4:#x}, actual {css.size:#x}")
    if len(data) <= AUGMENTED_FIRMWARE_PREFIX:
        raise FirmwareError(f"firmware size {len(data)} must be larger than {AUGMENTED_FIRMWARE_PREFIX} bytes")
    parsed = AugmentedFirmware.parse(data)
    return ParsedImage(bytes(data[:CSS_HEADER_BYTES]), parsed.modulus, parsed.exponent, parsed.signature,
                       parsed.r2, parsed.mu, parsed.payload)


def verify_image(data: bytes, fused_modulus: int | None = firmware_key.N) -> Verdict:
    """What the chip would conclude about a whole file (layout checked first)."""
    image = parse_image(data)
    return verify(image.header, image.payload, image.modulus, image.signature, image.r2, image.mu, fused_modulus)


def firmware_files() -> dict[str, bytes]:
    """vfnic's four images, by file name, in the driver's request order."""
    return {
        Image.SBUS.filename: build_image(Image.SBUS, serdes_payload(Image.SBUS, SBUS_MASTER_REVISION)),
        Image.PCIE.filename: build_image(Image.PCIE, serdes_payload(Image.PCIE, PCIE_SERDES_REVISION)),
        Image.FABRIC.filename: build_image(Image.FABRIC, serdes_payload(Image.FABRIC, FABRIC_SERDES_REVISION)),
        Image.DC8051.filename: build_image(Image.DC8051, dc8051_payload()),
    }


def write_firmware(directory: Path) -> list[Path]:
    """Write the four files into `directory` (created if missing); their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in firmware_files().items():
        path = directory / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        written.append(path)
    return written
