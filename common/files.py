"""Files a device writes on the side (a link capture, an MMIO trace), from
any thread, whose errors must never reach the guest: a write error stops the
file with one log line, a close error is logged, neither is raised.

    out = SideFile(open(path, "wb"), log, f"capture {path}")
    with out.lock:                  # what the caller counts goes with the write
        if out.write(record):       # False once stopped or closed
            packets += 1
    out.close()
"""
from __future__ import annotations

import logging
import threading
from typing import IO


class SideFile:
    def __init__(self, file: IO, log: logging.Logger, what: str):
        self.what = what
        self.lock = threading.RLock()
        self._file: IO | None = file
        self._log = log

    @property
    def open(self) -> bool:
        return self._file is not None

    def write(self, data: bytes | str) -> bool:
        """Write `data`; False when the file is closed, or stops now: "WHAT stopped: error"."""
        with self.lock:
            if self._file is None:
                return False
            try:
                self._file.write(data)
            except OSError as e:
                self._log.error("%s stopped: %s", self.what, e)
                self.close()
                return False
            return True

    def flush(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        """Close the file (once); an error, the last flush on a full disk, is logged: "closing WHAT: error"."""
        with self.lock:
            if self._file is None:
                return
            try:
                self._file.close()
            except OSError as e:
                self._log.error("closing %s: %s", self.what, e)
            self._file = None
