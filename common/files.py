"""Files a device writes on the side (a capture, an MMIO trace), whose errors
must never reach the guest: they are logged, and the file is given up."""
from __future__ import annotations

import logging
from typing import IO


def close_logging_error(file: IO, log: logging.Logger, what: str) -> None:
    """Close `file`; an error (the last flush on a full disk) is logged as
    "closing WHAT: error", not raised."""
    try:
        file.close()
    except OSError as e:
        log.error("closing %s: %s", what, e)
