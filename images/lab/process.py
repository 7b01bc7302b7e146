"""Child processes (QEMU, `vfnic serve`): stopping them by PID, quoting
their logs in error messages, and the directory a run keeps them in."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from images.lab.wait import DeadlineExceeded, wait_until


def stop_process(process: subprocess.Popen, grace: float = 10.0) -> int:
    """SIGTERM `process`, then SIGKILL it if it has not exited after `grace`
    seconds; return its exit status. Only ever this one PID."""
    if process.poll() is None:
        process.terminate()
        try:
            wait_until(lambda: process.poll() is not None, grace, f"PID {process.pid} to exit")
        except DeadlineExceeded:
            process.kill()
    return process.wait()


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, indented for quoting in an error."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return "    (no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (empty log)"


@contextmanager
def run_directory(prefix: str, keep: bool, what: str = "logs") -> Iterator[Path]:
    """A fresh directory for a run's logs (and traces): removed when the run
    ends unless `keep`, in which case where it is goes to stderr."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            print(f"{what} in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
