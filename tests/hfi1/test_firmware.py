"""vfnic's firmware files: the augmented CSS layout firmware.c validates,
signed with the project's test key, and what the chip concludes about a
good file, a file with one flipped byte, and a file signed with another key
(`firmware.verify`, the MISC RSA engine's check)."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from devmodel.hfi1 import firmware, firmware_key
from devmodel.hfi1.formats import AUGMENTED_FIRMWARE_PREFIX, AugmentedFirmware, CssHeader

FILES = firmware.firmware_files()


def test_the_four_files_are_the_drivers_names_in_its_request_order():
    assert list(FILES) == ["hfi1_sbus.fw", "hfi1_pcie.fw", "hfi1_fabric.fw", "hfi1_dc8051.fw"]


@pytest.mark.parametrize("name", list(FILES))
def test_each_file_passes_the_drivers_header_checks_and_the_chips_signature_check(name):
    data = FILES[name]
    css = CssHeader.parse(data)
    assert (css.module_type, css.header_len, css.header_version, css.module_vendor) == (6, 0xA1, 0x10000, 0x8086)
    assert (css.key_size, css.modulus_size, css.exponent_size) == (64, 64, 1)
    assert css.size * 4 + 264 == len(data) and len(data) > AUGMENTED_FIRMWARE_PREFIX, "the augmented layout"
    assert firmware.verify_image(data) is firmware.Verdict.GOOD


def test_a_file_round_trips_through_its_declaration():
    data = FILES["hfi1_fabric.fw"]
    parsed = AugmentedFirmware.parse(data)
    assert AugmentedFirmware.build(parsed) == data
    assert parsed.modulus == firmware_key.N and parsed.exponent == 65537
    assert parsed.r2 == pow(2, 4096, firmware_key.N)
    assert parsed.mu * firmware_key.N % 2**64 == 2**64 - 1
    assert firmware.serdes_revision(firmware.Image.FABRIC, parsed.payload) == firmware.FABRIC_SERDES_REVISION


def test_the_files_are_reproducible_and_carry_no_vendor_code():
    assert firmware.firmware_files() == FILES
    for data in FILES.values():
        payload = firmware.parse_image(data).payload
        assert len(payload) == 64 and firmware.PAYLOAD_NOTE in payload


def test_the_8051_payload_names_its_version():
    payload = firmware.parse_image(FILES["hfi1_dc8051.fw"]).payload
    assert firmware.dc8051_version(payload) == (1, 27, 0)
    assert firmware.dc8051_version(bytes(64)) is None


@pytest.mark.parametrize("offset", [0, 0x14, 200, 400, 700, 903, 908, 971])
def test_one_flipped_byte_is_caught_by_the_header_check_or_the_signature(offset):
    data = bytearray(FILES["hfi1_dc8051.fw"])
    data[offset] ^= 0x80
    try:
        verdict = firmware.verify_image(bytes(data))
    except firmware.FirmwareError as refused:
        assert "invalid firmware header field" in str(refused)
        return
    assert verdict is not firmware.Verdict.GOOD
    assert verdict is (firmware.Verdict.KEY_MISMATCH if 128 <= offset < 384 else firmware.Verdict.AUTH_FAILED)


def test_another_key_is_a_key_mismatch_and_verifies_only_under_its_own_modulus():
    n, d, p, q = firmware_key.generate()
    assert p * q == n and n.bit_length() == 2048
    data = firmware.build_image(firmware.Image.FABRIC, firmware.serdes_payload(firmware.Image.FABRIC, 1),
                                modulus=n, private_exponent=d)
    assert firmware.verify_image(data) is firmware.Verdict.KEY_MISMATCH
    assert firmware.verify_image(data, fused_modulus=n) is firmware.Verdict.GOOD


def test_the_test_key_is_consistent():
    from math import lcm
    assert firmware_key.P * firmware_key.Q == firmware_key.N and firmware_key.N.bit_length() == 2048
    assert firmware_key.E * firmware_key.D % lcm(firmware_key.P - 1, firmware_key.Q - 1) == 1
    assert firmware_key.is_probable_prime(firmware_key.P) and not firmware_key.is_probable_prime(firmware_key.N)


@pytest.mark.parametrize("change,message", [
    (lambda d: d[:100], "too small"),
    (lambda d: d[:908 - 264] + d[908:], "without r2 and mu"),
    (lambda d: d + b"\0" * 4, "invalid firmware header field size"),
    (lambda d: b"\x07" + d[1:], "invalid firmware header field module_type"),
])
def test_the_layout_checks_refuse_what_the_driver_refuses(change, message):
    with pytest.raises(firmware.FirmwareError, match=message):
        firmware.parse_image(change(FILES["hfi1_sbus.fw"]))


def test_vfnic_firmware_writes_the_four_files(tmp_path):
    out = tmp_path / "lib" / "firmware"
    result = subprocess.run([sys.executable, "-m", "emulator.cli", "firmware", "--output", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    for name, data in FILES.items():
        assert (out / name).read_bytes() == data
        assert hashlib.sha256(data).hexdigest() in result.stdout
