"""Topology files (`vfnic serve --topology`, docs/topology.md): what a file
says resolves to nodes and cables, and every mistake is refused in one line
that names it."""
from __future__ import annotations

from pathlib import Path

import pytest

from devmodel.fabric.topology import (
    Endpoint,
    HfiSpec,
    SwitchSpec,
    TopologyError,
    edge_switch,
    parse_topology,
    read_topology,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "docs" / "topologies").glob("*.toml"))

TWO_EDGES = """
[switches]
edge1 = { ports = 8 }
edge2 = { ports = 8 }

[hfis]
hfi-a = "a.sock"
hfi-b = { socket = "/run/vfnic/b.sock" }

[[simulated]]
prefix = "sim"
count = 3
switch = "edge2"

[cables]
"edge1/1" = "hfi-a"
"hfi-b" = "edge2/1"
"edge1/8" = "edge2/8"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fabric.toml"
    path.write_text(text)
    return path


def e(text: str) -> Endpoint:
    node, _, port = text.partition("/")
    return Endpoint(node, int(port or 1))


def test_a_file_resolves_into_nodes_and_cables_simulated_hfis_on_the_lowest_free_ports(tmp_path):
    topology = read_topology(write(tmp_path, TWO_EDGES))
    assert topology.switches == (SwitchSpec("edge1", 8), SwitchSpec("edge2", 8))
    assert topology.hfis == (HfiSpec("hfi-a", str(tmp_path / "a.sock")), HfiSpec("hfi-b", "/run/vfnic/b.sock"))
    assert topology.simulated == ("sim0", "sim1", "sim2")
    assert topology.cables == (
        (e("edge1/1"), e("hfi-a")), (e("hfi-b"), e("edge2/1")), (e("edge1/8"), e("edge2/8")),
        (e("sim0"), e("edge2/2")), (e("sim1"), e("edge2/3")), (e("sim2"), e("edge2/4")))
    assert topology.describe() == "2 switch(es), 2 served HFI(s), 3 simulated HFI(s), 6 cable(s)"


def test_cables_may_be_a_list_of_pairs_and_simulated_hfis_may_start_at_a_port():
    topology = parse_topology({
        "switches": {"s": {"ports": 10}},
        "simulated": [{"prefix": "n", "count": 2, "switch": "s", "first_port": 5}, {"prefix": "m", "count": 1}],
        "cables": [["s/1", "m0/1"]]})
    assert topology.cables == ((e("s/1"), e("m0")), (e("n0"), e("s/5")), (e("n1"), e("s/6")))


def test_a_node_may_have_no_cable():
    topology = parse_topology({"switches": {"s": {"ports": 2}}, "hfis": {"lone": "/x.sock"}})
    assert topology.cables == () and topology.kind("lone") == "HFI"


def test_serve_switch_is_the_one_switch_topology():
    topology = edge_switch(["/a", "/b", "/c"])
    assert topology.switches == (SwitchSpec("sw0", 7),)
    assert [h.name for h in topology.hfis] == ["hfi1_0", "hfi1_1", "hfi1_2"]
    assert topology.cables == ((e("hfi1_0"), e("sw0/1")), (e("hfi1_1"), e("sw0/2")), (e("hfi1_2"), e("sw0/3")))
    assert [h.name for h in edge_switch(["/a"], 2).hfis] == ["hfi1"]


@pytest.mark.parametrize("text,message", [
    ("[switches\n", "not TOML: Expected ']' at the end of a table declaration (at line 1, column 10)"),
    ("[switchs]\n", "the topology has no section 'switchs' (sections: switches, hfis, simulated, cables)"),
    ("switches = 3\n", "switches is a table ([switches])"),
    ("[switches]\ne1 = {}\n", "switch e1 needs its port count (e1 = { ports = N })"),
    ("[switches]\ne1 = { ports = 0 }\n", "switch e1's ports is a whole number 1..254, not 0"),
    ("[switches]\ne1 = { ports = 255 }\n", "switch e1's ports is a whole number 1..254, not 255"),
    ("[switches]\ne1 = { ports = true }\n", "switch e1's ports is a whole number 1..254, not True"),
    ("[switches]\ne1 = { ports = 4, colour = 'red' }\n", "switch e1 has no key 'colour' (keys: ports)"),
    ("[switches]\n'e/1' = { ports = 4 }\n", "switch name 'e/1': letters, digits"),
    ("[hfis]\na = 3\n", "HFI a needs its socket path (a = \"PATH\" or { socket = \"PATH\" })"),
    ("[hfis]\na = '/x.sock'\nb = '/x.sock'\n", "HFIs a and b are both served on /x.sock"),
    ("[switches]\na = { ports = 2 }\n[hfis]\na = '/x.sock'\n", "the name 'a' is given twice (a switch and an HFI)"),
    ("[hfis]\nsim1 = '/x.sock'\n[[simulated]]\nprefix = 'sim'\ncount = 2\n",
     "the name 'sim1' is given twice (an HFI and a simulated HFI)"),
    ("[[simulated]]\nprefix = 'sim'\n", "simulated group 1 needs a prefix and a count"),
    ("[[simulated]]\nprefix = 'sim'\ncount = 0\n", "simulated group 1's count is a whole number 1..4096, not 0"),
    ("[[simulated]]\nprefix = 'sim'\ncount = 2\nswitch = 'nope'\n", "simulated sim0..: no switch named 'nope'"),
    ("[[simulated]]\nprefix = 'sim'\ncount = 2\nfirst_port = 3\n", "simulated group 1 has a first_port but no switch"),
    ("[switches]\ns = { ports = 4 }\n[[simulated]]\nprefix = 'sim'\ncount = 5\nswitch = 's'\n",
     "simulated sim0..sim4: 5 HFIs, but s has 4 free port(s)"),
    ("[switches]\ns = { ports = 4 }\n[[simulated]]\nprefix = 'sim'\ncount = 2\nswitch = 's'\nfirst_port = 4\n",
     "simulated sim0..sim1: s has ports 1..4, not 4..5"),
    ("[switches]\ns = { ports = 4 }\n[hfis]\na = '/a'\n[[simulated]]\nprefix = 'sim'\ncount = 2\nswitch = 's'\n"
     "first_port = 1\n[cables]\n'a' = 's/2'\n", "simulated sim0..sim1: s/2 is already cabled to a/1"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/1' = 'x'\n", "cable end 'x': no switch or HFI named 'x'"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/5' = 's/1'\n", "cable end 's/5': s has ports 1..4"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/0' = 's/1'\n", "cable end 's/0': s has ports 1..4"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's' = 's/1'\n", "cable end 's': s is a switch, say which port (s/N)"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/x' = 's/1'\n", "cable end 's/x': the port is a number"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/1' = 's/1'\n", "s/1 is cabled to itself"),
    ("[switches]\ns = { ports = 4 }\n[hfis]\na = '/a'\nb = '/b'\n[cables]\n's/1' = 'a'\n'b' = 's/1'\n",
     "s/1 is cabled twice (to a/1 and to b/1)"),
    ("[switches]\ns = { ports = 4 }\n[hfis]\na = '/a'\n[cables]\n'a/2' = 's/1'\n",
     "cable end 'a/2': a is an HFI, its one port is 1"),
    ("cables = [['s/1']]\n[switches]\ns = { ports = 4 }\n", "a cable is [\"END\", \"END\"], not ['s/1']"),
    ("[switches]\ns = { ports = 4 }\ncables = [['s/1', 's/2']]\n",
     "[switches] has an entry 'cables': a top-level `cables = ...` goes before the first [table] header"),
    ("cables = 'a-b'\n", "cables is a table"),
    ("cables = [{ from = 's/4', listen = '0.0.0.0:7000' }]\n[switches]\ns = { ports = 4 }\n",
     "the cable from s/4 to listen '0.0.0.0:7000': cables to another process are reserved in the topology format"),
    ("[switches]\ns = { ports = 4 }\n[cables]\n's/4' = { connect = 'peer:7000' }\n",
     "the cable from s/4 to connect 'peer:7000': cables to another process are reserved"),
])
def test_a_mistake_is_refused_in_one_line_naming_the_file_and_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as error:
        read_topology(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value), str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(TopologyError, match=r"^cannot read the topology .*/nope.toml: No such file or directory$"):
        read_topology(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
    with pytest.raises(TopologyError, match=r"bin.toml: not UTF-8 text"):
        read_topology(tmp_path / "bin.toml")


def test_the_documented_examples_read():
    names = {path.name for path in EXAMPLES}
    assert {"one-edge.toml", "two-edges.toml", "edges-and-core.toml", "two-tier-62.toml"} <= names, names
    shapes = {path.name: read_topology(path) for path in EXAMPLES}
    assert len(shapes["two-tier-62.toml"].simulated) == 62 and len(shapes["two-tier-62.toml"].hfis) == 2
    assert len(shapes["edges-and-core.toml"].switches) == 3
