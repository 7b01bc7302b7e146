"""What crossed a link, written as a pcap file Wireshark decodes as Omni-Path.

    capture = LinkCapture("/tmp/ab.pcap", directions=("hfi1_0", "hfi1_1"))
    link.start_capture(capture) ... link.stop_capture()
    tshark -r /tmp/ab.pcap -V        # Omni-Path 9B headers, MADs (opa, opa.mad)

Each packet is recorded as it arrives at the far end (after any injected
fault: a corrupted packet is recorded corrupted, a dropped one not at all), in
an ERF record of type OPA 9B (`devmodel/wire/pcap.py`) whose capture
interface says the direction: 0 for packets sent by the first end named, 1
for the other. 16B (bypass) packets are recorded too, but Wireshark's OPA
dissectors read only the 9B format. Thread-safe; a write error stops the
capture with a log line, never the link.
"""
from __future__ import annotations

import logging
import time

from common.files import SideFile
from devmodel.wire.pcap import erf_opa_9b_record, pcap_file_header

from .packet import Packet

SNAPLEN = 65535
log = logging.getLogger("vfnic.fabric.capture")


class LinkCapture:
    def __init__(self, path: str, directions: tuple[str, str]):
        self.path = path
        self.directions = directions
        self.packets = 0
        self.bytes = 0
        file = open(path, "wb")  # open until stop()
        file.write(pcap_file_header(SNAPLEN))
        file.flush()
        self._out = SideFile(file, log, f"capture {path}")

    @property
    def active(self) -> bool:
        return self._out.open

    def record(self, sender: str, packet: Packet) -> None:
        interface = 0 if sender == self.directions[0] else 1
        record = erf_opa_9b_record(time.time_ns(), interface, packet.data, SNAPLEN)
        with self._out.lock:
            if self._out.write(record):
                self.packets += 1
                self.bytes += len(packet.data)

    def flush(self) -> None:
        self._out.flush()

    def stop(self) -> dict:
        self._out.close()
        return self.describe()

    def describe(self) -> dict:
        return {"file": self.path, "packets": self.packets, "bytes": self.bytes, "active": self.active}
