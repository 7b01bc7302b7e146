"""`vfnic up` driven as a user drives it, for the guest tests of the
command and of the developer's loop (guest-tests/test_up.py,
test_hfi1_out_of_tree.py): a subprocess started from a directory of the
user's, its output collected, its state file read, and what it left
checked by the PIDs it recorded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from images.lab.up import Recorded
from images.lab.wait import wait_until

CHECKOUT = Path(__file__).resolve().parent.parent


class UpProcess:
    """`vfnic up ARGS` started in `cwd`, its output collected line by line."""

    def __init__(self, run_dir: Path, cwd: Path, *args: str):
        self.run_dir, self.cwd = run_dir, cwd
        self.env = {**os.environ, "VFNIC_RUN_DIR": str(run_dir), "PYTHONPATH": str(CHECKOUT)}
        self.process = subprocess.Popen([*self.vfnic(), "up", *args], cwd=cwd, env=self.env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self.reader.start()

    @staticmethod
    def vfnic() -> list[str]:
        return [sys.executable, "-m", "emulator.cli"]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def state(self, name: str = "default") -> dict:
        try:
            return json.loads((self.run_dir / name / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def wait_for(self, condition, timeout: float, what: str):
        def check():
            if self.process.poll() is not None:
                pytest.fail(f"vfnic up exited ({self.process.returncode}) before {what}:\n{self.output}")
            return condition(self.state())
        return wait_until(check, timeout, what, explain=lambda: self.output)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.vfnic(), *args], cwd=self.cwd, env=self.env, text=True, capture_output=True,
                              timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
        # whatever it recorded and left, by PID
        for p in self.state().get("processes", []):
            Recorded.from_json(p).stop()


def assert_nothing_left(state: dict, run_dir: Path) -> None:
    recorded = [Recorded.from_json(p) for p in state.get("processes", [])]
    assert recorded, state
    assert [p for p in recorded if p.alive()] == []
    assert not (run_dir / state.get("name", "default")).exists(), list((run_dir / "default").iterdir())
