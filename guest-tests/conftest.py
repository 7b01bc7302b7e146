"""Fixtures for guest tests: `vfnic serve` processes and QEMU guests using them.

    @pytest.mark.guest
    def test_scratch(vfnic_server, boot_guest):
        guest = boot_guest(vfnic_server("testdev"))
        result = guest.run("lspci -nn -d 1234:11f0", check=True)

- `guest_platform` (session): QEMU and the guest image, provisioned once per
  run; if that is impossible every guest test fails with the reason (and,
  under CI=true, any skipped guest test is a failure too).
  VFNIC_GUEST_KERNEL=sid boots every guest on Debian sid's kernel instead
  of trixie's (or a Debian kernel .deb, or a kernel build tree: as `vfnic
  up --kernel`); test_hfi1_silicon.py runs its checks on sid too in every run.
  VFNIC_GUEST_MODULES=A.ko:B.ko loads those modules (e.g. a developer's
  hfi1.ko) in every guest instead of the kernel's own (images/lab/modules.py),
  so the whole suite runs against a developer's build.
- `vfnic_server(device, count=1)`: starts `vfnic serve` with `count`
  sockets and waits for them.
- `boot_guest(*servers_or_sockets)`: boots a guest with those devices, waits
  until its agent answers, installs the host-built helpers (vfnic-mmio).
- `lab` / `module_lab`: the object behind those two (`lab.server`,
  `lab.guest`), per test or shared by a module's tests: a boot costs ~15 s
  under TCG, so checks that can share a guest should. `kernel_lab`: a
  module's Lab once on the default platform's kernel and once on sid's,
  so every test of the module that uses it runs on both kernels.
- Teardown always runs: guests are powered off (then killed by PID),
  servers get SIGTERM (then SIGKILL). When a test fails, its servers' and
  guests' logs are copied to artifacts/<test>/ and listed at the end.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from images.lab.fabric import ACTIVE, INIT, Fabric
from images.lab.modules import DRIVER, GuestModules, ModuleError, from_environment
from images.lab.modules import ENVIRONMENT as MODULES_ENVIRONMENT
from images.lab.server import VfnicServer
from images.lab.vm import Guest, VfioUserDevice
from images.provision.debian import ProvisionError
from images.provision.guest_image import GuestImage
from images.provision.kernel_matrix import build_guest_image, check_kernel_spec, guest_kernel_choice
from images.provision.qemu import Qemu, QemuError
from testkit.netns import NamespacedServer

CHECKOUT = Path(__file__).resolve().parent.parent
ARTIFACTS = CHECKOUT / "artifacts"
KEPT_LOGS = pytest.StashKey[list]()
FIGURES = pytest.StashKey[list]()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item (for the log keeper), and
    under CI turn a skipped guest test into a failure: CI must not go green
    because no guest could be booted."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"vfnic_report_{report.when}", report)
    if report.skipped and in_ci() and item.get_closest_marker("guest") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"guest test skipped with CI set, which counts as a failure: {reason}"


def pytest_configure(config):
    config.stash[KEPT_LOGS] = []
    config.stash[FIGURES] = []


def pytest_terminal_summary(terminalreporter, config):
    figures = config.stash.get(FIGURES, [])
    if figures:
        terminalreporter.section("figures measured in guests")
        for line in figures:
            terminalreporter.line(line)
    kept = config.stash.get(KEPT_LOGS, [])
    if kept:
        terminalreporter.section("guest and server logs of failed tests")
        for test, directory in kept:
            terminalreporter.line(f"{test}: {directory}")


@dataclass(frozen=True)
class GuestPlatform:
    qemu: Qemu
    image: GuestImage
    kernel: str  # what the guests boot: a Debian suite (trixie, sid), a kernel .deb or a build tree
    modules: GuestModules = GuestModules(())


def provision_platform(suite: str, modules: str | None = None) -> GuestPlatform:
    try:
        image = build_guest_image(suite)
        return GuestPlatform(Qemu.locate(), image, suite, from_environment(modules, image.kernel_version))
    except (ProvisionError, QemuError, ModuleError) as error:
        # A failure, not a skip: guest tests that silently do not run prove
        # nothing. Leave them out on purpose with `-m 'not guest'`.
        pytest.fail(f"cannot provision guests ({suite} kernel): {error}", pytrace=False)


@pytest.fixture(scope="session")
def guest_platform(request) -> GuestPlatform:
    """The guest image with the kernel VFNIC_GUEST_KERNEL names (trixie, the
    image's own, by default; sid: Debian sid's current linux-image-amd64; a
    .deb; a kernel build tree) and the modules VFNIC_GUEST_MODULES lists.
    The installed pytest plugin's `--vfnic-kernel` and `--vfnic-module`
    (testkit/pytest_plugin.py) say the same on the command line:
    `./run-tests --vfnic-kernel ~/linux --vfnic-module hfi1.ko -m guest`."""
    option_kernel = request.config.getoption("--vfnic-kernel", None)
    option_modules = request.config.getoption("--vfnic-module", None)
    try:
        if option_kernel:
            check_kernel_spec(option_kernel)
        suite = option_kernel or guest_kernel_choice()
    except ProvisionError as error:
        pytest.fail(str(error), pytrace=False)
    modules = ":".join(option_modules) if option_modules else os.environ.get(MODULES_ENVIRONMENT)
    return provision_platform(suite, modules)


class Lab:
    """The servers and guests of one test (or one module), their logs, and
    their teardown: guests are powered off first, then servers stopped."""

    def __init__(self, platform: GuestPlatform, directory: Path):
        self.platform = platform
        self.directory = directory
        # Unix socket paths are limited to 107 bytes, which pytest's
        # tmp_path can exceed: sockets get a short directory of their own.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="vfnic-test-", dir="/tmp"))
        self.servers: list[VfnicServer] = []
        self.guests: list[Guest] = []

    def server(self, device: str = "testdev", count: int = 1, args: tuple[str, ...] = (),
               topology: Callable[[list[Path]], str] | None = None, netns: str | None = None) -> VfnicServer:
        """Start `vfnic serve --device DEVICE` with `count` sockets and wait
        for them; in network namespace `netns` if given (testkit/netns.py).
        With `topology`, a function of the socket paths that returns a
        topology file's text (docs/topology.md), the server is started with
        `--topology` on that file instead of `--socket`s."""
        index = len(self.servers)
        sockets = [self.socket_dir / f"{device}{index}-{n}.sock" for n in range(count)]
        if topology is not None:
            path = self.directory / f"topology{index}.toml"
            path.write_text(topology(sockets))
            args = ("--topology", str(path), *args)
        log = self.directory / f"serve{index}.log"
        server = (VfnicServer(device, sockets, log=log, args=args) if netns is None
                  else NamespacedServer(netns, device, sockets, log=log, args=args))
        self.servers.append(server)
        return server.start()

    def guest(self, *attach, wait: bool = True, **options) -> Guest:
        """Boot a guest with the given servers' sockets (or sockets, or
        VfioUserDevices) attached. With wait=False it is only started, so
        several can boot at once: call `guest.wait_ready()` and
        `guest.install_helpers()` afterwards."""
        name = f"guest{len(self.guests)}"
        modules = self.platform.modules
        options = {"image": self.platform.image, "qemu": self.platform.qemu, **options}
        options["kernel_args"] = [*modules.kernel_args(), *options.get("kernel_args", ())]
        guest = Guest(devices_of(attach), workdir=self.directory / name, name=name, **options)
        if modules:
            # A test that holds hfi1 back to load it itself gets the modules
            # installed, not loaded: its own modprobe then loads them.
            held_back = any(arg.startswith("modprobe.blacklist=") and DRIVER in arg.split("=", 1)[1].split(",")
                            for arg in options["kernel_args"][len(modules.kernel_args()):])
            guest.on_ready.append(lambda g: modules.install(g, load=not held_back))
        self.guests.append(guest)
        guest.start()
        if wait:
            guest.wait_ready()
            guest.install_helpers()
        return guest

    def active_fabric(self, label: str, report_figure, args: tuple[str, ...] = (),
                      prepare: Callable[[Fabric], None] | None = None, **guest_options) -> Fabric:
        """Two guests on one `vfnic serve --device hfi1` with two sockets
        (and --stats, --control), booted side by side (with `guest_options`,
        e.g. `kernel_args`); once both ports are Init, `prepare(fabric)` runs
        if given (it may reload the driver, and leaves both ports Init
        again), then opafm in the first brings both Active. Reports both
        times."""
        work = self.directory / f"fabric{len(self.servers)}"
        work.mkdir()
        server = self.server("hfi1", count=2, args=("--stats", str(work / "stats.json"),
                                                    "--control", str(work / "control.sock"), *args))
        return self.bring_up_fabric(server, label, report_figure, prepare, **guest_options)

    def bring_up_fabric(self, servers: VfnicServer | list[VfnicServer], label: str, report_figure,
                        prepare: Callable[[Fabric], None] | None = None, **guest_options) -> Fabric:
        """A guest on each socket of `servers` (HFIs they have cabled, one
        way or another), booted side by side (with `guest_options`); once
        both ports are Init, `prepare(fabric)` if given, then opafm in the
        first guest brings both Active. Reports both times."""
        started = time.monotonic()
        fabric = Fabric.boot(servers, lambda devices, **options: self.guest(*devices, wait=False, **options),
                             self.socket_dir, **guest_options)
        fabric.wait_ports(INIT)
        report_figure(f"{label}: two guests booted, both ports Init {time.monotonic() - started:.1f} s after "
                      f"QEMU started (TCG, 1 vCPU each)")
        if prepare is not None:
            prepare(fabric)
            fabric.wait_ports(INIT)
        fabric.start_subnet_manager()
        fabric.wait_ports(ACTIVE)
        report_figure(f"{label}: opafm to both ports Active: {time.monotonic() - fabric.sm_started_at:.1f} s")
        return fabric

    def close(self) -> None:
        for guest in reversed(self.guests):
            guest.close()
        for server in reversed(self.servers):
            server.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def keep_logs(self, destination: Path) -> Path:
        """Copy every server and guest log to `destination`."""
        shutil.rmtree(destination, ignore_errors=True)
        destination.mkdir(parents=True)
        for path in sorted(self.directory.rglob("*.log")):
            shutil.copy(path, destination / "-".join(path.relative_to(self.directory).parts))
        return destination


def devices_of(attach) -> list[VfioUserDevice]:
    devices: list[VfioUserDevice] = []
    for item in attach:
        if isinstance(item, VfnicServer):
            devices += [VfioUserDevice(path) for path in item.sockets]
        elif isinstance(item, VfioUserDevice):
            devices.append(item)
        else:
            devices.append(VfioUserDevice(Path(item)))
    return devices


def item_failed(item) -> bool:
    return any(getattr(getattr(item, f"vfnic_report_{when}", None), "failed", False)
               for when in ("setup", "call"))


def run_lab(request, platform: GuestPlatform, directory: Path, items, variant: str = ""):
    """Yield a Lab; afterwards close it, and keep its logs if any of
    `items()` (the tests that used it) failed, in artifacts/ under the
    requesting node's name (and `variant`'s, where a module has several)."""
    lab = Lab(platform, directory)
    try:
        yield lab
    finally:
        lab.close()
        if any(item_failed(item) for item in items()):
            test_name = request.node.nodeid.split("/")[-1].replace(".py::", ".") + variant
            name = re.sub(r"[^\w.-]+", "_", test_name)
            kept = lab.keep_logs(ARTIFACTS / name)
            request.config.stash[KEPT_LOGS].append((request.node.nodeid, kept))


@pytest.fixture
def lab(request, guest_platform, tmp_path):
    """A Lab for one test."""
    yield from run_lab(request, guest_platform, tmp_path, lambda: [request.node])


@pytest.fixture(scope="module")
def module_lab(request, guest_platform, tmp_path_factory):
    """A Lab shared by a module's tests (one boot for many checks); its logs
    are kept if any test of the module failed."""
    prefix = f"{request.node.nodeid}::"
    yield from run_lab(request, guest_platform, tmp_path_factory.mktemp("module-lab"),
                       lambda: [i for i in request.session.items if i.nodeid.startswith(prefix)])


@pytest.fixture(scope="module", params=("default", "sid"))
def kernel_lab(request, tmp_path_factory):
    """A Lab shared by a module's tests, once per kernel: the default
    platform's (VFNIC_GUEST_KERNEL's choice, trixie's unless told) and Debian
    sid's current one whatever VFNIC_GUEST_KERNEL says. Every test using it
    runs on both, one kernel's tests after the other's (`[default]`, `[sid]`);
    `@pytest.mark.parametrize("kernel_lab", ["sid"], indirect=True)` keeps a
    test to one of them."""
    which = request.param
    platform = request.getfixturevalue("guest_platform") if which == "default" else provision_platform(which)
    prefix = f"{request.node.nodeid}::"

    def items():
        return [i for i in request.session.items if i.nodeid.startswith(prefix)
                and getattr(getattr(i, "callspec", None), "params", {}).get("kernel_lab") == which]

    yield from run_lab(request, platform, tmp_path_factory.mktemp(f"{which}-kernel-lab"), items, f"-{which}")


@pytest.fixture(scope="session")
def report_figure(request):
    """`report_figure("hfi1: modprobe to Init 5.2 s")`: a line for the run's summary."""
    return request.config.stash[FIGURES].append


@pytest.fixture
def vfnic_server(lab):
    """Factory: `vfnic_server(device, count=1, args=())` -> a running VfnicServer."""
    return lab.server


@pytest.fixture
def boot_guest(lab):
    """Factory: `boot_guest(*servers_or_sockets, wait=True, **Guest options)` -> a ready Guest."""
    return lab.guest


@pytest.fixture
def places():
    """(a run directory for `vfnic up`'s state, a user's directory outside the checkout)."""
    run_dir = Path(tempfile.mkdtemp(prefix="vfnic-up-", dir="/tmp"))  # short: unix socket paths
    outside = Path(tempfile.mkdtemp(prefix="vfnic-user-"))
    yield run_dir / "run", outside
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(outside, ignore_errors=True)
