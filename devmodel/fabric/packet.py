"""A packet on a link."""
from __future__ import annotations


class Packet:
    """One packet on a link: the bytes from the first header byte through
    the ICRC, its service channel (5 bits; an OPA 9B header holds only
    SC[3:0], bit 4 travels out of band) and its format (`bypass`: a 16B
    packet; the link layer tells the formats apart, not the header bytes).

    `sealed`: the sender computed the ICRC over exactly these bytes and
    nothing on the way touched them, so a receiver may skip checking it (a
    CRC-32 over every packet is a good part of a Python receive path).
    Anything that alters a packet in flight (fault injection) must clear it."""

    __slots__ = ("data", "sc", "bypass", "sealed")

    def __init__(self, data: bytes, sc: int, bypass: bool = False, sealed: bool = False):
        self.data = data
        self.sc = sc
        self.bypass = bypass
        self.sealed = sealed

    def __repr__(self) -> str:
        return f"Packet({len(self.data)} bytes, SC {self.sc}{', 16B' if self.bypass else ''})"
