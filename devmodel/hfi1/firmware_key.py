"""vfnic's firmware signing key: a TEST key, public on purpose.

RSA-2048, public exponent 65537. The chip model fuses its modulus
(`ChipConfig.fw_key_modulus`): the MISC block's RSA engine (`misc.py`)
accepts images signed with it and no other, as a real HFI accepts only
Intel's. It signs nothing but vfnic's own test payloads (`firmware.py`);
anyone can sign anything with it, which is the point of a test key.

Generated once by `generate()` below (stdlib only: `secrets`, `pow`,
Miller-Rabin) and committed, so that the firmware files, their hashes and
the guest image built from them are reproducible. Regenerating it changes
every signed file and the fused modulus together.
"""
from __future__ import annotations

import secrets
from math import lcm

E = 65537

#: the modulus the model fuses (MISC_CFG_RSA_MODULUS must match it)
N = int(
    "c13a0008d44836af3bed9ee17ee80621b3287341bb41c98f1c42c4493e986b363c8de8883ac42aa6164376471d5bd128"
    "5db4687d8642afe78c113900f808705ba489a62cfc975d8feda8ff4db2a87c8997be96110eacf91261ace0c4256f2751"
    "f12010c18ceb1202364eba2e2e3770b9583ad2d9f20db8158737fc1de682d566c1cfb4fdfd83dc18cc14f54b3a37e95e"
    "fdac853ecc90311c6132f14d87dc108641d04d4f9d741463d55128364e197b4dda3b202b71b32b2b8158862bf3d3a67c"
    "92b641dae524daab5e41f8d8b71f4d9f4233b0a8d8c6c0a356c1bc2951836e0a6ccdbd3840885460b7bde403cea99b6b"
    "f18a77c46b196b79974a81896a1f321d", 16)

#: the private exponent: signs vfnic's test images
D = int(
    "25355204613c76ab4fd2f6215e1ab7f38d5860b96ba1c37a776ab3f996c02b050aac18f702b9fbac77e50dc5abf59e55"
    "339625f8e5fdb979d1130ff30bd03432b180802b7188844fcee818219221b7b9972af022e0bc9649dfdd367b0eea549c"
    "06deb1db539380a84464ec9d2ff12517cbd1a800a807d446f0feeae1a71dd291dd5e2da72ddebfa33fca9b1c1b2bfe1b"
    "ad82e03a0ad6046a728bacf92faef0e5d593fcc7f099f98eaf38edea55485f5d25669e52099925e9ba36d8110e84a473"
    "a171dda834175d0108d54cba42ec5eef6e8dd90a9abfa0c5c208a0623f2836d65fef276e6489dcfd91cf9b1e69f441a0"
    "8a5b809c60e89df19e06174d7e92f701", 16)

#: the factors, kept so that the key can be checked (P * Q == N)
P = int(
    "e17ae4bc99a882d678f30fd5f2f3c621ac123c766c6c85b53a76388e49c67e105f671bd4686e2b4015605935758d2790"
    "5d983f3a59672833fa6ece439330f79d45704e1a7f31184c4de1fec2836f57b3d163c6e0a317656c6a8835a0af23e855"
    "d4181cc7b2ac5b08fcc5a2edd18045a7076b9735f5cd386fb9cf32af0f603f71", 16)

Q = int(
    "db617dc9e104b33437c010008d2068dd7fb85a359c437df45b991c4a2485b27ed741f44d6a6003bd93cec994f1cf2c99"
    "71d9693ed465fc945ebc8ec56f34d6c9c2d0f7094eff80a39743ded50d7f668c269f8fb4d23dee4b8e8a21747080ab23"
    "dda5fab7e0b2f77cead1b181a42d3d0148a6290491987ec7694b2a1abe0d9f6d", 16)


def is_probable_prime(n: int, rounds: int = 64) -> bool:
    """Miller-Rabin with `rounds` random bases (error below 4**-rounds)."""
    if n < 2:
        return False
    for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    if n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(rounds):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def generate(bits: int = 2048, e: int = E) -> tuple[int, int, int, int]:
    """A fresh key pair: (n, d, p, q) with n of exactly `bits` bits."""
    def prime(size: int) -> int:
        while True:
            candidate = secrets.randbits(size) | 3 << (size - 2) | 1  # top two bits: n has `bits` bits
            if (candidate - 1) % e and is_probable_prime(candidate):
                return candidate

    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        if p != q and (p * q).bit_length() == bits:
            return p * q, pow(e, -1, lcm(p - 1, q - 1)), p, q


if __name__ == "__main__":
    for name, value in zip("NDPQ", generate()):
        print(f"{name} = {value:#x}")
