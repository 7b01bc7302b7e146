"""Capture file formats: pcap (nanosecond) carrying ERF records, which is how
Omni-Path packets reach Wireshark (its `opa` dissector is registered for ERF
record type 29, OPA 9B; Intel's opapacketcapture writes the same layout).

    pcap file header  (little-endian)     pcap record header (little-endian)
    magic a1b23c4d (ns timestamps)        ts_sec, ts_nsec, incl_len, orig_len
    version 2.4, zone, sigfigs,
    snaplen, linktype 197 (ERF)

    ERF record header (16 bytes), then the packet from its first LRH byte
    through the ICRC:
    ts    u64 little-endian, seconds << 32 | binary fraction
    type  u8   29 = OPA 9B
    flags u8   [1:0] capture interface (the link's direction), [2] varying
               record length, [4] receive error
    rlen  u16 big-endian  record length, this header included
    lctr  u16 big-endian  packets lost since the previous record
    wlen  u16 big-endian  length on the wire
"""
from __future__ import annotations

from collections.abc import Iterator

import construct as c

from common.fixed import Fixed

PCAP_MAGIC_NS = 0xA1B23C4D
LINKTYPE_ERF = 197
ERF_TYPE_OPA_9B = 29
ERF_FLAG_VLEN = 0x04
ERF_FLAG_RXE = 0x10
ERF_HEADER_BYTES = 16

PcapFileHeader = c.Struct(
    "magic" / c.Int32ul,
    "version_major" / c.Int16ul,
    "version_minor" / c.Int16ul,
    "thiszone" / c.Int32sl,
    "sigfigs" / c.Int32ul,
    "snaplen" / c.Int32ul,
    "linktype" / c.Int32ul,
)

PcapRecordHeader = c.Struct(
    "ts_sec" / c.Int32ul,
    "ts_nsec" / c.Int32ul,
    "incl_len" / c.Int32ul,
    "orig_len" / c.Int32ul,
)

ErfHeader = c.Struct(
    "ts" / c.Int64ul,
    "type" / c.Int8ub,
    "flags" / c.Int8ub,
    "rlen" / c.Int16ub,
    "lctr" / c.Int16ub,
    "wlen" / c.Int16ub,
)

PCAP_FILE_HEADER = Fixed(PcapFileHeader)
PCAP_RECORD_HEADER = Fixed(PcapRecordHeader)
assert ErfHeader.sizeof() == ERF_HEADER_BYTES  # mixed byte orders: built with construct


def erf_timestamp(seconds: int, nanoseconds: int) -> int:
    """ERF's 32.32 fixed-point time."""
    return seconds << 32 | (nanoseconds << 32) // 1_000_000_000


def pcap_file_header(snaplen: int) -> bytes:
    """The header of a pcap file of ERF records with nanosecond timestamps."""
    return PCAP_FILE_HEADER.build(magic=PCAP_MAGIC_NS, version_major=2, version_minor=4, snaplen=snaplen,
                                  linktype=LINKTYPE_ERF)


def erf_opa_9b_record(time_ns: int, interface: int, packet: bytes, snaplen: int) -> bytes:
    """One pcap record: `packet` as an ERF OPA 9B record on capture interface
    `interface` (0 or 1), cut to fit `snaplen`, its length on the wire kept."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    data = packet[:snaplen - ERF_HEADER_BYTES]
    erf = ErfHeader.build(dict(ts=erf_timestamp(seconds, nanoseconds), type=ERF_TYPE_OPA_9B,
                               flags=ERF_FLAG_VLEN | interface, rlen=ERF_HEADER_BYTES + len(data), lctr=0,
                               wlen=min(len(packet), 0xFFFF)))
    length = len(erf) + len(data)
    return PCAP_RECORD_HEADER.pack(seconds, nanoseconds, length, length) + erf + data


def erf_records(data: bytes) -> Iterator[tuple[c.Container, bytes]]:
    """The (ERF header, packet) of each record of a pcap file of ERF records."""
    pos = PCAP_FILE_HEADER.size
    while pos < len(data):
        record = PCAP_RECORD_HEADER.parse(data, pos)
        start = pos + PCAP_RECORD_HEADER.size
        yield ErfHeader.parse(data[start:start + ERF_HEADER_BYTES]), data[start + ERF_HEADER_BYTES:start + record["incl_len"]]
        pos = start + record["incl_len"]
