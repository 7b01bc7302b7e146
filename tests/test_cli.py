"""`vfnic serve` as a user runs it: bad arguments, signals, the socket's life."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from emulator.control import request
from emulator.trace import read_trace
from images.lab.wait import wait_until
from testkit.client import Client


def vfnic(*args, **kw):
    return subprocess.run([sys.executable, "-m", "emulator.cli", *args], capture_output=True, text=True, timeout=30, **kw)


@pytest.mark.parametrize("args,message", [
    (["serve", "--device", "nic9000", "--socket", "x.sock"], "unknown device 'nic9000'"),
    (["serve", "--device", "testdev", "--socket", "/no/such/dir/x.sock"], "socket directory /no/such/dir does not exist"),
    (["serve", "--device", "testdev"], "required: --socket"),
    (["launch"], "invalid choice"),
    (["serve", "--device", "hfi1", "--socket", "x.sock", "--option", "colour=blue"], "hfi1 has no option 'colour'"),
    (["serve", "--device", "hfi1", "--socket", "x.sock", "--option", "link-partner=maybe"],
     "link-partner takes present or none"),
    (["serve", "--device", "hfi1", "--socket", "x.sock", "--option", "icode=fpga"],
     "icode takes silicon or simulator"),
    (["firmware"], "required: --output"),
    (["serve", "--device", "hfi1", "--socket", "x.sock", "--switch", "--option", "link-partner=none"],
     "link-partner=none does not apply on a switch"),
    (["serve", "--device", "testdev", "--socket", "x.sock", "--switch"], "testdev cannot be cabled to a switch"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--socket", "b.sock", "--switch", "1"],
     "a switch of 1 ports cannot take 2 devices"),
    (["serve", "--device", "hfi1", "--switch", "300", "--socket", "a.sock"],
     "switch sw0's ports is a whole number 1..254, not 300"),
    (["serve", "--device", "hfi1"], "the following arguments are required: --socket (or --topology)"),
    (["serve", "--device", "hfi1", "--topology", "nope.toml"], "cannot read the topology nope.toml: No such file"),
    (["serve", "--device", "hfi1", "--topology", "t.toml", "--socket", "a.sock"],
     "--topology names the sockets and switches itself: no --socket or --switch with it"),
    (["serve", "--device", "hfi1", "--topology", "t.toml", "--cable-listen", "127.0.0.1:0"],
     "--cable-listen and --topology: the topology file cables its own ports"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--cable-listen", "h:1", "--cable-connect", "h:2"],
     "not allowed with argument --cable-listen"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--socket", "b.sock", "--cable-connect", "h:1"],
     "--cable-connect cables one device: give one --socket, not 2"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--switch", "--cable-listen", "h:1"],
     "--cable-listen and --switch"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--cable-connect", "10.77.0.1"],
     "--cable-connect: '10.77.0.1' is not HOST:PORT"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--cable-connect", "h:0"], "port 0 is outside 1..65535"),
    (["serve", "--device", "testdev", "--socket", "a.sock", "--cable-listen", "127.0.0.1:0"],
     "testdev has no port to cable to another vfnic serve"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--cable-listen", "127.0.0.1:0", "--option",
      "link-partner=none"], "link-partner=none does not apply to a remote cable"),
    (["serve", "--device", "hfi1", "--socket", "a.sock", "--cable-listen", "192.0.2.1:7470"],
     "--cable-listen 192.0.2.1:7470: Cannot assign requested address"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    (tmp_path / "t.toml").write_text('[hfis]\na = "a.sock"\n')
    result = vfnic(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


@pytest.fixture
def running(tmp_path):
    sock = str(tmp_path / "x.sock")
    stats = str(tmp_path / "stats.json")
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "testdev", "--socket", sock,
                             "--stats", stats], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 10.0, "the socket to appear")
    yield proc, sock, stats
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_serve_help_lists_each_device_option_with_its_default_first():
    out = vfnic("serve", "--help").stdout
    assert "hfi1 icode=silicon|simulator" in out and "hfi1 link-partner=present|none" in out
    assert "vfnic firmware" in out, "the firmware step silicon mode needs"


def test_a_socket_already_served_is_refused(running):
    _, sock, _ = running
    result = vfnic("serve", "--device", "testdev", "--socket", sock)
    assert result.returncode == 2 and "already being served" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_server_and_remove_its_socket(running, sig):
    proc, sock, stats = running
    with Client(sock) as client:
        client.connect()
        client.write64(0, 8, 1)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
    assert not os.path.exists(sock)
    assert '"clients": 1' in open(stats).read()


def test_a_stale_socket_file_is_replaced(tmp_path):
    import socket
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "testdev", "--socket", path],
                            stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _listening(path), 10.0, "the server to listen on the stale path")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _listening(path):
    import socket
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_the_mmio_trace_names_each_register_the_driver_touches(tmp_path):
    from devmodel.hfi1 import chip_registers as cr
    sock, trace = str(tmp_path / "h.sock"), tmp_path / "mmio.trace"
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "hfi1", "--socket", sock,
                             "--trace", str(trace)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(sock) or proc.poll() is not None, 20.0, "the socket to appear")
        with Client(sock) as client:
            client.connect()
            revision = client.read64(0, cr.CCE_REVISION2)
            client.write64(0, cr.CCE_SCRATCH, 0x1234)
            client.read(0, cr.CCE_SCRATCH + 4, 4)
            client.write64(0, 0x2000000, 7)  # a PIO store
            client.read64(0, 0x58)  # nothing declared there
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    accesses = read_trace(trace)
    assert [(a.op, a.register, a.value) for a in accesses[:3]] == [
        ("R", "CCE_REVISION2", revision), ("W", "CCE_SCRATCH[0]", 0x1234), ("R", "CCE_SCRATCH[0]+0x4", 0)]
    assert accesses[0].device == "hfi1" and accesses[0].time >= 0
    assert accesses[3].register == "PIO_SEND_BUFFER[0]+0x0" and accesses[4].register.startswith("undeclared:")
    assert json.loads(trace.read_text().splitlines()[2]) == {
        "t": accesses[1].time, "device": "hfi1", "op": "W", "bar": 0, "offset": f"{cr.CCE_SCRATCH:#08x}", "size": 8,
        "register": "CCE_SCRATCH[0]", "value": "0x0000000000001234"}


def test_serve_switch_cables_every_hfi_to_one_switch_that_query_and_stats_show(tmp_path):
    """`--switch`: three HFIs on one edge switch (3 + 4 spare ports); with no
    driver the HFIs' ports stay down, so the switch's do too, and nothing failed."""
    sockets = [str(tmp_path / f"h{i}.sock") for i in range(3)]
    control, stats = str(tmp_path / "c.sock"), tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "hfi1",
                             *[a for s in sockets for a in ("--socket", s)], "--switch", "--control", control,
                             "--stats", str(stats)], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(control) or proc.poll() is not None, 20.0, "the control socket")
        query = json.loads(vfnic("ctl", control, "query").stdout)
        (switch,) = query["switches"]
        assert switch["name"] == "sw0" and switch["num_ports"] == 7 and switch["internal_errors"] == 0
        assert [p["link"] for p in switch["ports"]] == [f"hfi1_{i}<->sw0.p{i + 1}" for i in range(3)] + [None] * 4
        assert {p["state"] for p in switch["ports"]} == {"DOWN"}
        assert [link["name"] for link in query["links"]] == [f"hfi1_{i}<->sw0.p{i + 1}" for i in range(3)]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    written = json.loads(stats.read_text())
    assert set(written) == {*sockets, "sw0 (switch)"} and written["sw0 (switch)"]["drops"] == {}


@pytest.mark.parametrize("text,message", [
    ("[switches\n", "t.toml: not TOML: Expected ']' at the end of a table declaration (at line 1, column 10)"),
    ("[switches]\ne = { ports = 4 }\n", "t.toml: it serves no HFI ([hfis] names none)"),
    ("[switches]\ne = { ports = 4 }\n[hfis]\na = 'a.sock'\n[cables]\n'a' = 'e/5'\n",
     "t.toml: cable end 'e/5': e has ports 1..4"),
])
def test_a_bad_topology_file_exits_2_with_one_line(tmp_path, text, message):
    (tmp_path / "t.toml").write_text(text)
    result = vfnic("serve", "--device", "hfi1", "--topology", "t.toml", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "a.sock").exists()


TWO_EDGES = """
[switches]
edge1 = { ports = 4 }
edge2 = { ports = 4 }

[hfis]
hfi-a = "a.sock"
hfi-b = "b.sock"

[[simulated]]
prefix = "sim"
count = 2
switch = "edge2"

[cables]
"hfi-a" = "edge1/1"
"hfi-b" = "edge2/1"
"edge1/4" = "edge2/4"
"""


def test_serve_topology_serves_its_sockets_and_query_shows_every_node_port_and_cable(tmp_path):
    """Two edge switches linked directly, an HFI on each (no driver: their
    ports stay down), two simulated HFIs on edge2: the cables between
    switches and to the simulated HFIs train on their own."""
    (tmp_path / "fabric.toml").write_text(TWO_EDGES)
    control, stats = str(tmp_path / "c.sock"), tmp_path / "stats.json"
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "hfi1", "--topology",
                             str(tmp_path / "fabric.toml"), "--control", control, "--stats", str(stats)],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.exists(control) or proc.poll() is not None, 20.0, "the control socket")
        assert (tmp_path / "a.sock").exists() and (tmp_path / "b.sock").exists(), "relative to the file"

        def trained() -> dict | None:  # the engine thread trains the cables as the server starts
            query = json.loads(vfnic("ctl", control, "query").stdout)
            return query if query["summary"]["cabled_ports"].get("INIT") == 6 else None
        query = wait_until(trained, 20.0, "the cables between switches and to the simulated HFIs to train")
        nodes = {node["name"]: node for node in query["nodes"]}
        assert [(n["name"], n["kind"]) for n in query["nodes"]] == [
            ("hfi-a", "hfi1"), ("hfi-b", "hfi1"), ("edge1", "switch"), ("edge2", "switch"),
            ("sim0", "simulated HFI"), ("sim1", "simulated HFI")]
        assert nodes["hfi-a"]["socket"] == str(tmp_path / "a.sock") and nodes["hfi-a"]["ports"][0]["peer"] == "edge1.p1"
        assert [(p["state"], p["peer"]) for p in nodes["edge2"]["ports"]] == [
            ("DOWN", "hfi-b"), ("INIT", "sim0"), ("INIT", "sim1"), ("INIT", "edge1.p4")]
        assert nodes["sim1"]["ports"][0]["state"] == "INIT" and nodes["sim1"]["ports"][0]["counters"]["link_downed"] == 0
        assert query["summary"] == {"nodes": {"hfi1": 2, "switch": 2, "simulated HFI": 2},
                                    "cabled_ports": {"DOWN": 4, "INIT": 6}, "links": 5, "links_up": 3}
        assert [s["name"] for s in query["switches"]] == ["edge1", "edge2"]
        assert [link["name"] for link in query["links"]] == [
            "hfi-a<->edge1.p1", "hfi-b<->edge2.p1", "edge1.p4<->edge2.p4", "sim0<->edge2.p2", "sim1<->edge2.p3"]
        down = json.loads(vfnic("ctl", control, "link-down", "link=edge1.p4<->edge2.p4").stdout)
        assert down["taken_down"], "a link between switches takes the link commands too"
        assert json.loads(vfnic("ctl", control, "query").stdout)["summary"]["links_up"] == 2
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    written = json.loads(stats.read_text())
    assert set(written) == {str(tmp_path / "a.sock"), str(tmp_path / "b.sock"), "edge1 (switch)", "edge2 (switch)",
                            "sim0 (simulated HFI)", "sim1 (simulated HFI)"}
    assert written["sim0 (simulated HFI)"]["internal_errors"] == 0


def serve_cabled(tmp_path, name, role, address):
    sock, control = str(tmp_path / f"{name}.sock"), str(tmp_path / f"{name}-c.sock")
    proc = subprocess.Popen([sys.executable, "-m", "emulator.cli", "serve", "--device", "hfi1", "--socket", sock,
                             f"--cable-{role}", address, "--control", control], stderr=subprocess.PIPE, text=True)
    wait_until(lambda: os.path.exists(control) or proc.poll() is not None, 20.0, f"{name}'s control socket")
    assert proc.poll() is None, proc.stderr.read()
    return proc, control


def query(control):
    return request(control, "query")["return"]


def remote(control):
    (link,) = query(control)["links"]
    return link


def test_two_serves_cable_their_hfis_over_tcp_and_the_connector_comes_back_after_a_restart(tmp_path):
    """Without drivers the ports stay down, but the cable's stream is up:
    hellos crossed, each side names the other's port; the listener's
    restart breaks it and the connecting side connects again by itself."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free a moment ago
    address = f"127.0.0.1:{port}"
    procs = []
    try:
        procs.append(serve_cabled(tmp_path, "a", "listen", address))
        procs.append(serve_cabled(tmp_path, "b", "connect", address))
        (a, a_control), (b, b_control) = procs
        wait_until(lambda: remote(b_control)["remote"]["stream"] == "connected", 20.0, "b's cable to connect")
        link = remote(a_control)
        assert link["name"] == "hfi1<->remote" and link["state"] == "down" and link["remote"]["peer_name"] == "hfi1"
        assert link["remote"]["transport"] == {"role": "listen", "address": address, "accepted": 1}
        a_guid = query(a_control)["devices"][0]["ports"][0]["guid"]
        b_guid = query(b_control)["devices"][0]["ports"][0]["guid"]
        assert (a_guid, b_guid) == ("0x0011750000000001", "0x0011750000000002"), "a back-to-back pair's GUIDs"
        a.terminate()
        assert a.wait(timeout=10) == 0
        wait_until(lambda: remote(b_control)["remote"]["breaks"] == 1, 20.0, "b to see the stream break")
        procs[0] = serve_cabled(tmp_path, "a", "listen", address)
        wait_until(lambda: remote(b_control)["remote"]["connects"] == 2, 20.0, "b to connect again")
    finally:
        for proc, _ in procs:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
    assert "cable listen" in procs[0][0].stderr.read()
