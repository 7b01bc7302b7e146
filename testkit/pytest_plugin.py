"""vfnic's pytest plugin: guests on an emulated Omni-Path fabric for any
project's tests (`pip install vfnic` registers it through the `pytest11`
entry point; nothing else to configure).

    import pytest

    @pytest.mark.vfnic_guest
    def test_rc_pingpong(vfnic_fabric):
        g0, g1 = vfnic_fabric.guests
        assert vfnic_fabric.run(0, "cat /sys/class/infiniband/*/ports/1/state").stdout.strip() == "4: ACTIVE"
        run = vfnic_fabric.run_pair("ibv_rc_pingpong -c -n 20")
        assert run.ok, run.explain()
        assert vfnic_fabric.driver_warnings(0) == []

Fixtures (module scope: a boot costs ~30 s under TCG, so a module's tests
share one fabric):

- `vfnic_fabric`: a running fabric of guests (default 2, one emulated HFI
  each, cabled back to back; opafm started, ports Active), as `vfnic up`
  starts it (images/lab/up.py). `.guests`, `.run(i, cmd)`, `.put/.get`,
  `.dmesg(i)`, `.driver_warnings(i)` (hfi1's warning-or-worse lines),
  `.ctl(command, **args)` on the server's control socket (faults,
  link-down, capture), `.control_socket`, `.trace_path` and `.trace()`
  (the MMIO trace's accesses, emulator/trace.py), `.run_pair(...)` (a tool
  as server in one guest and client in the other), `.logs`.
- `vfnic_options`: what the fabric is made of; override it in your
  conftest.py to change it for a directory, e.g.
  `return {**vfnic_options, "guests": 1, "trace": True}`. Its defaults come
  from the command line (`--vfnic-kernel`, `--vfnic-module`, repeatable,
  `--vfnic-guests`, `--vfnic-no-sm`) or the environment (VFNIC_GUEST_KERNEL,
  VFNIC_GUEST_MODULES), as for vfnic's own guest tests.

The plugin costs nothing unless `vfnic_fabric` is used: the lab is
imported, and QEMU and the guest image are located (provisioned on first
use into ~/.cache/vfnic), only then. Its names all start with `vfnic_`, so
they do not clash with a project's own fixtures (vfnic's own guest tests
have `lab`, `module_lab`, ...). Failures to provision or boot are test
errors, never skips.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser) -> None:
    group = parser.getgroup("vfnic", "vfnic guests on an emulated fabric (the vfnic_fabric fixture)")
    group.addoption("--vfnic-kernel", default=None,
                    help="guest kernel: trixie, sid, a Debian linux-image .deb or a kernel build tree "
                         "(default: $VFNIC_GUEST_KERNEL or trixie)")
    group.addoption("--vfnic-module", action="append", default=None, metavar="FILE.ko",
                    help="a module loaded in every guest instead of the kernel's own; repeatable "
                         "(default: $VFNIC_GUEST_MODULES, paths separated by ':')")
    group.addoption("--vfnic-guests", type=int, default=2, help="guests per fabric (1 or 2; default 2)")
    group.addoption("--vfnic-no-sm", action="store_true", help="do not start opafm (ports stay Init)")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "vfnic_guest: boots QEMU guests on an emulated fabric (slow)")


@pytest.fixture(scope="module")
def vfnic_options(request) -> dict:
    """What `vfnic_fabric` starts: guests, kernel, modules, sm, trace,
    server_options (hfi1 --option values), init, memory."""
    config = request.config
    modules = config.getoption("--vfnic-module")
    if modules is None:
        modules = [p for p in os.environ.get("VFNIC_GUEST_MODULES", "").replace(",", ":").split(":") if p]
    return {
        "guests": config.getoption("--vfnic-guests"),
        "kernel": config.getoption("--vfnic-kernel") or os.environ.get("VFNIC_GUEST_KERNEL", "trixie"),
        "modules": list(modules),
        "sm": not config.getoption("--vfnic-no-sm"),
        "trace": False,
        "server_options": [],
        "init": "vfnic",
        "memory": "1024M",
    }


class VfnicFabric:
    """A running fabric for a test (see the module docstring)."""

    def __init__(self, up, trace_path: Path | None):
        self._up = up
        self.lab = up.fabric  # images.lab.fabric.Fabric
        self.trace_path = trace_path

    @property
    def guests(self) -> list:
        return self.lab.guests

    @property
    def devices(self) -> list[str]:
        """Each guest's hfi1 RDMA device name (from sysfs)."""
        return self.lab.devices

    @property
    def server(self):
        return self.lab.server

    @property
    def control_socket(self) -> Path:
        return self._up.state_dir.control_socket

    @property
    def logs(self) -> Path:
        return self._up.logs

    def guest(self, which):
        if isinstance(which, int):
            return self.guests[which]
        found = next((g for g in self.guests if g.name == which), None)
        if found is None:
            raise KeyError(f"no guest {which!r} on this fabric (guests: {', '.join(g.name for g in self.guests)})")
        return found

    def run(self, which, command, timeout: float = 120.0, check: bool = False):
        """Run `command` in a guest (index or name); an images.lab.vm.Result."""
        return self.guest(which).run(command, timeout=timeout, check=check)

    def put(self, which, path: str, data, mode: int = 0o644) -> None:
        self.guest(which).put(path, data, mode=mode)

    def get(self, which, path: str) -> bytes:
        return self.guest(which).get(path)

    def dmesg(self, which) -> str:
        return self.run(which, "dmesg", check=True).stdout

    def driver_warnings(self, which) -> list[str]:
        """hfi1's (and rdmavt's) kernel log lines at warning level or worse,
        less those it prints on every healthy device in a small guest."""
        from testkit.guest_checks import hfi1_dmesg_problems
        return hfi1_dmesg_problems(self.guest(which))

    def port_states(self) -> list[str]:
        return self.lab.port_states()

    def ctl(self, command: str, **arguments):
        """A command on the server's control socket (`vfnic ctl`): query,
        stats, fault-set, link-down, capture-start, ...; its reply."""
        return self.server.ctl(command, **arguments)

    def trace(self) -> list:
        """The MMIO accesses traced so far (vfnic_options' trace=True)."""
        if self.trace_path is None:
            raise ValueError("the fabric was started without a trace: set trace=True in vfnic_options")
        from emulator.trace import read_trace
        return read_trace(self.trace_path)

    def run_pair(self, command: str, **options):
        """`command` as server in guest 1 and client in guest 0 (rdma-core's
        and perftest's tools: -d DEVICE and the port are appended)."""
        return self.lab.run_pair(command, **options)


@pytest.fixture(scope="module")
def vfnic_fabric(request, vfnic_options, tmp_path_factory):
    """A running fabric of guests (see the module docstring), shared by the
    module's tests and stopped after them."""
    from images.lab.up import Up, UpError, UpOptions, check_options

    work = tmp_path_factory.mktemp("vfnic-fabric")
    trace_path = work / "mmio-trace.jsonl" if vfnic_options.get("trace") else None
    options = UpOptions(name=f"pytest-{os.getpid()}-{work.name}", guests=vfnic_options["guests"],
                        kernel=vfnic_options["kernel"], modules=tuple(map(str, vfnic_options["modules"])),
                        subnet_manager=vfnic_options["sm"], init=vfnic_options["init"],
                        memory=vfnic_options["memory"], trace=str(trace_path) if trace_path else None,
                        server_options=tuple(vfnic_options["server_options"]), logs=str(work / "logs"))
    up = Up(options, say=lambda *args, **kwargs: None)
    try:
        check_options(options)
        up.claim()
        up.start()
    except UpError as error:
        up.close()
        pytest.fail(f"vfnic_fabric: {error}", pytrace=False)
    except Exception as error:
        up.close()
        pytest.fail(f"vfnic_fabric: the fabric did not come up: {error}\n(logs in {work / 'logs'})", pytrace=False)
    except BaseException:
        up.close()
        raise
    try:
        yield VfnicFabric(up, trace_path)
    finally:
        up.close()
