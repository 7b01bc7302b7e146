"""`lspci -vvv -nn` output as data, so guest tests assert on fields rather
than grep for strings.

    01:00.0 Unassigned class [ff00]: Device [1234:11f0]
    	Control: I/O- Mem+ BusMaster- ...
    	Region 0: Memory at fe800000 (64-bit, non-prefetchable) [size=64K]
    	Capabilities: [70] MSI-X: Enable- Count=4 Masked-
    		Vector table: BAR=0 offset=00008000

A device starts at column 0; its fields are indented by one tab; a
capability's details by two.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_DEVICE_LINE = re.compile(
    r"^(?P<address>\S+) (?P<class_name>.*?) \[(?P<class_code>[0-9a-f]{4})\]: "
    r"(?P<name>.*?)\[(?P<vendor>[0-9a-f]{4}):(?P<device>[0-9a-f]{4})\]")
_CAPABILITY = re.compile(r"^Capabilities: \[(?P<offset>[0-9a-f]+)(?: v\d+)?\] (?P<title>.*)$")
_REGION = re.compile(
    r"^Region (?P<index>\d+): (?P<space>Memory|I/O ports) at (?P<address>\S+)"
    r"(?: \((?P<attributes>[^)]*)\))?(?: \[size=(?P<size>\d+)(?P<unit>[KMGT]?)\])?")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class Capability:
    offset: int
    title: str
    details: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([self.title, *self.details])


@dataclass(frozen=True)
class Region:
    index: int
    space: str
    address: str
    attributes: tuple[str, ...]
    size: int | None

    @property
    def is_64bit(self) -> bool:
        return "64-bit" in self.attributes

    @property
    def prefetchable(self) -> bool:
        return "prefetchable" in self.attributes


@dataclass
class PciDevice:
    address: str
    class_code: int
    vendor: int
    device: int
    fields: dict[str, str] = field(default_factory=dict)
    capabilities: list[Capability] = field(default_factory=list)
    regions: dict[int, Region] = field(default_factory=dict)

    def capability(self, title_prefix: str) -> Capability | None:
        """The first capability whose title starts with `title_prefix`
        (e.g. "MSI-X", "Express", "Power Management")."""
        return next((c for c in self.capabilities if c.title.startswith(title_prefix)), None)


def parse_lspci(text: str) -> list[PciDevice]:
    devices: list[PciDevice] = []
    capability: Capability | None = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            devices.append(_parse_device_line(line))
            capability = None
        elif line.startswith("\t\t") and capability is not None:
            capability.details.append(line.strip())
        elif line.startswith("\t") and devices:
            capability = _add_field(devices[-1], line.strip())
    return devices


def _parse_device_line(line: str) -> PciDevice:
    match = _DEVICE_LINE.match(line)
    if not match:
        raise ValueError(f"not an `lspci -nn` device line: {line!r}")
    return PciDevice(match["address"], int(match["class_code"], 16), int(match["vendor"], 16),
                     int(match["device"], 16))


def _add_field(device: PciDevice, text: str) -> Capability | None:
    """Record one single-tab line; return the capability it opens, if any."""
    if match := _CAPABILITY.match(text):
        capability = Capability(int(match["offset"], 16), match["title"])
        device.capabilities.append(capability)
        return capability
    if match := _REGION.match(text):
        size = int(match["size"]) * _UNITS[match["unit"]] if match["size"] else None
        attributes = tuple(a.strip() for a in (match["attributes"] or "").split(","))
        device.regions[int(match["index"])] = Region(int(match["index"]), match["space"],
                                                     match["address"], attributes, size)
    elif ":" in text:
        key, value = text.split(":", 1)
        device.fields[key] = value.strip()
    return None


def lspci(guest, *selection: str) -> list[PciDevice]:
    """`lspci -D -vvv -nn SELECTION...` run in `guest` (an images.lab.vm.Guest),
    parsed; e.g. lspci(guest, "-d", "1234:11f0")."""
    result = guest.run(["lspci", "-D", "-vvv", "-nn", *selection], timeout=60, check=True)
    return parse_lspci(result.stdout)
