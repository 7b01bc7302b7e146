"""A switch's forwarding state: where a packet goes, and on which SC.

    9B  DLID 16 bits: < 0xC000 unicast --LFT--> one port (0xFF: unprogrammed)
                      0xC000..0xFFFE    --MFT[DLID - 0xC000]--> port mask
    16B DLID 24 bits: < 0xF00000 unicast --LFT-->; >= 0xF00000 --MFT[DLID - 0xF00000]-->
    SC out = SCtoSC[ingress][egress][SC in]   (identity until the SM writes it)

The LFT is one byte per LID up to LinearFDBCap (LinearFwdTbl: 64 per
block); the MFT is one bit per port per entry, read and written as 64-port
"positions" (MulticastFwdTbl: 8 x 64-bit masks per block).
"""
from __future__ import annotations

from devmodel.wire import opa_sma as w

UNPROGRAMMED = 0xFF
MULTICAST_9B = 0xC000
PERMISSIVE_9B = 0xFFFF
MULTICAST_16B = 0xF00000
#: opafm's default MaxSupportedLID is 0xBFFF: one entry per unicast 9B LID
LINEAR_FDB_CAP = 0xC000
MULTICAST_FDB_CAP = 0x2000


class ForwardingTables:
    def __init__(self, num_ports: int, linear_cap: int = LINEAR_FDB_CAP, multicast_cap: int = MULTICAST_FDB_CAP):
        self.num_ports = num_ports
        self.linear_cap = linear_cap
        self.multicast_cap = multicast_cap
        self.lft = bytearray([UNPROGRAMMED]) * linear_cap
        self.mft = [0] * multicast_cap  # port bit masks
        self._sc_to_sc: dict[tuple[int, int], bytes] = {}

    # -- lookups ------------------------------------------------------------------------
    def unicast(self, dlid: int) -> int | None:
        """The egress port for a unicast DLID, or None if unprogrammed."""
        if dlid >= self.linear_cap:
            return None
        port = self.lft[dlid]
        return None if port == UNPROGRAMMED else port

    def multicast(self, index: int) -> list[int]:
        if not 0 <= index < self.multicast_cap:
            return []
        mask = self.mft[index]
        return [port for port in range(self.num_ports + 1) if mask >> port & 1]

    def sc_out(self, ingress: int, egress: int, sc: int) -> int:
        table = self._sc_to_sc.get((ingress, egress))
        return sc if table is None else table[sc & 0x1F] & 0x1F

    # -- the SMA's blocks ---------------------------------------------------------------------
    def lft_blocks(self, block: int, count: int) -> bytes:
        start = block * w.LFT_BLOCK_BYTES
        return bytes(self.lft[start:start + count * w.LFT_BLOCK_BYTES])

    def set_lft_blocks(self, block: int, data: bytes) -> None:
        start = block * w.LFT_BLOCK_BYTES
        self.lft[start:start + len(data)] = data

    def mft_blocks(self, block: int, count: int, position: int) -> bytes:
        shift = 64 * position
        entries = self.mft[block * w.MFT_BLOCK_ENTRIES:(block + count) * w.MFT_BLOCK_ENTRIES]
        return b"".join(((mask >> shift) & (2**64 - 1)).to_bytes(8, "big") for mask in entries)

    def set_mft_blocks(self, block: int, position: int, data: bytes) -> None:
        shift, keep = 64 * position, ~((2**64 - 1) << (64 * position))
        valid = (1 << (self.num_ports + 1)) - 1
        for i in range(len(data) // 8):
            index = block * w.MFT_BLOCK_ENTRIES + i
            mask = int.from_bytes(data[8 * i:8 * i + 8], "big")
            self.mft[index] = ((self.mft[index] & keep) | (mask << shift)) & valid

    def sc_to_sc(self, ingress: int, egress: int) -> bytes:
        return self._sc_to_sc.get((ingress, egress), bytes(range(32)))

    def set_sc_to_sc(self, ingress: int, egress: int, data: bytes) -> None:
        self._sc_to_sc[(ingress, egress)] = bytes(data[:32]).ljust(32, b"\0")
