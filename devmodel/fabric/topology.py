"""A fabric described by a topology: switches, served HFIs, simulated HFIs and the cables between them.

    topology file (TOML, docs/topology.md)          build_fabric(topology, served)
    [switches]  edge1 = { ports = 36 }      --->    Switch("edge1", GUID_SWITCH + k << 12, 36)
    [hfis]      hfi-a = "/tmp/a.sock"       --->    served.make(0, "hfi-a", worker)  (a PCI function)
    [[simulated]] prefix, count, switch     --->    SimulatedHfi("sim0" ...)  on the switch's free ports
    [cables]    "edge1/1" = "hfi-a"         --->    cable(hfi-a's port, edge1.ports[1])
                "edge1/36" = "edge2/36"     --->    cable(edge1.ports[36], edge2.ports[36])

        hfi-a --- edge1 p1       p36 ============= p36 edge2 p1 --- hfi-b
                  edge1 p2..p32 --- sim0..sim30     edge2 p2..p32 --- simb0..simb30

`parse_topology` checks a description strictly and resolves it into a
`Topology` (every simulated HFI named, every cable a pair of `Endpoint`s);
its errors are one line each (`TopologyError`), for `vfnic serve --topology`
to print. `read_topology` adds the file (relative socket paths are the
file's directory's). `edge_switch` is `vfnic serve --switch`: every served
HFI on one switch. `build_fabric` makes the devices and cables them; the
served HFIs come from the device model (`ServedHfis`: a factory and what
the switch ports facing them need), so this module knows no HFI model.

GUIDs (Intel's OUI in 63:40, bits 30-31 clear as opafm wants): served HFIs
keep their model's (hfi1: serial 1, 2, ...); switch k (file order) is
`GUID_SWITCH` + k << 12 (the first is 0x0011750000100000, as under
`--switch`); simulated HFI n (over all groups, in file order) is
`GUID_SIMULATED` + n.

Every node's events run on one scheduler (a ThreadScheduler of its own, or
the caller's ManualScheduler): nothing polls, so an idle fabric costs no
CPU whatever its size (docs/topology.md has the figures).
"""
from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .link import Link

#: switch k's node GUID is GUID_SWITCH + (k << 12); simulated HFI n's is GUID_SIMULATED + n
GUID_SWITCH = 0x0011750000100000
GUID_SIMULATED = 0x0011750000200000
#: ports a switch may have (OPA: 8-bit port numbers; 0 is the management port, 255 reserved)
MAX_SWITCH_PORTS = 254
#: switches in one topology (their GUIDs stay below GUID_SIMULATED)
MAX_SWITCHES = 256
#: simulated HFIs in one topology (LIDs: opafm's default MaxSupportedLID 0xBFFF leaves room for more)
MAX_SIMULATED = 4096
#: ports `edge_switch` gives its switch beyond one per HFI (they stay Down)
SPARE_SWITCH_PORTS = 4

SECTIONS = ("switches", "hfis", "simulated", "cables")
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
SWITCH = "switch"
HFI = "HFI"
SIMULATED = "simulated HFI"


class TopologyError(ValueError):
    """A topology that cannot be built, and why, in one line."""


@dataclass(frozen=True)
class Endpoint:
    """A port of a node: a switch's port 1..N, or an HFI's one port (1)."""

    node: str
    port: int

    def __str__(self) -> str:
        return f"{self.node}/{self.port}"


@dataclass(frozen=True)
class SwitchSpec:
    name: str
    ports: int


@dataclass(frozen=True)
class HfiSpec:
    """An HFI served on a vfio-user socket (a guest's PCI function)."""

    name: str
    socket: str | None


@dataclass(frozen=True)
class Topology:
    """A checked description: what `build_fabric` makes. Nodes in file order."""

    switches: tuple[SwitchSpec, ...]
    hfis: tuple[HfiSpec, ...]
    simulated: tuple[str, ...]
    cables: tuple[tuple[Endpoint, Endpoint], ...]

    @cached_property
    def kinds(self) -> dict[str, str]:
        """Every node's kind (SWITCH, HFI, SIMULATED) by name."""
        return {**{s.name: SWITCH for s in self.switches}, **{h.name: HFI for h in self.hfis},
                **dict.fromkeys(self.simulated, SIMULATED)}

    def kind(self, name: str) -> str | None:
        return self.kinds.get(name)

    def describe(self) -> str:
        """One line: what the fabric holds."""
        return (f"{len(self.switches)} switch(es), {len(self.hfis)} served HFI(s), "
                f"{len(self.simulated)} simulated HFI(s), {len(self.cables)} cable(s)")


# -- reading ---------------------------------------------------------------------------------------
def read_topology(path: str | Path) -> Topology:
    """The topology file at `path`, checked; TopologyError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except OSError as e:
        raise TopologyError(f"cannot read the topology {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise TopologyError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not TOML: {e}") from None
    try:
        return parse_topology(data, base=Path(os.path.abspath(path)).parent)
    except TopologyError as e:
        raise TopologyError(f"{path}: {e}") from None


def parse_topology(data: dict, base: Path | None = None) -> Topology:
    """Check a description (the TOML document as a dict) and resolve it; a
    relative socket path is taken from `base` (the file's directory)."""
    if not isinstance(data, dict):
        raise TopologyError("a topology is a table of sections")
    _known_keys(data, SECTIONS, "section", "the topology")
    switches = _switches(_table(data, "switches"))
    hfis = _hfis(_table(data, "hfis"), base)
    groups = data.get("simulated", [])
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TopologyError("simulated is a list of tables ([[simulated]] prefix = ..., count = ...)")
    simulated_groups = [_simulated_group(i, g) for i, g in enumerate(groups)]
    owner: dict[str, str] = {}
    for kind, names in ((SWITCH, [s.name for s in switches]), (HFI, [h.name for h in hfis]),
                        (SIMULATED, [n for g in simulated_groups for n in g.names])):
        for name in names:
            if name in owner:
                raise TopologyError(f"the name {name!r} is given twice ({_a(owner[name])} and {_a(kind)})")
            owner[name] = kind
    simulated = tuple(n for g in simulated_groups for n in g.names)
    if len(simulated) > MAX_SIMULATED:
        raise TopologyError(f"{len(simulated)} simulated HFIs: at most {MAX_SIMULATED}")
    topology = Topology(tuple(switches), tuple(hfis), simulated, ())
    ports = {s.name: s.ports for s in switches}
    cabled: dict[Endpoint, Endpoint] = {}
    cables = []
    for a_text, b_text in _cable_pairs(data.get("cables", {})):
        a, b = _endpoint(a_text, topology, ports), _endpoint(b_text, topology, ports)
        if a == b:
            raise TopologyError(f"{a} is cabled to itself")
        for end, other in ((a, b), (b, a)):
            if end in cabled:
                raise TopologyError(f"{end} is cabled twice (to {cabled[end]} and to {other})")
            cabled[end] = other
        cables.append((a, b))
    for group in simulated_groups:
        if group.switch is not None:
            cables += _place(group, ports, cabled)
    return Topology(tuple(switches), tuple(hfis), simulated, tuple(cables))


def _a(kind: str) -> str:
    return f"an {kind}" if kind == HFI else f"a {kind}"


def _known_keys(table: dict, known: Iterable[str], what: str, where: str) -> None:
    for key in table:
        if key not in known:
            raise TopologyError(f"{where} has no {what} {key!r} ({what}s: {', '.join(known)})")


def _table(data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise TopologyError(f"{key} is a table ([{key}])")
    return value


def _name(name: object, what: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise TopologyError(f"{what} name {name!r}: letters, digits, '_', '.' and '-' only, not starting with '.' or '-'")
    return name


def _integer(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TopologyError(f"{what} is a whole number {low}..{high}, not {value!r}")
    return value


def _not_a_section(table: str, name: str) -> None:
    """TOML puts `cables = [...]` written after [hfis] into [hfis]: say so."""
    if name in SECTIONS:
        raise TopologyError(f"[{table}] has an entry {name!r}: a top-level `{name} = ...` goes before the first "
                            f"[table] header, or it belongs to that table")


def _switches(table: dict) -> list[SwitchSpec]:
    if len(table) > MAX_SWITCHES:
        raise TopologyError(f"{len(table)} switches: at most {MAX_SWITCHES}")
    switches = []
    for name, spec in table.items():
        _not_a_section("switches", name)
        _name(name, "switch")
        if not isinstance(spec, dict) or "ports" not in spec:
            raise TopologyError(f"switch {name} needs its port count ({name} = {{ ports = N }})")
        _known_keys(spec, ("ports",), "key", f"switch {name}")
        switches.append(SwitchSpec(name, _integer(spec["ports"], f"switch {name}'s ports", 1, MAX_SWITCH_PORTS)))
    return switches


def _hfis(table: dict, base: Path | None) -> list[HfiSpec]:
    hfis, sockets = [], {}
    for name, spec in table.items():
        _not_a_section("hfis", name)
        _name(name, "HFI")
        if isinstance(spec, dict):
            _known_keys(spec, ("socket",), "key", f"HFI {name}")
            spec = spec.get("socket")
        if not isinstance(spec, str) or not spec:
            raise TopologyError(f"HFI {name} needs its socket path ({name} = \"PATH\" or {{ socket = \"PATH\" }})")
        socket = str(base / spec) if base is not None and not Path(spec).is_absolute() else spec
        if socket in sockets:
            raise TopologyError(f"HFIs {sockets[socket]} and {name} are both served on {socket}")
        sockets[socket] = name
        hfis.append(HfiSpec(name, socket))
    return hfis


@dataclass(frozen=True)
class _SimulatedGroup:
    names: tuple[str, ...]
    switch: str | None
    first_port: int | None


def _simulated_group(index: int, spec: dict) -> _SimulatedGroup:
    where = f"simulated group {index + 1}"
    _known_keys(spec, ("prefix", "count", "switch", "first_port"), "key", where)
    if "prefix" not in spec or "count" not in spec:
        raise TopologyError(f"{where} needs a prefix and a count")
    prefix = _name(spec["prefix"], f"{where}'s")
    count = _integer(spec["count"], f"{where}'s count", 1, MAX_SIMULATED)
    switch = spec.get("switch")
    if switch is not None and not isinstance(switch, str):
        raise TopologyError(f"{where}'s switch is a switch's name, not {switch!r}")
    first_port = spec.get("first_port")
    if first_port is not None:
        if switch is None:
            raise TopologyError(f"{where} has a first_port but no switch")
        first_port = _integer(first_port, f"{where}'s first_port", 1, MAX_SWITCH_PORTS)
    return _SimulatedGroup(tuple(f"{prefix}{n}" for n in range(count)), switch, first_port)


def _cable_pairs(cables: object) -> list[tuple[str, str]]:
    """[cables] "a" = "b" lines, or cables = [["a", "b"], ...]; a remote end is refused (reserved)."""
    if isinstance(cables, dict):
        pairs = list(cables.items())
    elif isinstance(cables, list):
        pairs = []
        for item in cables:
            if isinstance(item, dict):
                _remote(item.get("from"), item)
            if not (isinstance(item, list) and len(item) == 2):
                raise TopologyError(f"a cable is [\"END\", \"END\"], not {item!r}")
            pairs.append((item[0], item[1]))
    else:
        raise TopologyError("cables is a table (\"edge1/1\" = \"hfi-a\") or a list of [\"END\", \"END\"] pairs")
    for a, b in pairs:
        if isinstance(b, dict):
            _remote(a, b)
        if not isinstance(a, str) or not isinstance(b, str):
            raise TopologyError(f"a cable joins two ends named as \"switch/port\" or \"hfi\", not {a!r} and {b!r}")
    return pairs


def _remote(end: object, spec: dict) -> None:
    """A cable to another `vfnic serve` (listen/connect over TCP): reserved in the format, not built here."""
    side = next((key for key in ("listen", "connect") if key in spec), None)
    if side is None:
        raise TopologyError(f"a cable from {end!r} needs another end: a node, or listen/connect (reserved), not {spec!r}")
    raise TopologyError(f"the cable from {end} to {side} {spec[side]!r}: cables to another process are reserved "
                        f"in the topology format and not built yet")


def _endpoint(text: str, topology: Topology, ports: dict[str, int]) -> Endpoint:
    node, sep, port_text = text.partition("/")
    kind = topology.kind(node)
    if kind is None:
        raise TopologyError(f"cable end {text!r}: no switch or HFI named {node!r}")
    if kind == SWITCH and not sep:
        raise TopologyError(f"cable end {text!r}: {node} is a switch, say which port ({node}/N)")
    if sep and not port_text.isdigit():
        raise TopologyError(f"cable end {text!r}: the port is a number")
    port = int(port_text) if sep else 1
    if kind == SWITCH and not 1 <= port <= ports[node]:
        raise TopologyError(f"cable end {text!r}: {node} has ports 1..{ports[node]}")
    if kind != SWITCH and port != 1:
        raise TopologyError(f"cable end {text!r}: {node} is an HFI, its one port is 1")
    return Endpoint(node, port)


def _place(group: _SimulatedGroup, ports: dict[str, int], cabled: dict[Endpoint, Endpoint]) -> list:
    """Cable a simulated group to its switch: ports first_port.. in order, or
    the lowest ports no other cable takes."""
    switch = group.switch
    if switch not in ports:
        raise TopologyError(f"simulated {group.names[0]}..: no switch named {switch!r}")
    if group.first_port is not None:
        wanted = [Endpoint(switch, p) for p in range(group.first_port, group.first_port + len(group.names))]
        if wanted[-1].port > ports[switch]:
            raise TopologyError(f"simulated {group.names[0]}..{group.names[-1]}: {switch} has ports 1..{ports[switch]}, "
                                f"not {wanted[0].port}..{wanted[-1].port}")
        taken = next((end for end in wanted if end in cabled), None)
        if taken is not None:
            raise TopologyError(f"simulated {group.names[0]}..{group.names[-1]}: {taken} is already cabled to "
                                f"{cabled[taken]}")
    else:
        free = [Endpoint(switch, p) for p in range(1, ports[switch] + 1) if Endpoint(switch, p) not in cabled]
        if len(free) < len(group.names):
            raise TopologyError(f"simulated {group.names[0]}..{group.names[-1]}: {len(group.names)} HFIs, "
                                f"but {switch} has {len(free)} free port(s)")
        wanted = free[:len(group.names)]
    placed = []
    for name, end in zip(group.names, wanted):
        hfi = Endpoint(name, 1)
        if hfi in cabled:
            raise TopologyError(f"{hfi} is cabled twice (to {cabled[hfi]} and to {end})")
        cabled[end], cabled[hfi] = hfi, end
        placed.append((hfi, end))
    return placed


def edge_switch(sockets: list[str], ports: int = 0, name: str = "sw0") -> Topology:
    """`vfnic serve --switch`: one HFI per socket (hfi1_0, hfi1_1, ...; a lone
    one is hfi1) on port k+1 of one switch of `ports` ports (0: one per HFI
    and SPARE_SWITCH_PORTS more)."""
    ports = ports or len(sockets) + SPARE_SWITCH_PORTS
    if ports < len(sockets):
        raise TopologyError(f"a switch of {ports} ports cannot take {len(sockets)} devices")
    names = [f"hfi1_{i}" if len(sockets) > 1 else "hfi1" for i in range(len(sockets))]
    return parse_topology({"switches": {name: {"ports": ports}},
                           "hfis": dict(zip(names, sockets)),
                           "cables": [[hfi, f"{name}/{k}"] for k, hfi in enumerate(names, start=1)]})


# -- building ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedHfis:
    """What a device model gives the builder for the HFIs it serves:
    `make(index, name, worker)` -> a device whose `ports()[0]` is cabled, and
    whether the switch ports facing them take NeighborNormal at Armed (for an
    HFI that sends no SMA idle messages, docs/switch.md)."""

    make: Callable[[int, str, object], object]
    neighbor_normal_at_armed: bool = False


@dataclass
class BuiltFabric:
    """What `build_fabric` made. `devices` are the served HFIs (PCI
    functions, in topology order, one per `sockets` entry); `nodes` the rest
    (switches, then simulated HFIs: each has name, kind, stats(), status()
    and close()); `links` every cable."""

    topology: Topology
    devices: list
    switches: list
    simulated: list
    links: list[Link] = field(default_factory=list)

    @property
    def nodes(self) -> list:
        return [*self.switches, *self.simulated]

    @property
    def sockets(self) -> list[str | None]:
        return [hfi.socket for hfi in self.topology.hfis]


def build_fabric(topology: Topology, served: ServedHfis | None = None, scheduler=None) -> BuiltFabric:
    """Make every node of `topology` and cable them. Every node's events run
    on `scheduler` (a test's ManualScheduler), or on one new ThreadScheduler,
    whose thread ends once every node has closed."""
    from devmodel.simnode import SimulatedHfi
    from devmodel.switch import Switch
    from devmodel.worker import ThreadScheduler

    from . import cable

    if topology.hfis and served is None:
        raise TopologyError(f"the topology serves {len(topology.hfis)} HFI(s) and no device model makes them")
    engines = scheduler or ThreadScheduler("fabric")
    devices = [served.make(index, hfi.name, engines.worker(hfi.name)) for index, hfi in enumerate(topology.hfis)]
    switches = [Switch(spec.name, GUID_SWITCH + (k << 12), spec.ports, engines.worker(spec.name))
                for k, spec in enumerate(topology.switches)]
    simulated = [SimulatedHfi(name, GUID_SIMULATED + n, engines.worker(name)) for n, name in enumerate(topology.simulated)]
    fabric = BuiltFabric(topology, devices, switches, simulated)
    ends: dict[str, Callable[[int], object]] = {
        **{h.name: (lambda _port, d=d: d.ports()[0]) for h, d in zip(topology.hfis, devices)},
        **{s.name: (lambda port, s=s: s.ports[port]) for s in switches},
        **{s.name: (lambda _port, s=s: s) for s in simulated},
    }
    kinds = topology.kinds
    for a, b in topology.cables:
        if kinds[a.node] == SWITCH and kinds[b.node] != SWITCH:
            a, b = b, a  # the HFI's end first, as in "hfi1_0<->sw0.p1"
        end_a, end_b = ends[a.node](a.port), ends[b.node](b.port)
        if kinds[a.node] == HFI and kinds[b.node] == SWITCH and served.neighbor_normal_at_armed:
            end_b.managed.normal_at_armed = True
        name = f"{end_a.name}<->{end_b.name}"
        fabric.links.append(cable(end_a, end_b, name=name, timer=engines.timer(name).after))
    return fabric
