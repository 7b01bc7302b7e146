"""A CSR-named trace of the guest's MMIO (`vfnic serve --trace FILE`).

JSON lines, one object per BAR access the device sees (after the transport
split it into naturally aligned pieces), in the order they were served,
after a header line:

    {"vfnic_trace": 1, "started": "2026-12-07T18:40:00+00:00"}
    {"t": 0.000123, "device": "hfi1_0", "op": "R", "bar": 0, "offset": "0x000008", "size": 8,
     "register": "CCE_REVISION2", "value": "0x0000000000000003"}

(one line each in the file). `t` is seconds since the trace was opened;
`offset` and `value` are hex strings, so that 64-bit values survive tools
that read JSON numbers as doubles. `register` is the model's name for the
offset (`DeviceModel.register_name`), one word: the kernel's CSR name for
hfi1 ("SEND_CTXT_CTRL[3]", "RcvArray[17]", "PIO_SEND_BUFFER_SOP[2]+0x40",
"undeclared:NEAREST+0x8" where the model declares nothing). Thread-safe:
the devices of one process share one file.

`read_trace` reads it back (and the space-separated format of earlier
vfnic versions); `emulator/trace_compare.py` diffs and summarises traces.
"""
from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.files import SideFile

log = logging.getLogger("vfnic.trace")

FORMAT_VERSION = 1
#: a str as a JSON string, as json.dumps writes it (ASCII, escaped)
_quote = json.encoder.encode_basestring_ascii


class TraceError(ValueError):
    """A file that is not a vfnic MMIO trace, or a line that does not parse."""


@dataclass(frozen=True)
class Access:
    """One traced BAR access."""
    time: float
    device: str
    op: str  # "R" or "W"
    bar: int
    offset: int
    size: int
    register: str
    value: int
    line: int  # where it stands in its file, 1-based

    def describe(self) -> str:
        return f"{self.device} {self.op} {self.register} {self.value:#0{2 + 2 * self.size}x}"


class MmioTrace:
    def __init__(self, path: str):
        self.path = path
        self.lines = 0
        self._start = time.monotonic()
        file = open(path, "w", buffering=1 << 16)  # open until close()
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        file.write(json.dumps({"vfnic_trace": FORMAT_VERSION, "started": started}) + "\n")
        self._out = SideFile(file, log, f"MMIO trace {path}")

    def record(self, device: str, op: str, bar: int, offset: int, size: int, name: str, value: int) -> None:
        # The line json.dumps would write for {"t": ..., "device": ..., ...}, formatted directly: a
        # probe traces tens of thousands of accesses and json.dumps of a dict costs several
        # microseconds each (tests/test_trace_compare.py holds the two equal).
        fields = (f'"device": {_quote(device)}, "op": {_quote(op)}, "bar": {bar:d}, "offset": "{offset:#08x}", '
                  f'"size": {size:d}, "register": {_quote(name)}, "value": "{value:#0{2 + 2 * size}x}"}}\n')
        with self._out.lock:  # the time is read under the lock: the devices' lines stay in time order
            line = f'{{"t": {round(time.monotonic() - self._start, 6)!r}, {fields}'
            if self._out.write(line):
                self.lines += 1

    def close(self) -> None:
        self._out.close()


def read_trace(path: str | Path) -> list[Access]:
    """Every access in a trace file, in order. Raises TraceError (naming the
    file and line) for anything that is not a trace; OSError if unreadable."""
    return list(_accesses(Path(path)))


def _accesses(path: Path) -> Iterator[Access]:
    with open(path, encoding="utf-8", errors="replace") as lines:
        header = lines.readline()
        if header.startswith("{"):
            parse = _json_access
            try:
                if json.loads(header).get("vfnic_trace") != FORMAT_VERSION:
                    raise TraceError(f"{path}:1: a trace of another format version: {header.strip()[:80]}")
            except (json.JSONDecodeError, AttributeError):
                raise TraceError(f"{path}:1: not a vfnic MMIO trace (no header line)") from None
        elif header.startswith("# time_s device op"):
            parse = _text_access
        else:
            raise TraceError(f"{path}:1: not a vfnic MMIO trace (no header line)")
        for number, text in enumerate(lines, start=2):
            if not text.strip():
                continue
            try:
                yield parse(text, number)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise TraceError(f"{path}:{number}: not a trace line ({e}): {text.strip()[:80]}") from None


def _json_access(text: str, line: int) -> Access:
    row = json.loads(text)
    return Access(float(row["t"]), str(row["device"]), _op(row["op"]), int(row["bar"]), int(row["offset"], 16),
                  int(row["size"]), str(row["register"]), int(row["value"], 16), line)


def _text_access(text: str, line: int) -> Access:
    when, device, op, bar, offset, size, name, value = text.split()
    return Access(float(when), device, _op(op), int(bar), int(offset, 16), int(size), name, int(value, 16), line)


def _op(op: str) -> str:
    if op not in ("R", "W"):
        raise ValueError(f"op {op!r} is neither R nor W")
    return op
