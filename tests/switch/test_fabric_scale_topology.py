"""benchmarks/fabric_scale's fabrics: each is a topology `vfnic serve`
accepts, serves every node asked for, and has no switch opafm would refuse
(more than 64 ports)."""
from __future__ import annotations

import pytest

from benchmarks.fabric_scale import edges_of, topology
from devmodel.fabric.topology import read_topology

OPAFM_MAX_SWITCH_PORTS = 64


@pytest.mark.parametrize("simulated", [0, 6, 62, 254])
def test_each_benchmark_fabric_is_a_valid_topology_opafm_can_sweep(tmp_path, simulated):
    path = tmp_path / "fabric.toml"
    path.write_text(topology([tmp_path / "a.sock", tmp_path / "b.sock"], simulated))
    fabric = read_topology(str(path))
    assert len(fabric.hfis) == 2
    assert len(fabric.simulated) == simulated
    assert len(fabric.switches) == edges_of(simulated) + 1
    assert all(switch.ports <= OPAFM_MAX_SWITCH_PORTS for switch in fabric.switches)
