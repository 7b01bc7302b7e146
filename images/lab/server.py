"""A `vfnic serve` process for guests to attach to.

    with VfnicServer("testdev", [Path("/tmp/d/testdev.sock")], log=Path("serve.log")) as server:
        with Guest(server.sockets) as guest: ...

The server is started from the running interpreter (`python -m emulator.cli
serve`), so it is the vfnic of the current checkout even where the `vfnic`
console script is not on PATH. It is stopped by PID: SIGTERM, which it
handles by closing its clients and removing its sockets, then SIGKILL if it
does not exit in time.
"""
from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from emulator.control import request
from images.lab.process import log_tail, stop_process
from images.lab.wait import wait_until


class ServerError(RuntimeError):
    """`vfnic serve` exited or never created its sockets; carries its log."""


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except FileNotFoundError:
        return False


class VfnicServer:
    def __init__(self, device: str, sockets: Sequence[Path] | Path, log: Path,
                 args: Sequence[str] = (), start_timeout: float = 30.0):
        self.device = device
        self.sockets = [Path(sockets)] if isinstance(sockets, (str, Path)) else [Path(s) for s in sockets]
        self.log = Path(log)
        self.args = list(args)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None

    def command_line(self) -> list[str]:
        # a topology file names the sockets itself (`self.sockets` are then what its HFIs are served on)
        socket_args = [] if "--topology" in self.args else [arg for path in self.sockets for arg in ("--socket", str(path))]
        return [sys.executable, "-m", "emulator.cli", "serve", "--device", self.device,
                *socket_args, *self.args]

    def start(self) -> "VfnicServer":
        """Start the server and wait until all its sockets exist."""
        self.start_process()
        return self.wait_started()

    def start_process(self) -> subprocess.Popen:
        """Start the server process without waiting for its sockets."""
        if self.process is not None:
            raise RuntimeError(f"`vfnic serve --device {self.device}` is already running "
                               f"(PID {self.process.pid})")
        for path in self.sockets:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        return self.process

    def wait_started(self) -> "VfnicServer":
        """Wait until the started server's sockets exist (stopping it if they never do)."""
        try:
            wait_until(self._sockets_ready, self.start_timeout,
                       f"`vfnic serve --device {self.device}` to create {len(self.sockets)} socket(s)",
                       explain=lambda: f"its log ({self.log}):\n{log_tail(self.log)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _sockets_ready(self) -> bool:
        if self.process.poll() is not None:
            raise ServerError(f"`vfnic {' '.join(self.command_line()[3:])}` exited with status "
                              f"{self.process.returncode}; its log ({self.log}):\n{log_tail(self.log)}")
        control = [self.control_path] if self.control_path is not None else []
        return all(is_socket(path) for path in [*self.sockets, *control])

    def stats(self, timeout: float = 10.0) -> dict:
        """The running server's statistics (SIGUSR1 writes its `--stats`
        file), by socket path."""
        if "--stats" not in self.args:
            raise ValueError("the server was not started with --stats FILE")
        path = Path(self.args[self.args.index("--stats") + 1])
        before = path.stat().st_mtime_ns if path.exists() else 0
        self.process.send_signal(signal.SIGUSR1)
        wait_until(lambda: path.exists() and path.stat().st_mtime_ns != before, timeout,
                   "the server to write its statistics (SIGUSR1)")
        return json.loads(path.read_text())

    @property
    def control_path(self) -> Path | None:
        return Path(self.args[self.args.index("--control") + 1]) if "--control" in self.args else None

    def ctl(self, command: str, **arguments) -> object:
        """A command on the server's control socket (`--control PATH`), as
        `vfnic ctl` sends it; the reply's value, or ServerError with the
        server's reason."""
        if self.control_path is None:
            raise ValueError("the server was not started with --control PATH")
        reply = request(str(self.control_path), command, arguments)
        if "error" in reply:
            raise ServerError(f"vfnic ctl {command}: {reply['error']['desc']}")
        return reply["return"]

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit status."""
        if self.process is None:
            return None
        status = stop_process(self.process, grace)
        self.process = None
        return status

    def __enter__(self) -> "VfnicServer":
        # `with VfnicServer(...).start():` is fine too: started only once.
        return self if self.process is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
