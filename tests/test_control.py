"""The control socket of a running `vfnic serve`, driven by `vfnic ctl` as an
operator drives it: query, faults, link down and up, capture, bad commands."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from emulator import control
from images.lab.wait import wait_until


def ctl(path, *args):
    return subprocess.run([sys.executable, "-m", "emulator.cli", "ctl", path, *args], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture(scope="module")
def fabric(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("control")
    a, b, c = (str(tmp / name) for name in ("a.sock", "b.sock", "c.sock"))
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "hfi1", "--socket", a,
                             "--socket", b, "--control", c], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: os.path.exists(c) or proc.poll() is not None, 20.0, "the control socket to appear")
    assert proc.poll() is None, proc.stderr.read()
    yield c, tmp
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert not os.path.exists(c), "the control socket is removed on exit"


def test_query_prints_both_devices_their_ports_and_the_link_between_them(fabric):
    path, _ = fabric
    result = ctl(path, "query")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    devices, links = reply["devices"], reply["links"]
    assert [d["device"] for d in devices] == ["hfi1", "hfi1"]
    ports = [d["ports"][0] for d in devices]
    assert [p["name"] for p in ports] == ["hfi1_0", "hfi1_1"] and ports[0]["guid"] != ports[1]["guid"]
    assert [p["link"] for p in ports] == ["hfi1_0<->hfi1_1"] * 2
    assert len(links) == 1 and links[0]["ends"] == ["hfi1_0", "hfi1_1"] and links[0]["state"] == "down"
    assert links[0]["hfi1_0->hfi1_1"]["packets"] == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_an_unknown_command_exits_non_zero_with_one_line_and_the_server_still_answers(fabric):
    path, _ = fabric
    result = ctl(path, "reboot-the-world")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "unknown command 'reboot-the-world'" in result.stderr
    assert ctl(path, "query").returncode == 0


@pytest.mark.parametrize("args,message", [
    (["fault-set", "link=0", "from=hfi1_0", "kind=melt", "rate=0.1"], "unknown fault 'melt'"),
    (["fault-set", "link=0", "from=hfi1_0", "kind=drop"], "needs a rate or a count"),
    (["fault-set", "link=0", "from=hfi1_9", "kind=drop", "rate=0.1"], "no end named 'hfi1_9'"),
    (["fault-set", "link=7", "from=hfi1_0", "kind=drop", "rate=0.1"], "no link 7 (links: 0: hfi1_0<->hfi1_1)"),
    (["fault-set", "link=0", "from=hfi1_0", "kind=drop", "rate=lots"], "rate must be a number"),
    (["fault-set", "link=0", "kind=drop"], "fault-set needs from"),
    (["link-down", "link=0", "colour=red"], "link-down takes no argument colour"),
    (["capture-start", "link=0", "file=/no/such/dir/x.pcap"], "capture directory /no/such/dir does not exist"),
    (["capture-stop", "link=0"], "is not being captured"),
    (["query", "oops"], "is not KEY=VALUE"),
    (["tune", "option=pio-launch=socket"], "hfi1 option pio-launch takes engine or inline, not 'socket'"),
    (["tune", "option=icode=simulator"], "hfi1 has no option 'icode' that changes while serving"),
    (["tune", "option=inline"], "option must be KEY=VALUE"),
])
def test_bad_arguments_get_an_error_naming_the_problem(fabric, args, message):
    path, _ = fabric
    result = ctl(path, *args)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_a_fault_shows_in_the_links_description_and_clears(fabric):
    path, _ = fabric
    result = ctl(path, "fault-set", "link=hfi1_0<->hfi1_1", "from=hfi1_0", "kind=drop", "rate=0.01", "seed=5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["hfi1_0"] == [{"kind": "drop", "seed": 5, "injected": 0, "rate": 0.01}]
    link = json.loads(ctl(path, "query").stdout)["links"][0]
    assert link["faults"]["hfi1_0"][0]["rate"] == 0.01 and link["faults"]["hfi1_1"] == []
    assert json.loads(ctl(path, "fault-clear", "link=0").stdout) == {"hfi1_0": [], "hfi1_1": []}


def test_link_down_and_up_and_a_capture_over_the_socket(fabric):
    path, tmp = fabric
    down = json.loads(ctl(path, "link-down", "link=0").stdout)
    assert down["taken_down"] and down["downs_injected"] == 1
    assert not json.loads(ctl(path, "link-up", "link=0").stdout)["taken_down"]
    pcap = str(tmp / "ab.pcap")
    assert json.loads(ctl(path, "capture-start", "link=0", f"file={pcap}").stdout)["active"]
    assert "already captured" in ctl(path, "capture-start", "link=0", f"file={pcap}").stderr
    stopped = json.loads(ctl(path, "capture-stop", "link=0").stdout)
    assert stopped == {"file": pcap, "packets": 0, "bytes": 0, "active": False}
    assert os.path.getsize(pcap) == 24, "a pcap file header and no packets"


def test_stats_and_help(fabric):
    path, _ = fabric
    stats = json.loads(ctl(path, "stats").stdout)
    assert len(stats) == 2 and all("undeclared_csr_accesses" in s for s in stats.values())
    commands = json.loads(ctl(path, "help").stdout)
    assert commands["fault-set"]["arguments"] == ["link", "from", "kind"]


def test_tune_sets_a_runtime_device_option_on_every_served_device(fabric):
    path, _ = fabric
    result = ctl(path, "tune", "option=pio-launch=inline")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["options"] == {"pio-launch": "inline"}
    try:
        stats = json.loads(ctl(path, "stats").stdout)
        assert [s["pio"]["launch"] for s in stats.values()] == ["inline", "inline"]
    finally:
        assert ctl(path, "tune", "option=pio-launch=engine").returncode == 0
    stats = json.loads(ctl(path, "stats").stdout)
    assert [s["pio"]["launch"] for s in stats.values()] == ["engine", "engine"]


def test_malformed_lines_get_an_error_and_the_connection_goes_on(fabric):
    import socket
    path, _ = fabric
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        reader = sock.makefile("rb")
        assert "vfnic" in json.loads(reader.readline())
        sock.sendall(b"{not json\n[1, 2]\n" + json.dumps({"execute": "query"}).encode() + b"\n")
        replies = [json.loads(reader.readline()) for _ in range(3)]
    assert replies[0]["error"]["desc"].startswith("not JSON")
    assert "a request is" in replies[1]["error"]["desc"]
    assert "devices" in replies[2]["return"]


def test_the_request_helper_reports_a_missing_socket(tmp_path):
    with pytest.raises(OSError):
        control.request(str(tmp_path / "nothing.sock"), "query")


def test_query_shows_whether_each_device_has_a_running_client(fabric):
    from testkit.client import Client
    path, tmp = fabric
    with Client(str(tmp / "a.sock")) as client:
        client.connect()
        states = [d["state"] for d in json.loads(ctl(path, "query").stdout)["devices"]]
        assert states == ["running", "listening"]
