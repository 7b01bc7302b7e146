"""Native thread names, so `top -H`, `ps -L` and /proc/PID/task/TID/comm tell
the server's threads apart (Python 3.11 leaves every one named after the
process). The kernel keeps 15 bytes of a name.

    name_native_thread("hfi1-engines")   # on the thread to be named
"""
from __future__ import annotations

import ctypes
import ctypes.util

PR_SET_NAME = 15
_libc = None


def name_native_thread(name: str) -> bool:
    """Name the calling thread for the kernel; False where that cannot be done."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
