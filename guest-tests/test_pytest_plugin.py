"""vfnic's pytest plugin as another project uses it: a fresh venv made
here, `pip install` of this checkout into it (not editable: what a user
gets), and a temporary project directory outside the checkout with an
example test file (guest-backed) and a conftest.py overriding
`vfnic_options`, run with plain `pytest`. The example is
docs/driver-developers.md's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

CHECKOUT = Path(__file__).resolve().parent.parent

EXAMPLE = '''
def test_both_ports_are_active_and_rc_traffic_passes(vfnic_fabric):
    assert len(vfnic_fabric.guests) == 2
    for i in range(2):
        state = vfnic_fabric.run(i, "cat /sys/class/infiniband/*/ports/1/state").stdout.strip()
        assert state == "4: ACTIVE"
    run = vfnic_fabric.run_pair("ibv_rc_pingpong -c -n 20")
    assert run.ok, run.explain()
    assert vfnic_fabric.driver_warnings(0) == [] and vfnic_fabric.driver_warnings(1) == []


def test_the_control_socket_and_the_trace(vfnic_fabric):
    devices = vfnic_fabric.ctl("query")["devices"]
    assert [d["device"] for d in devices] == ["hfi1", "hfi1"]
    names = {access.register for access in vfnic_fabric.trace()}
    assert "CCE_REVISION" in names, sorted(names)[:20]
    assert "hfi1" in vfnic_fabric.dmesg(1)

'''

#: collected first: the plugin has loaded, and nothing of the lab with it
PLAIN = '''
import sys


def test_a_test_without_the_fixture_starts_nothing():
    assert "images.lab.vm" not in sys.modules and "images.lab.up" not in sys.modules
'''

CONFTEST = '''
import pytest


@pytest.fixture(scope="module")
def vfnic_options(vfnic_options):
    return {**vfnic_options, "trace": True}
'''


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with this checkout pip-installed into it."""
    venv = Path(tempfile.mkdtemp(prefix="vfnic-user-venv-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        started = time.monotonic()
        install = subprocess.run([str(venv / "bin/pip"), "install", "-q", str(CHECKOUT)], capture_output=True,
                                 text=True, timeout=900)
        assert install.returncode == 0, install.stdout + install.stderr
        yield venv, time.monotonic() - started
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def clean_environment() -> dict:
    """The user's environment: no PYTHONPATH into the checkout, no CI's knobs."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VFNIC_GUEST_MODULES", "PYTEST_ADDOPTS")}


def test_another_project_runs_guest_tests_with_the_plugin(installed, tmp_path, report_figure):
    venv, install_seconds = installed
    project = Path(tempfile.mkdtemp(prefix="vfnic-user-project-"))
    try:
        (project / "test_fabric_example.py").write_text(textwrap.dedent(EXAMPLE))
        (project / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        (project / "test_a_plain.py").write_text(textwrap.dedent(PLAIN))
        help_text = subprocess.run([str(venv / "bin/pytest"), "--help"], cwd=project, capture_output=True, text=True,
                                   env=clean_environment(), timeout=120).stdout
        assert "--vfnic-kernel" in help_text and "--vfnic-module" in help_text
        started = time.monotonic()
        run = subprocess.run([str(venv / "bin/pytest"), "-q", "-p", "no:cacheprovider"], cwd=project,
                             capture_output=True, text=True, env=clean_environment(), timeout=1200)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
        assert "3 passed" in run.stdout, run.stdout
        report_figure(f"pytest plugin: pip install {install_seconds:.0f} s; the example project's 3 tests "
                      f"(one fabric of 2 guests) {time.monotonic() - started:.0f} s")
        stray = subprocess.run(["pgrep", "-f", str(project)], capture_output=True, text=True).stdout.split()
        assert stray == []
    finally:
        shutil.rmtree(project, ignore_errors=True)
