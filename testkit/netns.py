"""Two network namespaces joined by a veth pair, as two hosts on one wire,
for guest tests of cables between `vfnic serve`s on different hosts.

    with NamespacePair("vfc") as hosts:          # root: ip netns add, ip link add
        hosts.a.name, hosts.a.address            # "vfc1234-a", "10.77.0.1"
        server = NamespacedServer(hosts.a.name, "hfi1", [sock], log, args=(
            "--cable-listen", f"{hosts.a.address}:7470"))
        hosts.set_wire(up=False)                 # the cable's network goes away ...
        hosts.set_wire(up=True)                  # ... and comes back

The addresses exist only inside the namespaces (each has its end of the
veth and its loopback); the host's own network is untouched. The
namespaces carry this process's PID in their names, so parallel runs do not
meet, and are deleted at close (with them the veth pair). A server in a
namespace still serves its vfio-user socket to QEMU in the host's: the
socket is a path in the shared filesystem.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from images.lab.server import VfnicServer

SUBNET = "10.77.0"


class NamespaceError(RuntimeError):
    """A namespace or veth could not be made (not root, no iproute2): says which command and why."""


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


@dataclass(frozen=True)
class Host:
    name: str  # the namespace
    device: str  # its end of the veth
    address: str


class NamespacePair:
    def __init__(self, prefix: str = "vfc"):
        tag = f"{prefix}{os.getpid()}"
        self.a = Host(f"{tag}-a", f"{tag}a", f"{SUBNET}.1")
        self.b = Host(f"{tag}-b", f"{tag}b", f"{SUBNET}.2")
        self._made: list[str] = []

    def __enter__(self) -> "NamespacePair":
        try:
            for host in (self.a, self.b):
                ip("netns", "add", host.name)
                self._made.append(host.name)
            ip("link", "add", self.a.device, "netns", self.a.name, "type", "veth",
               "peer", "name", self.b.device, "netns", self.b.name)
            for host in (self.a, self.b):
                ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.device)
                ip("-n", host.name, "link", "set", "lo", "up")
                ip("-n", host.name, "link", "set", host.device, "up")
        except BaseException:
            self.close()
            raise
        return self

    def set_wire(self, up: bool) -> None:
        """Take the veth down (on both sides: its peer loses carrier) or bring it back."""
        for host in (self.a, self.b):
            ip("-n", host.name, "link", "set", host.device, "up" if up else "down")

    def close(self) -> None:
        for name in reversed(self._made):
            try:
                ip("netns", "delete", name)
            except NamespaceError:
                pass  # gone already
        self._made.clear()

    def __exit__(self, *exc) -> None:
        self.close()


class NamespacedServer(VfnicServer):
    """`vfnic serve` run inside a network namespace (`ip netns exec`, which
    execs it: the PID stopped is the server's own)."""

    def __init__(self, namespace: str, device: str, sockets: Sequence, log, args: Sequence[str] = (),
                 **options):
        super().__init__(device, sockets, log, args, **options)
        self.namespace = namespace

    def command_line(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *super().command_line()]
