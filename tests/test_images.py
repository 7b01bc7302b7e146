"""The guest tooling's own parts, checked on the host without booting anything:
parsers, archive and wire formats, the cache's build-once rule, the agent's
command runner, and the QEMU command line a Guest would use."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from images.lab.lspci import parse_lspci
from images.lab.management_hub import ManagementHub
from images.lab.vm import Guest, VfioUserDevice, agent_wire, resolve_accel
from images.lab.wait import DeadlineExceeded, wait_until
from images.provision import cache, debian
from images.provision.guest_image import GuestImage, device_files
from images.provision.initrd import ModuleTree, NewcArchive
from images.provision.qemu import Qemu, QemuError

LSPCI_SAMPLE = """\
0000:01:00.0 Unassigned class [ff00]: Device [1234:11f0] (rev 01)
\tSubsystem: Device [1234:11f0]
\tControl: I/O+ Mem+ BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx-
\tRegion 0: Memory at fe400000 (64-bit, non-prefetchable) [size=64K]
\tCapabilities: [40] Power Management version 3
\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0-,D1-,D2-,D3hot-,D3cold-)
\tCapabilities: [48] Express (v2) Endpoint, IntMsgNum 0
\t\tDevCap:\tMaxPayload 512 bytes, PhantFunc 0, Latency L0s <64ns, L1 <1us
\tCapabilities: [84] MSI-X: Enable- Count=4 Masked-
\t\tVector table: BAR=0 offset=00008000
\t\tPBA: BAR=0 offset=00009000
\tKernel driver in use: vfio-pci

0000:00:01.0 PCI bridge [0604]: Red Hat, Inc. QEMU PCIe Root port [1b36:000c]
\tBus: primary=00, secondary=01, subordinate=01, sec-latency=0
"""


def test_lspci_output_parses_into_devices_capabilities_and_regions():
    testdev, bridge = parse_lspci(LSPCI_SAMPLE)
    assert (testdev.address, testdev.vendor, testdev.device, testdev.class_code) == \
        ("0000:01:00.0", 0x1234, 0x11F0, 0xFF00)
    assert [c.offset for c in testdev.capabilities] == [0x40, 0x48, 0x84]
    assert testdev.capability("MSI-X").details == ["Vector table: BAR=0 offset=00008000",
                                                  "PBA: BAR=0 offset=00009000"]
    region = testdev.regions[0]
    assert (region.size, region.is_64bit, region.prefetchable) == (64 << 10, True, False)
    assert testdev.fields["Kernel driver in use"] == "vfio-pci"
    assert (bridge.vendor, bridge.device, bridge.class_code) == (0x1B36, 0x000C, 0x0604)


def read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (mode, data) from a newc cpio archive (the kernel's format)."""
    entries, position = {}, 0
    while True:
        fields = [int(data[position + 6 + 8 * i:position + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_start = position + 110
        name = data[name_start:name_start + name_size - 1].decode()
        body_start = name_start + name_size + (-(110 + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, data[body_start:body_start + size])
        position = body_start + size + (-size % 4)


def test_newc_archive_holds_files_directories_and_device_nodes():
    archive = NewcArchive()
    archive.directory("dev")
    archive.char_device("dev/console", 5, 1)
    archive.file("init", b"\x7fELF-ish", 0o755)
    entries = read_newc(archive.finish())
    assert entries == {"dev": (0o040755, b""), "dev/console": (0o020600, b""),
                       "init": (0o100755, b"\x7fELF-ish")}


@pytest.fixture
def module_tree(tmp_path) -> ModuleTree:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/lib/crc16.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n"
        "kernel/lib/crc16.ko.xz:\n"
        "kernel/drivers/block/virtio_blk.ko.xz:\n")
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    return ModuleTree(tmp_path)


def test_modules_load_after_their_dependencies_and_builtins_are_skipped(module_tree):
    order = module_tree.load_order(["virtio_pci", "virtio-blk", "ext4", "jbd2"])
    assert order == ["kernel/drivers/block/virtio_blk.ko.xz", "kernel/fs/jbd2/jbd2.ko.xz",
                     "kernel/lib/crc16.ko.xz", "kernel/fs/ext4/ext4.ko.xz"]


def test_a_module_the_kernel_lacks_is_a_clear_error(module_tree):
    with pytest.raises(debian.ProvisionError, match="no hfi1"):
        module_tree.load_order(["hfi1"])


def test_mirror_comes_from_deb822_or_one_line_sources():
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\n"
              "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n")
    assert debian._mirrors_in_deb822(deb822) == [
        ("http://mirror.example/debian", "bookworm bookworm-updates"),
        ("http://mirror.example/debian-security", "bookworm-security")]
    one_line = "# comment\ndeb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n"
    assert debian._mirrors_in_one_line_format(one_line) == [("http://mirror.example/debian", "bookworm")]


def test_mirror_override_wins(monkeypatch):
    monkeypatch.setenv("VFNIC_DEBIAN_MIRROR", "http://mirror.example/debian/")
    assert debian.debian_mirror() == "http://mirror.example/debian"


def test_agent_frames_round_trip_and_a_cut_frame_reads_as_end():
    frame = agent_wire.encode_frame({"op": "put", "id": 7, "path": "/x"}, b"\x00\xffdata")
    stream = io.BytesIO(frame + frame[:-2])
    header, payload = agent_wire.read_frame(stream)
    assert header == {"op": "put", "id": 7, "path": "/x", "size": 6} and payload == b"\x00\xffdata"
    assert agent_wire.read_frame(stream) is None


def test_agent_kills_a_command_at_its_timeout_and_keeps_its_output():
    status, out, err = agent_wire.run_command(["sh", "-c", "echo before; sleep 30"], 0.5, b"", None)
    assert (status["timed_out"], status["rc"], out, err) == (True, -9, b"before\n", b"")
    assert status["duration"] < 10


def test_agent_truncates_output_beyond_its_limit(monkeypatch):
    monkeypatch.setattr(agent_wire, "OUTPUT_LIMIT", 1000)
    status, out, _ = agent_wire.run_command(["head", "-c", "5000", "/dev/zero"], 10, b"", None)
    assert (status["rc"], status["truncated"], len(out)) == (0, True, 1000)


def test_build_once_builds_a_recipe_once_and_leaves_nothing_from_a_failed_build(tmp_path, monkeypatch):
    monkeypatch.setenv("VFNIC_CACHE", str(tmp_path))
    builds = []

    def builder(work: Path) -> None:
        builds.append(work)
        (work / "artefact").write_text("done")

    first = cache.build_once("thing", {"v": 1}, builder)
    assert cache.build_once("thing", {"v": 1}, builder) == first and len(builds) == 1
    assert (first / "artefact").read_text() == "done"
    assert json.loads((first / "recipe.json").read_text()) == {"v": 1}

    def failing(work: Path) -> None:
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError):
        cache.build_once("thing", {"v": 2}, failing)
    assert sorted(p.name for p in (tmp_path / "thing").iterdir() if not p.name.endswith(".lock")) \
        == [first.name]


def test_wait_until_returns_the_value_or_says_what_it_waited_for():
    assert wait_until(lambda: 42, 1, "the answer") == 42
    with pytest.raises(DeadlineExceeded, match="timed out waiting for nothing: still nothing"):
        wait_until(lambda: None, 0.05, "nothing", explain=lambda: "still nothing")


def test_guest_command_line_puts_each_device_behind_a_gen3_x16_root_port(tmp_path):
    guest = Guest([VfioUserDevice(Path("/s/a.sock")), VfioUserDevice(Path("/s/b.sock"), root_port=False)],
                  image=GuestImage(tmp_path), qemu=Qemu(argv=["qemu"], version="11.1.3"),
                  workdir=tmp_path, accel="tcg")
    guest.runtime_dir = Path("/run/x")
    argv = guest.command_line()
    devices = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-device"]
    assert "pxb-pcie,id=numa0-bridge,bus_nr=128,numa_node=0,bus=pcie.0" in devices
    assert "pcie-root-port,id=rp0,bus=numa0-bridge,chassis=1,x-speed=8,x-width=16" in devices
    assert json.loads(devices[-2]) == {"driver": "vfio-user-pci", "id": "nic0", "bus": "rp0",
                                       "socket": {"type": "unix", "path": "/s/a.sock"}}
    assert json.loads(devices[-1])["bus"] == "pcie.0"
    assert "memory-backend-memfd,id=mem0,size=1024M,share=on" in argv
    assert argv[argv.index("-numa") + 1] == "node,nodeid=0,memdev=mem0"


def test_without_numa_ram_is_the_machine_backend_and_root_ports_sit_on_pcie0(tmp_path):
    guest = Guest([Path("/s/a.sock")], image=GuestImage(tmp_path), qemu=Qemu(argv=["qemu"]),
                  workdir=tmp_path, accel="tcg", numa=False)
    guest.runtime_dir = Path("/run/x")
    argv = guest.command_line()
    assert "-numa" not in argv and not any(arg.startswith("pxb-pcie") for arg in argv)
    assert argv[argv.index("-machine") + 1].endswith(",memory-backend=mem0")
    assert "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,x-speed=8,x-width=16" in argv


def test_the_management_hub_repeats_each_frame_to_every_other_member(tmp_path):
    """Three guests' management NICs (unix datagram sockets, as QEMU's dgram
    netdev binds them) on one hub: a frame from one reaches the two others."""
    import socket
    with ManagementHub(tmp_path, 3) as hub:
        assert [p.address for p in hub.ports] == ["10.77.0.1/24", "10.77.0.2/24", "10.77.0.3/24"]
        assert len({p.mac for p in hub.ports}) == 3 and {p.remote for p in hub.ports} == {hub.path}
        nics = []
        for port in hub.ports:
            nic = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            nic.bind(str(port.local))
            nic.settimeout(5)
            nics.append(nic)
        nics[1].sendto(b"frame from 2", str(hub.path))
        assert [nics[i].recv(100) for i in (0, 2)] == [b"frame from 2", b"frame from 2"]
        nics[1].settimeout(0.2)
        with pytest.raises(socket.timeout):
            nics[1].recv(100)
        for nic in nics:
            nic.close()
    assert not hub.path.exists()


def test_unknown_accelerator_is_refused():
    with pytest.raises(QemuError, match="unknown accelerator"):
        resolve_accel("hvf")


def test_kvm_without_a_usable_dev_kvm_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(QemuError, match="/dev/kvm is missing or not accessible"):
        resolve_accel("kvm")


def test_a_footprint_is_within_ten_percent_or_one_fd_of_its_reference():
    from images.lab.soak import Footprint, within
    reference = Footprint(fds=9, rss_kib=50_000)
    assert within(Footprint(10, 54_999), reference), "one fd more: a control connection still closing"
    assert not within(Footprint(11, 50_000), reference), "two fds more out of nine is a leak"
    assert not within(Footprint(9, 55_001), reference), "RSS grew by more than 10 %"
    assert within(Footprint(44, 50_000), Footprint(40, 50_000)) and not within(Footprint(45, 50_000),
                                                                              Footprint(40, 50_000))


def test_the_image_installs_each_devices_guest_files_where_the_guest_looks():
    files = device_files()
    assert sorted(files) == [f"usr/lib/firmware/hfi1_{name}.fw" for name in ("dc8051", "fabric", "pcie", "sbus")]
    assert all(len(data) == 972 for data in files.values())


@pytest.mark.parametrize("argv", [["demo", "--guests", "9"], ["demo", "--guests", "1"],
                                  ["demo", "testdev", "--guests", "3"]])
def test_the_demo_refuses_a_guest_count_it_cannot_run_before_starting_anything(argv, capsys):
    from images.__main__ import main
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "--guests takes 3 to 8 guests of hfi1" in capsys.readouterr().err


def test_run_demo_mpi_boots_the_two_guest_fabric_and_runs_the_mpi_ping_pong_instead_of_ib_write_bw(monkeypatch):
    """`./run-demo --mpi` (python -m images demo --mpi): the hfi1 fabric demo, with the MPI ping-pong."""
    import images.__main__ as cli
    calls = []
    monkeypatch.setattr(cli, "fabric_demo", lambda commands, keep, mpi=False: calls.append((commands, keep, mpi)) or 0)
    assert cli.main(["demo", "--mpi"]) == 0
    assert cli.main(["demo", "hfi1", "--mpi", "--keep", "--run", "ibv_devices"]) == 0
    assert cli.main(["demo"]) == 0
    assert calls == [(["opainfo"], False, True), (["ibv_devices"], True, True), (["opainfo"], False, False)]


def test_run_demo_mpi_is_refused_for_the_one_guest_test_device(monkeypatch, capsys):
    import images.__main__ as cli
    monkeypatch.setattr(cli, "demo", lambda *args: pytest.fail("the testdev demo must not start with --mpi"))
    with pytest.raises(SystemExit) as stopped:
        cli.main(["demo", "testdev", "--mpi"])
    assert stopped.value.code == 2
    assert "--mpi runs between two hfi1 guests, not 'testdev'" in capsys.readouterr().err
