"""MISC block: the firmware authentication engine (RSA/SHA) and MISC errors.

    MISC_CFG_RSA_R2[32]        0x500000 RW  Montgomery R^2 mod n, qword 0 = least significant
    MISC_CFG_RSA_SIGNATURE[32] 0x500200 RW  the image's signature, same order
    MISC_CFG_RSA_MODULUS[32]   0x500400 RW  the image's modulus, same order
    MISC_CFG_SHA_PRELOAD       0x500A00 WO  16 streamed qwords: the image's CSS header ("always
                                            reads 0 and can only be written 128-byte chunks")
    MISC_CFG_RSA_CMD           0x500A08 RW  1 INIT, 2 START
    MISC_CFG_RSA_MU            0x500A10 RW  Montgomery -n^-1 mod 2^64
    MISC_CFG_FW_CTRL           0x501000 RW  [0] ENABLE_SPICO (A-step only), [1] FW_8051_LOADED,
                                            [3:2] RSA_STATUS RO: 0 idle, 1 active, 2 done, 3 failed
    MISC_ERR_STATUS/MASK/CLEAR 0x502000/0x502008/0x502010  second tier of source 2;
                                            [4] KEY_MISMATCH, [5] FW_AUTH_FAILED

How the driver uses it (firmware.c `load_security_variables`, `run_rsa`):
modulus, r2, mu, then the header streamed into the SHA preload; then the
payload goes down its own path -- 8051 code RAM writes (`dc8051.py`) or
SBus writes to the SerDes or the SBus master (`asic.py`) -- which the
engine's hasher sees too (`capture`); then the signature, INIT (the status
must read idle), START, and a poll of RSA_STATUS for done or failed.

    session:   SHA_PRELOAD x16 --> OPEN: downloads captured per target --START--> CONSUMED
               (a preload write after a complete header or a START opens a new session)
    RSA_STATUS IDLE --START--> DONE | FAILED  (synchronous: the driver's first poll sees it)
               any  --INIT---> IDLE

START checks the session's download (`firmware.verify`): the 8051's code
when FW_8051_LOADED is set and this session wrote code RAM, else the SBus
download it captured. A modulus other than the fused key (`ChipConfig.
fw_key_modulus`) gives KEY_MISMATCH; anything else wrong (signature, r2,
mu, a short download) FW_AUTH_FAILED. Success authorizes what was
downloaded: the 8051 may boot that code (`dc8051_authorized`), the fabric
SerDes may run that image (`fabric_image`). The errors stay set as the
driver's comments say the RSA logic keeps them: MISC_ERR_CLEAR does not
clear FW_AUTH_FAILED until an INIT, nor KEY_MISMATCH until a matching
modulus is loaded. INIT does not revoke what earlier runs authorized
[inferred: the driver re-downloads the fabric SerDes at every link start
while the 8051 it authorized keeps running].

Collaborators: the interrupt controller (MISC errors, source 2). The ASIC's
SBus and the 8051's code RAM feed `capture`; the 8051 asks
`dc8051_authorized`, the ASIC `fabric_image`.
"""
from __future__ import annotations

from enum import Enum, IntEnum

from common.ratelog import limited
from devmodel.regs import Access, Register

from . import firmware
from .chip_registers import (
    MISC_CFG_FW_CTRL,
    MISC_CFG_FW_CTRL_FW_8051_LOADED_SMASK,
    MISC_CFG_FW_CTRL_RSA_STATUS_SHIFT,
    MISC_CFG_RSA_MODULUS,
    MISC_CFG_RSA_MU,
    MISC_CFG_RSA_R2,
    MISC_CFG_RSA_SIGNATURE,
    MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK,
    MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK,
)
from .csr import Block, csr, csr_array, csrs
from .formats import CSS_HEADER_BYTES, CssHeader
from .intr import MISC_ERR_INT, ErrorFlags, InterruptController
from .services import ChipServices

RSA_CMD_INIT = 0x1
RSA_CMD_START = 0x2
KEY_QWORDS = 32
FW_CTRL_WRITABLE = 0x3  # ENABLE_SPICO, FW_8051_LOADED
#: bytes one download may feed the hasher; more fails authentication (the
#: guest is untrusted: the capture must stay bounded)
MAX_DOWNLOAD_BYTES = 1 << 20


class RsaStatus(IntEnum):
    IDLE = 0
    ACTIVE = 1  # never seen: a run completes within the START write
    DONE = 2
    FAILED = 3


class Download(Enum):
    """Where a firmware payload goes, i.e. whose digest the chip keeps
    (chip.c names MISC_STS_{8051,SBM,PCIE,FAB}_DIGEST)."""

    DC8051 = "8051 code RAM"
    FABRIC = "fabric SerDes"
    SBUS_MASTER = "SBus master"
    PCIE = "PCIe SerDes"


class Session(Enum):
    EMPTY = "no header"
    PRELOADING = "header arriving"
    OPEN = "capturing downloads"
    CONSUMED = "checked"


class AuthErrorFlags(ErrorFlags):
    """MISC_ERR_STATUS, whose two authentication errors the RSA logic holds
    high while their cause lasts."""

    def __init__(self, misc: "Misc"):
        super().__init__(misc.intr, MISC_ERR_INT, "MISC_ERR_STATUS", "MISC_ERR_CLEAR", "MISC_ERR_MASK")
        self.misc = misc

    def clear(self, bits: int, index: int = 0) -> None:
        super().clear(bits, index)
        held = self.misc.held_errors()
        if held & bits:
            self.regs.set_bits(self.status_offset, held & bits)


class Misc(Block):
    name = "misc"

    def __init__(self, services: ChipServices, intr: InterruptController):
        self.intr = intr
        super().__init__(services)

    def declare(self) -> list[Register]:
        self.errors = AuthErrorFlags(self)
        self._reset_engine()
        return [
            *csr_array("MISC_CFG_RSA_R2", KEY_QWORDS),
            *csr_array("MISC_CFG_RSA_SIGNATURE", KEY_QWORDS),
            *csr_array("MISC_CFG_RSA_MODULUS", KEY_QWORDS),
            csr("MISC_CFG_SHA_PRELOAD", access=Access.WO, on_write=self._preload),
            csr("MISC_CFG_RSA_CMD", on_write=self._command),
            *csrs("MISC_CFG_RSA_MU"),
            csr("MISC_CFG_FW_CTRL", writable=FW_CTRL_WRITABLE,
                on_read=lambda stored: stored | self.status << MISC_CFG_FW_CTRL_RSA_STATUS_SHIFT),
            *self.errors.declare(),
        ]

    def _reset_engine(self) -> None:
        self.session = Session.EMPTY
        self.header = bytearray()
        self.downloads: dict[Download, bytearray] = {d: bytearray() for d in Download}
        self.last_download: Download | None = None
        self.status = RsaStatus.IDLE
        self.auth_failed_held = False
        self.key_mismatch_held = False
        #: the 8051 may run the code RAM (cleared by the 8051 when its code changes)
        self.dc8051_authorized = False
        #: the fabric SerDes payload last authenticated, or None
        self.fabric_image: bytes | None = None
        self.runs = 0

    def reset(self) -> None:
        """FLR: the engine, its session and every authorization back to power-on."""
        self._reset_engine()

    # -- the download paths report here ------------------------------------------------
    def capture(self, download: Download, data: bytes) -> None:
        """Bytes on their way to `download`, which the hasher sees while a
        session is open (after a complete header, before START)."""
        if self.session is not Session.OPEN:
            return
        stream = self.downloads[download]
        if len(stream) < MAX_DOWNLOAD_BYTES:
            stream += data[:MAX_DOWNLOAD_BYTES - len(stream)]
        self.last_download = download

    def revoke_8051(self, why: str) -> None:
        if self.dc8051_authorized:
            self.log.info("8051 code no longer authenticated: %s", why)
        self.dc8051_authorized = False

    def held_errors(self) -> int:
        """The errors the RSA logic keeps high: FW_AUTH_FAILED until INIT,
        KEY_MISMATCH until the loaded modulus is the fused one."""
        held = MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK if self.auth_failed_held else 0
        if self.key_mismatch_held:
            if self._modulus() == self.config.fw_key_modulus:
                self.key_mismatch_held = False
            else:
                held |= MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK
        return held

    # -- registers -----------------------------------------------------------------------
    def _preload(self, _old: int, new: int) -> None:
        if self.session in (Session.OPEN, Session.CONSUMED, Session.EMPTY):
            self.header.clear()
            for stream in self.downloads.values():
                stream.clear()
            self.last_download = None
            self.session = Session.PRELOADING
        self.header += new.to_bytes(8, "little")
        if len(self.header) == CSS_HEADER_BYTES:
            self.session = Session.OPEN

    def _command(self, _old: int, new: int) -> None:
        if new == RSA_CMD_INIT:
            self.status = RsaStatus.IDLE
            self.auth_failed_held = False
        elif new == RSA_CMD_START:
            if self.status is not RsaStatus.IDLE:
                limited(self, self.log, "RSA commands ignored").warning(
                    "MISC_CFG_RSA_CMD: START while %s, ignored (INIT first)", self.status.name)
                return
            self._run()
        elif new:
            limited(self, self.log, "unknown RSA commands").warning("MISC_CFG_RSA_CMD: unknown command %#x", new)

    def _modulus(self) -> int:
        return self._key_register(MISC_CFG_RSA_MODULUS)

    def _key_register(self, base: int) -> int:
        return sum(self.regs.get(base + 8 * i) << (64 * i) for i in range(KEY_QWORDS))

    def _chosen_download(self) -> Download | None:
        loaded_8051 = self.regs.get(MISC_CFG_FW_CTRL) & MISC_CFG_FW_CTRL_FW_8051_LOADED_SMASK
        if loaded_8051 and self.downloads[Download.DC8051]:
            return Download.DC8051
        if self.last_download is not None and self.last_download is not Download.DC8051:
            return self.last_download
        return None

    def _run(self) -> None:
        """START: check the session's download, synchronously."""
        self.runs += 1
        download = self._chosen_download()
        verdict, why = self._verdict(download)
        self.session = Session.CONSUMED
        if verdict is firmware.Verdict.GOOD:
            self.status = RsaStatus.DONE
            if download is Download.DC8051:
                self.dc8051_authorized = True
            elif download is Download.FABRIC:
                self.fabric_image = self._payload(download)
        else:
            self.status = RsaStatus.FAILED
            if download is Download.FABRIC:
                self.fabric_image = None
            if verdict is firmware.Verdict.KEY_MISMATCH:
                self.key_mismatch_held = True
                self.errors.set(MISC_ERR_STATUS_MISC_KEY_MISMATCH_ERR_SMASK)
            else:
                self.auth_failed_held = True
                self.errors.set(MISC_ERR_STATUS_MISC_FW_AUTH_FAILED_ERR_SMASK)
        self.log.info("MISC_CFG_RSA_CMD: START over the %s download: %s%s", download.value if download else "(no)",
                      self.status.name, f" ({why})" if why else "")

    def _payload(self, download: Download) -> bytes:
        css = CssHeader.parse(bytes(self.header))
        return bytes(self.downloads[download][:max(0, (css.size - css.header_len) * 4)])

    def _verdict(self, download: Download | None) -> tuple[firmware.Verdict, str]:
        if self.session is not Session.OPEN:
            return firmware.Verdict.AUTH_FAILED, f"SHA preload {self.session.value}"
        if download is None:
            return firmware.Verdict.AUTH_FAILED, "nothing downloaded"
        css = CssHeader.parse(bytes(self.header))
        length = (css.size - css.header_len) * 4
        payload = self._payload(download)
        if length <= 0 or len(payload) < length:
            return firmware.Verdict.AUTH_FAILED, f"{len(payload)} bytes downloaded, the header says {length}"
        verdict = firmware.verify(bytes(self.header), payload, self._modulus(),
                                  self._key_register(MISC_CFG_RSA_SIGNATURE), self._key_register(MISC_CFG_RSA_R2),
                                  self.regs.get(MISC_CFG_RSA_MU), self.config.fw_key_modulus,
                                  self.config.fw_exponent)
        return verdict, "" if verdict is firmware.Verdict.GOOD else verdict.value
