"""`vfnic up` and its companions without a guest: the entry points that
bring the commands to `vfnic`, the state directory and stopping by PID,
the lab socket, bad input refused with one line and status 2, module
checks (.modinfo, vermagic), kernel specs. The guest-backed checks are in
guest-tests/test_up.py."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emulator import cli
from images.lab import commands
from images.lab.modules import DRIVER, GuestModules, Module, ModuleError, from_environment, modinfo
from images.lab.up import (
    Interrupts,
    LabSocket,
    Recorded,
    StateDir,
    UpError,
    UpOptions,
    check_options,
    describe,
    request,
)
from images.provision.debian import ProvisionError
from images.provision.kernel_matrix import BZIMAGE, check_kernel_spec

RELEASE = "6.12.117+deb13-amd64"


@pytest.fixture(autouse=True)
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VFNIC_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("VFNIC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "run"


# -- modules ------------------------------------------------------------------------

def elf_module(fields: dict[str, str]) -> bytes:
    """A minimal ELF64 file with a .modinfo section (what modinfo reads)."""
    modinfo_data = b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())
    names = b"\0.modinfo\0.shstrtab\0"
    header_size, section_size = 64, 64
    modinfo_at = header_size
    names_at = modinfo_at + len(modinfo_data)
    sections_at = names_at + len(names)
    sections = b"\0" * section_size
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, modinfo_at, len(modinfo_data), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, names_at, len(names), 0, 0, 1, 0)
    header = bytearray(b"\x7fELF\x02\x01\x01" + b"\0" * 9)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sections_at, 0, 64, 0, 0, 64, 3, 2)
    return bytes(header) + modinfo_data + names + sections


def write_module(path: Path, name: str = "hfi1", release: str = RELEASE) -> Path:
    path.write_bytes(elf_module({"license": "GPL", "name": name,
                                 "vermagic": f"{release} SMP preempt mod_unload modversions "}))
    return path


def test_modinfo_reads_the_fields_of_a_module():
    info = modinfo(elf_module({"name": "hfi1", "vermagic": f"{RELEASE} SMP "}))
    assert info == {"name": "hfi1", "vermagic": f"{RELEASE} SMP "}


@pytest.mark.parametrize("data,reason", [
    (b"hello", "not an ELF file"),
    (b"\x7fELF\x01\x01" + b"\0" * 60, "not a 64-bit little-endian"),
    (elf_module({"name": "x"})[:100], "truncated or damaged"),
])
def test_what_is_not_a_module_is_refused_in_one_line(data, reason):
    with pytest.raises(ModuleError, match=reason):
        modinfo(data)


def test_a_module_of_the_guest_kernel_passes_and_holds_back_autoloading(tmp_path):
    modules = GuestModules.from_paths([write_module(tmp_path / "rdmavt.ko", "rdmavt")], RELEASE)
    assert modules.names == ["rdmavt"]
    assert modules.kernel_args() == [f"modprobe.blacklist=rdmavt,{DRIVER}"]
    assert GuestModules.from_paths([], RELEASE).kernel_args() == []


def test_a_module_of_another_kernel_is_refused_naming_both_releases(tmp_path):
    path = write_module(tmp_path / "hfi1.ko", release="6.1.0-99-amd64")
    with pytest.raises(ModuleError, match=re.escape(f"built for kernel 6.1.0-99-amd64, the guests run {RELEASE}")):
        GuestModules.from_paths([path], RELEASE)


def test_missing_and_repeated_modules_are_refused(tmp_path):
    with pytest.raises(ModuleError, match="does not exist"):
        Module.read(tmp_path / "nope.ko")
    a = write_module(tmp_path / "hfi1.ko")
    b = write_module((tmp_path / "b").mkdir() or tmp_path / "b" / "hfi1.ko")
    with pytest.raises(ModuleError, match="given twice"):
        GuestModules.from_paths([a, b], RELEASE)


def test_the_environment_lists_modules_by_colon_or_comma(tmp_path):
    a, b = write_module(tmp_path / "hfi1.ko"), write_module(tmp_path / "rdmavt.ko", "rdmavt")
    assert from_environment(f"{a}:{b}", RELEASE).names == ["hfi1", "rdmavt"]
    assert from_environment(f"{a},{b}", RELEASE).names == ["hfi1", "rdmavt"]
    assert not from_environment("", RELEASE)


# -- kernel specs -------------------------------------------------------------------

def test_kernel_specs_are_told_apart_and_bad_ones_refused(tmp_path):
    assert check_kernel_spec("trixie") == check_kernel_spec("sid") == "suite"
    with pytest.raises(ProvisionError, match="unknown kernel 'bookworm'"):
        check_kernel_spec("bookworm")
    with pytest.raises(ProvisionError, match="does not exist"):
        check_kernel_spec(str(tmp_path / "linux-image.deb"))
    deb = tmp_path / "linux-image-x.deb"
    deb.write_bytes(b"!<arch>\n")
    assert check_kernel_spec(str(deb)) == "deb"
    tree = tmp_path / "linux"
    tree.mkdir()
    with pytest.raises(ProvisionError, match="without arch/x86/boot/bzImage"):
        check_kernel_spec(str(tree))
    (tree / BZIMAGE).parent.mkdir(parents=True)
    (tree / BZIMAGE).write_bytes(b"kernel")
    with pytest.raises(ProvisionError, match="make modules_install INSTALL_MOD_PATH="):
        check_kernel_spec(str(tree))
    (tree / "modules-install/lib/modules/6.99.0").mkdir(parents=True)
    assert check_kernel_spec(str(tree)) == "tree"


# -- options and the command line -----------------------------------------------------

@pytest.mark.parametrize("options,message", [
    (UpOptions(guests=3), "--guests 3: 1 or 2"),
    (UpOptions(guests=0), "--guests 0"),
    (UpOptions(name="../x"), "fabric name"),
    (UpOptions(kernel="bookworm"), "unknown kernel"),
    (UpOptions(modules=("/nonexistent/hfi1.ko",)), "module /nonexistent/hfi1.ko does not exist"),
])
def test_bad_options_are_refused_before_anything_starts(options, message):
    with pytest.raises(UpError, match=message):
        check_options(options)


def vfnic(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed `vfnic` (entry points come from the installed metadata)."""
    return subprocess.run([sys.executable, "-m", "emulator.cli", *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])})


@pytest.fixture
def installed():
    """The lab commands come from the installed metadata (./run-tests installs
    the checkout): without them these tests could only skip, so they fail."""
    from importlib.metadata import entry_points
    if not any(e.name == "up" for e in entry_points(group=cli.COMMANDS_GROUP)):
        pytest.fail("vfnic is not installed (pip install -e .): its vfnic.commands entry points are not registered")


@pytest.mark.usefixtures("installed")
@pytest.mark.parametrize("argv,message", [
    (["up", "--kernel", "bookworm"], "unknown kernel 'bookworm'"),
    (["up", "--module", "/nonexistent/hfi1.ko"], "module /nonexistent/hfi1.ko does not exist"),
    (["up", "--guests", "5"], "--guests 5: 1 or 2"),
    (["exec", "guest0", "--", "true"], "no fabric 'default' is up"),
    (["exec", "guest0"], "no command given"),
    (["cp", "a", "b"], "exactly one of SRC and DST"),
])
def test_bad_input_gets_one_line_and_status_2(argv, message, tmp_path):
    result = vfnic(*argv, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


@pytest.mark.usefixtures("installed")
def test_a_module_that_is_not_a_module_is_refused_with_status_2(tmp_path):
    text = tmp_path / "hfi1.ko"
    text.write_text("not a module")
    with pytest.raises(cli.UsageError, match="not an ELF file"):
        commands.run_up(SimpleNamespace(**vars(commands_parser().parse_args(["up", "--module", str(text)]))))
    assert cli.main(["up", "--module", str(text)]) == 2


def commands_parser():
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    for register in (commands.register_up, commands.register_down, commands.register_exec, commands.register_cp,
                     commands.register_console, commands.register_status):
        register(sub)
    return parser


def test_installed_commands_come_from_entry_points_and_a_broken_one_is_left_out(monkeypatch, capsys):
    def broken(sub):
        raise RuntimeError("boom")

    entries = [SimpleNamespace(name="up", value="images.lab.commands:register_up", load=lambda: commands.register_up),
               SimpleNamespace(name="bad", value="x:y", load=lambda: broken)]
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: entries if group == cli.COMMANDS_GROUP else [])
    parser = cli._parser()
    assert parser.parse_args(["up", "--guests", "1"]).run is commands.run_up
    assert "command 'bad' (x:y) cannot be loaded: boom" in capsys.readouterr().err


def test_the_transport_names_no_lab_command():
    source = Path(cli.__file__).read_text()
    assert "images" not in source.replace("images/lab/commands.py", "")


# -- state, processes ---------------------------------------------------------------

def test_a_recorded_process_is_stopped_by_pid_but_not_a_pid_reused_by_another(tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        state_dir = StateDir("t")
        real = Recorded.of(sleeper.pid, "sleep")
        impostor = Recorded(sleeper.pid, real.started + 1, "reused PID")
        assert real.alive() and not impostor.alive()
        state_dir.write({"owner": Recorded.of(999999999, "vfnic up").as_json(),
                         "processes": [impostor.as_json()]})
        assert state_dir.running() is None  # its owner is gone
        assert state_dir.reap() == [] and sleeper.poll() is None
        agent_dir = tmp_path / "vfnic-vm-x"
        agent_dir.mkdir()
        (agent_dir / "agent.sock").write_text("")
        state_dir.write({"processes": [real.as_json()], "directories": [str(agent_dir), str(tmp_path)]})
        (state_dir.path / "hfi1-0.sock").write_text("")
        assert [p.what for p in state_dir.reap()] == ["sleep"]
        assert sleeper.wait(5) == -signal.SIGTERM
        assert not state_dir.path.exists() and not agent_dir.exists()
        assert tmp_path.exists()  # only directories named as Guest.start names them
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_half_written_state_is_read_as_nothing_running(run_dir):
    state_dir = StateDir("t")
    state_dir.path.mkdir(parents=True)
    state_dir.state_file.write_text('{"own')
    assert state_dir.read() == {} and state_dir.running() is None


def test_the_state_root_follows_the_environment(monkeypatch, tmp_path):
    from images.lab.up import run_root
    monkeypatch.delenv("VFNIC_RUN_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert run_root() == tmp_path / "xdg/vfnic"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert run_root() == tmp_path / "cache/run"


# -- the lab socket and the commands on it ---------------------------------------------

@pytest.fixture
def fake_fabric():
    """A lab socket owned by this process, answering as `up` would."""
    state_dir = StateDir("default")
    files: dict[str, bytes] = {}
    state = {"name": "default", "owner": Recorded.of(os.getpid(), "test").as_json(), "phase": "ready",
             "guests": [{"name": "guest0", "address": "10.77.0.1", "device": "opap1s0", "port_state": "4: ACTIVE",
                         "console_log": str(state_dir.path / "console.log")}],
             "control_socket": "/x/control.sock", "logs": "/x/logs", "kernel": RELEASE, "seconds_to_ready": 31.0}

    def handle(header, payload):
        if header["op"] == "exec":
            rc = 0 if header["command"] == "cat /f" else 3
            return {"rc": rc, "timed_out": header["command"] == "sleep 9", "stdout": 4}, b"out\nerr\n"
        if header["op"] == "put":
            files[header["path"]] = payload
            return {"ok": True}, b""
        if header["op"] == "get":
            if header["path"] not in files:
                raise FileNotFoundError(header["path"])
            return {"ok": True}, files[header["path"]]
        return {"state": state}, b""

    state_dir.write(state)
    (state_dir.path / "console.log").write_bytes(b"vfnic-init: devices settled\n")
    lab = LabSocket(state_dir.lab_socket, handle).start()
    yield SimpleNamespace(state_dir=state_dir, files=files, state=state)
    lab.close()


def test_exec_passes_output_and_status_through(fake_fabric, capfd):
    parser = commands_parser()
    assert commands.run_exec(parser.parse_args(["exec", "guest0", "--", "cat", "/f"])) == 0
    assert capfd.readouterr() == ("out\n", "err\n")
    assert commands.run_exec(parser.parse_args(["exec", "guest0", "--", "false"])) == 3
    assert commands.run_exec(parser.parse_args(["exec", "guest0", "--", "sleep", "9"])) == 124


def test_cp_moves_files_in_and_out(fake_fabric, tmp_path):
    parser = commands_parser()
    source = tmp_path / "hfi1.ko"
    source.write_bytes(b"\x7fELF...")
    assert commands.run_cp(parser.parse_args(["cp", str(source), "guest0:/tmp/"])) == 0
    assert fake_fabric.files == {"/tmp/hfi1.ko": b"\x7fELF..."}
    out = tmp_path / "back"
    out.mkdir()
    assert commands.run_cp(parser.parse_args(["cp", "guest0:/tmp/hfi1.ko", str(out)])) == 0
    assert (out / "hfi1.ko").read_bytes() == b"\x7fELF..."
    with pytest.raises(UpError, match="No such file|/tmp/none"):
        request(fake_fabric.state_dir, {"op": "get", "guest": "guest0", "path": "/tmp/none"})


def test_console_prints_the_guest_console_and_status_describes_the_fabric(fake_fabric, capsys):
    parser = commands_parser()
    assert commands.run_console(parser.parse_args(["console", "guest0", "--no-follow"])) == 0
    assert "vfnic-init: devices settled" in capsys.readouterr().out
    with pytest.raises(cli.UsageError, match="no guest 'guest7'"):
        commands.run_console(parser.parse_args(["console", "guest7"]))
    assert commands.run_status(parser.parse_args(["status", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["guests"][0]["address"] == "10.77.0.1"
    text = describe(fake_fabric.state)
    assert "vfnic exec guest0 -- CMD" in text and "control socket /x/control.sock" in text


# -- interrupts -------------------------------------------------------------------------

def test_a_signal_inside_a_deferred_block_lands_when_it_ends():
    interrupts = Interrupts().install()
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                reached = True
        assert reached
        interrupts.ignore()
        os.kill(os.getpid(), signal.SIGINT)  # cleaning up: noted, not obeyed
        time.sleep(0.05)
    finally:
        interrupts.restore()


def test_the_pytest_plugin_imports_nothing_of_the_lab_until_its_fixture_is_used():
    code = ("import sys, testkit.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.startswith(('images', 'emulator', 'devmodel'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])})
    assert out.stdout.strip() == "[]", out


def test_detach_runs_the_same_up_rebuilt_from_the_parsed_arguments_not_from_sys_argv():
    parser = argparse.ArgumentParser()
    commands.register_up(parser.add_subparsers())
    given = parser.parse_args(["up", "-d", "--name", "lab", "--guests", "1", "--kernel", "sid",
                               "--module", "/m/hfi1.ko", "--option=note=-d", "--no-sm", "--trace", "t.jsonl",
                               "--timeout", "90"])
    again = parser.parse_args(commands.up_argv(given))
    assert not again.detach
    assert vars(again) | {"detach": True} == vars(given), "a value that reads -d stays a value"
