"""The devices `vfnic serve --device NAME` knows, by name, their options
(`--option KEY=VALUE`) and the files their guests need (`GuestFiles`: the
`vfnic` command that writes them, and what the guest image installs). The
transport (emulator/) and the guest images (images/) know devices only
through this module. Imports are lazy so that serving testdev never loads
the hfi1 model."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from devmodel.base import DeviceModel


class OptionError(ValueError):
    pass


@dataclass(frozen=True)
class GuestFiles:
    """Files a guest of the device needs, written by `vfnic COMMAND --output
    DIR` and installed by the guest image under `directory`."""

    command: str
    help: str
    #: where the guest looks for them, relative to its root
    directory: str
    #: "module:function", () -> {file name: contents}
    files: str
    #: "module:function", (directory) -> [paths written]
    write: str


@dataclass(frozen=True)
class DeviceEntry:
    module: str
    factory: str
    #: option name -> (allowed values, default, what it means)
    options: dict[str, tuple[tuple[str, ...], str, str]]
    #: a factory for `count` devices on one fabric (cabled as the device
    #: decides); None: each device stands alone
    fabric: str | None = None
    guest_files: GuestFiles | None = None
    #: how the device is made for a fabric of switches (`vfnic serve --switch`,
    #: `--topology`): (**options) -> devmodel.fabric.topology.ServedHfis. None:
    #: the device has no port a switch could take
    served_on_fabric: str | None = None
    #: a factory for one device cabled to a device of another `vfnic serve`
    #: (`--cable-listen`/`--cable-connect`): (role, address, opener, **options)
    #: -> (devices, cables) (devmodel/fabric/remote_cable.py); None: it has no port to cable
    remote_cabled: str | None = None
    #: options that may change while the device runs, as `options`: not given
    #: to the factories but set on each device made (`DeviceModel.set_option`),
    #: and changed later by the control socket's `tune option=KEY=VALUE`
    runtime_options: dict[str, tuple[tuple[str, ...], str, str]] = field(default_factory=dict)


DEVICES = {
    "testdev": DeviceEntry("devmodel.testdev", "TestDevice", {}),
    "testdev-shm": DeviceEntry("devmodel.testdev", "SharedMemoryTestDevice", {}),
    "hfi1": DeviceEntry("devmodel.hfi1", "Hfi1Device.from_options", {
        "link-partner": (("present", "none"), "present",
                         "for an HFI with no second HFI to cable it to: present, a built-in neighbour "
                         "HFI answers and the link trains to LinkUp; none, no cable, the port stays in Polling"),
        "icode": (("silicon", "simulator"), "silicon",
                  "the implementation code the chip reports: silicon (0, RTL silicon), the driver loads and "
                  "the chip authenticates signed firmware (the guest needs the files of `vfnic firmware` in "
                  "/lib/firmware, or probe fails), negotiates the link with VerifyCap "
                  "and relays SMA idle messages; simulator (3, functional simulator), none of that"),
        "rcv-array": (("8192", "16384", "32768"), "8192",
                      "the RcvArray entries the chip reports (RCV_ARRAY_CNT): 8192, a quarter of the real chip's, "
                      "keeps modprobe short (the driver writes every entry with a trapped read before each); "
                      "32768, the real chip's (devmodel/hfi1/config.py)"),
        "mmap": (("none", "pio"), "none",
                 "parts of BAR0 the guest maps as shared memory instead of trapping every access: pio, the "
                 "PIO send space (the server polls it for completed packets); QEMU then turns posted writes "
                 "off for the whole device (docs/vfio-user.md). The RcvArray cannot be offered: the driver's "
                 "blank fill writes would erase live TID entries (devmodel/hfi1/rcv.py)"),
    }, fabric="Hfi1Device.fabric", served_on_fabric="Hfi1Device.served_on_fabric",
        remote_cabled="Hfi1Device.remote_cabled", runtime_options={
        "pio-launch": (("engine", "inline"), "engine",
                       "where a PIO packet is launched: engine, as a chip event on the engine thread; inline, "
                       "a packet of at most two blocks right on the socket thread of the store that completes "
                       "it (docs/execution-model.md, rule 1)"),
    }, guest_files=GuestFiles(
        "firmware", "write the hfi1 firmware files (vfnic's own, signed with its test key)", "usr/lib/firmware",
        "devmodel.hfi1.firmware:firmware_files", "devmodel.hfi1.firmware:write_firmware")),
}


def parse_options(name: str, pairs: list[str]) -> dict[str, str]:
    """The factory options `pairs` (KEY=VALUE) choose, defaults filled in;
    OptionError for a key or value the device does not know. Runtime options
    among `pairs` are checked too, and left out (`runtime_options`)."""
    entry = DEVICES[name]
    chosen = {key: default for key, (_allowed, default, _doc) in entry.options.items()}
    for key, value in _pairs(name, pairs):
        if key in entry.options:
            chosen[key] = value
    return chosen


def runtime_options(name: str, pairs: list[str], defaults: bool = False) -> dict[str, str]:
    """The runtime options `pairs` set (every one, defaults filled in, with
    `defaults`); OptionError as parse_options."""
    entry = DEVICES[name]
    chosen = {key: default for key, (_allowed, default, _doc) in entry.runtime_options.items()} if defaults else {}
    for key, value in _pairs(name, pairs):
        if key in entry.runtime_options:
            chosen[key] = value
    return chosen


def set_runtime_options(name: str, devices: list[DeviceModel], pairs: list[str]) -> None:
    """Give every device of kind `name` the runtime options `pairs` set."""
    for key, value in runtime_options(name, pairs).items():
        for device in devices:
            device.set_option(key, value)


def _pairs(name: str, pairs: list[str]) -> list[tuple[str, str]]:
    entry = DEVICES[name]
    every = {**entry.options, **entry.runtime_options}
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in every:
            known = ", ".join(every) or "none"
            raise OptionError(f"{name} has no option {key!r} (options: {known})")
        allowed = every[key][0]
        if value not in allowed:
            raise OptionError(f"{name} option {key} takes {' or '.join(allowed)}, not {value!r}")
        out.append((key, value))
    return out


def _resolve(entry: DeviceEntry, path: str) -> Callable:
    factory: Callable = importlib.import_module(entry.module)
    for attr in path.split("."):
        factory = getattr(factory, attr)
    return factory


def _function(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def guest_files(name: str) -> dict[str, bytes]:
    """The files a guest of device `name` needs, by path relative to its root."""
    files = DEVICES[name].guest_files
    if files is None:
        return {}
    return {f"{files.directory}/{file}": data for file, data in _function(files.files)().items()}


def write_guest_files(name: str, directory: str | Path) -> list[Path]:
    """Write device `name`'s guest files into `directory` (created if missing); their paths."""
    files = DEVICES[name].guest_files
    return [] if files is None else _function(files.write)(Path(directory))


def create(name: str, options: list[str] | None = None) -> DeviceModel:
    if name not in DEVICES:
        raise KeyError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})")
    entry = DEVICES[name]
    chosen = parse_options(name, options or [])
    factory = _resolve(entry, entry.factory)
    device = factory(**{k.replace("-", "_"): v for k, v in chosen.items()}) if entry.options else factory()
    set_runtime_options(name, [device], options or [])
    return device


def create_fabric(name: str, count: int, options: list[str] | None = None) -> list[DeviceModel]:
    """`count` devices of one kind; devices with ports are cabled together
    (hfi1: back to back in pairs, an odd one out keeps its built-in partner)."""
    if name not in DEVICES:
        raise KeyError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})")
    entry = DEVICES[name]
    if entry.fabric is None:
        return [create(name, options) for _ in range(count)]
    chosen = parse_options(name, options or [])
    devices = _resolve(entry, entry.fabric)(count, **{k.replace("-", "_"): v for k, v in chosen.items()})
    set_runtime_options(name, devices, options or [])
    return devices


class FabricNode(Protocol):
    """A part of a served fabric that is no PCI function (a switch, a
    simulated HFI): what `vfnic serve` reports of it and stops."""

    name: str
    #: "switch", "simulated HFI"
    kind: str

    def stats(self) -> dict: ...

    def status(self) -> dict: ...

    def close(self) -> None: ...


def create_topology_fabric(name: str, topology, options: list[str] | None = None, scheduler=None):
    """The fabric `topology` (devmodel/fabric/topology.py) describes, its
    served HFIs made as device `name` makes them for a fabric of switches:
    a `BuiltFabric` (devices, nodes, links). OptionError if the device
    cannot be on such a fabric or refuses an option there."""
    from devmodel.fabric.topology import build_fabric

    if name not in DEVICES:
        raise KeyError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})")
    entry = DEVICES[name]
    if entry.served_on_fabric is None:
        able = ", ".join(sorted(n for n, e in DEVICES.items() if e.served_on_fabric)) or "none"
        raise OptionError(f"{name} cannot be cabled to a switch (devices that can: {able})")
    chosen = parse_options(name, options or [])
    try:
        served = _resolve(entry, entry.served_on_fabric)(**{k.replace("-", "_"): v for k, v in chosen.items()})
    except ValueError as e:  # the device refuses an option on such a fabric (e.g. hfi1's link-partner)
        raise OptionError(str(e)) from None
    built = build_fabric(topology, served, scheduler)
    set_runtime_options(name, built.devices, options or [])
    return built


def create_remote_cabled(name: str, options: list[str] | None, role, address: tuple[str, int],
                         opener) -> tuple[list[DeviceModel], list]:
    """One device whose port is cabled to a device of another `vfnic serve`,
    over the stream `opener` (the transport) listens or connects for at
    `address` (`role`, devmodel/fabric/remote_cable.py); the devices and the
    cables (each has name, status(), stats(), close()). OptionError if the
    device has no remote cable or refuses an option; OSError if the
    transport cannot start."""
    if name not in DEVICES:
        raise KeyError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})")
    entry = DEVICES[name]
    if entry.remote_cabled is None:
        cabled = ", ".join(sorted(n for n, e in DEVICES.items() if e.remote_cabled)) or "none"
        raise OptionError(f"{name} has no port to cable to another vfnic serve (devices that have: {cabled})")
    chosen = parse_options(name, options or [])
    try:
        devices, cables = _resolve(entry, entry.remote_cabled)(role, address, opener,
                                                               **{k.replace("-", "_"): v for k, v in chosen.items()})
    except ValueError as e:  # the device refuses an option here (hfi1's link-partner)
        raise OptionError(str(e)) from None
    set_runtime_options(name, devices, options or [])
    return devices, cables
