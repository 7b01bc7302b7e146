"""PSM2 between two guests: the naming policy PSM2 needs, and fi_pingpong.

    keep_kernel_names(fabric)          # rdma-core's NAME_KERNEL policy, hfi1 reloaded
    run = fi_pingpong(fabric, 1 << 20, iterations=10)
    parse_fi_pingpong(run.client.stdout)  # {"bytes": ..., "usec_per_xfer": ..., "mb_s": ...}

PSM2 (and Open MPI's psm2 component) open `/dev/hfi1_N` and read
`/sys/class/infiniband/hfi1_N`: they hard-code the kernel's device name,
which rdma-core's default udev rule renames (`opap<bus>s<slot>`). Debian's
rdma-core README.Debian documents the fix a user applies: a rule of the same
name in /etc/udev/rules.d that calls `rdma_rename %k NAME_KERNEL`. Udev
applies it when the device is added, so the driver is reloaded once.
"""
from __future__ import annotations

import re

from images.fabric import Fabric, ToolRun, rdma_device

#: overrides /usr/lib/udev/rules.d/60-rdma-persistent-naming.rules (same file name)
NAMING_RULE_PATH = "/etc/udev/rules.d/60-rdma-persistent-naming.rules"
NAMING_RULE = 'ACTION=="add", SUBSYSTEM=="infiniband", PROGRAM="rdma_rename %k NAME_KERNEL"\n'
#: fi_pingpong's out-of-band (TCP) port when none is given
FI_PINGPONG_PORT = 47592


def keep_kernel_names(fabric: Fabric) -> None:
    """Install the NAME_KERNEL rule in both guests and reload hfi1 so that
    udev applies it; re-read the device names from sysfs."""
    for guest in fabric.guests:
        guest.put(NAMING_RULE_PATH, NAMING_RULE)
        guest.run("udevadm control --reload", check=True)
        guest.run("rmmod hfi1 && modprobe hfi1", timeout=120, check=True)
    fabric.devices = [rdma_device(guest) for guest in fabric.guests]


def fi_pingpong(fabric: Fabric, size: int, iterations: int, timeout: float = 300.0,
                env: str = "", server: int = 1, client: int = 0) -> ToolRun:
    """`fi_pingpong -p psm2 -e rdm -c` (-c checks the data; -v only logs) with `size`-byte
    messages: server in guest `server`, client in guest `client`. `env` is
    prefixed to both commands (e.g. "PSM2_TID=0")."""
    port = fabric.port()
    command = f"{env} fi_pingpong -p psm2 -e rdm -c -S {size} -I {iterations}".strip()
    server_guest = fabric.guests[server]
    return fabric.run_commands(f"{command} -B {port}", f"{command} -P {port} {server_guest.management.ip}",
                               lambda: listening(server_guest, port), f"port {port}", server, client, timeout)


def listening(guest, port: int) -> bool:
    return bool(guest.run(f"ss -Hltn 'sport = :{port}'").stdout.strip())


_ROW = re.compile(r"^\s*(\d+[kmg]?)\s+(\d+)\s+=(\d+)\s+(\S+)\s+([\d.]+)s\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$",
                  re.M)
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_fi_pingpong(output: str) -> dict | None:
    """fi_pingpong's result row: bytes (it prints 1m for 1048576),
    iterations sent and acknowledged, total, seconds, MB/sec, usec/xfer,
    Mxfers/sec."""
    match = _ROW.search(output)
    if not match:
        return None
    size = re.fullmatch(r"(\d+)([kmg]?)", match[1])
    return {"bytes": int(size[1]) * _SUFFIX[size[2]], "sent": int(match[2]), "acked": int(match[3]),
            "seconds": float(match[5]), "mb_s": float(match[6]), "usec_per_xfer": float(match[7]),
            "mxfers_s": float(match[8])}
