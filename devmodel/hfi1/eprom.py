"""EPROM: the SPI flash behind the ASIC's EEP controller (discrete parts only).

    ASIC_EEP_CTL_STAT  0x400300 RW  [2] EP_RESET, [9:8] RATE_SPI; reset 0x83818000
    ASIC_EEP_ADDR_CMD  0x400308 RW  [31:24] SPI command, [23:0] byte address
                                    0x03 READ_DATA, 0xAB RELEASE_POWERDOWN_NOID, 0x00 NOP
    ASIC_EEP_DATA      0x400310 RO  next little-endian dword of the open read

`read_page()` in eprom.c writes READ_DATA(addr), reads ASIC_EEP_DATA 64 times
for a 256-byte page, then writes NOP to close it. Each DATA read returns the
next four bytes. The flash holds the image `platform.eprom_image` builds.

Collaborators: none beyond the chip's configuration (which platform image).
"""
from __future__ import annotations

from enum import IntEnum

from common.ratelog import limited
from devmodel.regs import Access, Register

from .chip_registers import ASIC_EEP_ADDR_CMD_EP_ADDR_MASK, ASIC_EEP_CTL_STAT_EP_RESET_SMASK, ASIC_EEP_CTL_STAT_RESETCSR
from .csr import Block, csr
from .platform import default_platform_config, eprom_image


class SpiCommand(IntEnum):
    NOP = 0x00
    READ_DATA = 0x03
    RELEASE_POWERDOWN_NOID = 0xAB


class Eprom(Block):
    name = "eprom"

    def declare(self) -> list[Register]:
        config = self.config
        self.image = eprom_image(default_platform_config(config.port_type, node_guid=config.guid))
        self.read_pointer: int | None = None
        return [
            csr("ASIC_EEP_CTL_STAT", reset=ASIC_EEP_CTL_STAT_RESETCSR, on_write=self._control),
            csr("ASIC_EEP_ADDR_CMD", on_write=self._command),
            csr("ASIC_EEP_DATA", access=Access.RO, on_read=self._data),
        ]

    def reset(self) -> None:
        self.read_pointer = None

    def _control(self, _old: int, new: int) -> None:
        if new & ASIC_EEP_CTL_STAT_EP_RESET_SMASK:
            self.read_pointer = None

    def _command(self, _old: int, new: int) -> None:
        command = (new >> 24) & 0xFF
        address = new & ASIC_EEP_ADDR_CMD_EP_ADDR_MASK
        if command == SpiCommand.READ_DATA:
            self.read_pointer = address
            self.log.debug("ASIC_EEP_ADDR_CMD: READ_DATA at %#x", address)
        elif command == SpiCommand.NOP:
            self.read_pointer = None
        elif command == SpiCommand.RELEASE_POWERDOWN_NOID:
            self.log.debug("ASIC_EEP_ADDR_CMD: RELEASE_POWERDOWN_NOID")
        else:
            limited(self, self.log, "unsupported SPI commands").warning("ASIC_EEP_ADDR_CMD: unsupported SPI command %#x", command)

    def _data(self, _stored: int) -> int:
        if self.read_pointer is None:
            return 0
        start = self.read_pointer % len(self.image)
        word = bytes(self.image[(start + i) % len(self.image)] for i in range(4))
        self.read_pointer = (self.read_pointer + 4) % len(self.image)
        return int.from_bytes(word, "little")
