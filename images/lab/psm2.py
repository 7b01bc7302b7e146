"""PSM2 and MPI between guests on a vfnic fabric: what the demo
(`./run-demo --mpi`), the guest tests and benchmarks/psm2 set up in the
guests and run there.

    keep_kernel_names(fabric)          # rdma-core's NAME_KERNEL policy, hfi1 reloaded
    run = fi_pingpong(fabric, 1 << 20, iterations=10)
    parse_fi_pingpong(run.client.stdout)  # {"bytes": ..., "usec_per_xfer": ..., "mb_s": ...}
    expected_packets(fabric)           # per chip: packets placed through expected (TID) entries
    install_mpi_launcher(fabric)       # mpirun's rsh agent, host names, the ping-pong program
    run = mpirun(fabric, NETPIPE, transport="psm2")   # or "ofi", or "tcp" (virtio-net)
    context_mmaps(guest)               # PSM2's context set-up and mmaps, each one's outcome

PSM2 (and Open MPI's psm2 component) open `/dev/hfi1_N` and read
`/sys/class/infiniband/hfi1_N`: they hard-code the kernel's device name,
which rdma-core's default udev rule renames (`opap<bus>s<slot>`). Debian's
rdma-core README.Debian documents the fix a user applies: a rule of the same
name in /etc/udev/rules.d that calls `rdma_rename %k NAME_KERNEL`. Udev
applies it when the device is added, so the driver is reloaded once.
"""
from __future__ import annotations

import json
import re

from images.lab.fabric import Fabric, ToolRun, rdma_device
from images.lab.vm import Guest

#: overrides /usr/lib/udev/rules.d/60-rdma-persistent-naming.rules (same file name)
NAMING_RULE_PATH = "/etc/udev/rules.d/60-rdma-persistent-naming.rules"
NAMING_RULE = 'ACTION=="add", SUBSYSTEM=="infiniband", PROGRAM="rdma_rename %k NAME_KERNEL"\n'
#: fi_pingpong's out-of-band (TCP) port when none is given
FI_PINGPONG_PORT = 47592


def expected_packets(fabric: Fabric) -> list[int]:
    """KDETH packets each chip placed through an expected (TID) entry so
    far (the server's statistics: per receive context, `expected`)."""
    return [sum(c.get("expected", 0) for c in stats["rcv"]["contexts"].values())
            for stats in fabric.server.stats().values()]


def keep_kernel_names(fabric: Fabric, user_contexts: int | None = None) -> None:
    """Install the NAME_KERNEL rule in both guests and reload hfi1 so that
    udev applies it (with `num_user_contexts` if given: the driver's default
    is one per CPU); re-read the device names from sysfs."""
    options = f" num_user_contexts={user_contexts}" if user_contexts else ""
    for guest in fabric.guests:
        guest.put(NAMING_RULE_PATH, NAMING_RULE)
        guest.run("udevadm control --reload", check=True)
        guest.run(f"rmmod hfi1 && modprobe hfi1{options}", timeout=120, check=True)
    fabric.devices = [rdma_device(guest) for guest in fabric.guests]


def fi_pingpong(fabric: Fabric, size: int, iterations: int, timeout: float = 300.0,
                env: str = "", server: int = 1, client: int = 0, port: int | None = None,
                check: bool = True) -> ToolRun:
    """`fi_pingpong -p psm2 -e rdm -c` (-c checks the data; -v only logs) with `size`-byte
    messages: server in guest `server`, client in guest `client`. `env` is
    prefixed to both commands (e.g. "PSM2_TID=0"); `port`, the out-of-band
    TCP port, defaults to a fresh one. check=False leaves -c out (fabtests
    then neither fills nor compares each message byte by byte), for a
    measurement beside tools that check nothing, like perftest."""
    port = port or fabric.port()
    command = f"{env} fi_pingpong -p psm2 -e rdm {'-c ' if check else ''}-S {size} -I {iterations}".strip()
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


# -- Open MPI between the guests -----------------------------------------------------------
#
# mpirun (PRRTE) starts its daemon on the other host through an "rsh agent"
# (`AGENT HOST COMMAND`, ssh by default). The guests have no ssh; a few lines
# of Python on the management link stand in for it: vfnic-rshd in each guest
# runs what it is sent under /bin/sh and streams the output back, vfnic-rsh is
# the agent mpirun is given (`--prtemca plm_ssh_agent /usr/local/bin/vfnic-rsh`).

RSH_PORT = 2222
RSHD_PATH, RSH_PATH = "/usr/local/bin/vfnic-rshd", "/usr/local/bin/vfnic-rsh"
RSHD = f'''#!/usr/bin/python3
"""vfnic-rshd: run one /bin/sh command per connection, output back, then its exit code."""
import socket, subprocess, threading

def serve(conn):
    with conn:
        command = conn.makefile("rb").readline().decode()
        proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                stdout=conn.fileno(), stderr=conn.fileno())
        rc = proc.wait()
        conn.sendall(("\\n__vfnic_rc=%d\\n" % rc).encode())

listener = socket.create_server(("", {RSH_PORT}))
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
'''
RSH = f'''#!/usr/bin/python3
"""vfnic-rsh HOST COMMAND...: what mpirun's ssh agent would do, over vfnic-rshd."""
import re, socket, sys

args = sys.argv[1:]
while args and args[0].startswith("-"):  # ssh options PRRTE may add (-x, -T)
    args = args[1:]
host, command = args[0], " ".join(args[1:])
conn = socket.create_connection((host, {RSH_PORT}))
conn.sendall(command.replace("\\n", " ").encode() + b"\\n")
held = b""  # the last bytes, which may be the exit-code line
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    held += chunk
    sys.stdout.buffer.write(held[:-32])
    sys.stdout.flush()
    held = held[-32:]
match = re.search(rb"\\n__vfnic_rc=(\\d+)\\n$", held)
sys.stdout.buffer.write(held[:match.start()] if match else held)
sys.exit(int(match[1]) if match else 255)
'''

#: an MPI ping-pong with data checks (mpi4py): each size, `iterations` round
#: trips, every byte compared; rank 0 prints one JSON line per size, then one
#: for a checked 1 MiB allreduce
PINGPONG_PATH = "/usr/local/bin/vfnic-mpi-pingpong"
PINGPONG = '''#!/usr/bin/python3
import json, sys, time
from array import array
from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, peer = comm.Get_rank(), 1 - comm.Get_rank()
iterations = int(sys.argv[1])
for size in (int(s) for s in sys.argv[2:]):
    send = bytearray((i * 7 + size) & 0xFF for i in range(size))
    recv = bytearray(size)
    errors = 0
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(iterations):
        if rank == 0:
            comm.Send([send, MPI.BYTE], dest=peer, tag=size)
            comm.Recv([recv, MPI.BYTE], source=peer, tag=size)
        else:
            comm.Recv([recv, MPI.BYTE], source=peer, tag=size)
            comm.Send([recv, MPI.BYTE], dest=peer, tag=size)
        errors += recv != send
    elapsed = time.perf_counter() - start
    total = comm.allreduce(errors, op=MPI.SUM)
    if rank == 0:
        half_rtt = elapsed / iterations / 2
        print(json.dumps({"bytes": size, "iterations": iterations, "errors": total,
                          "latency_us": half_rtt * 1e6, "mb_s": size / half_rtt / 1e6}), flush=True)
# an allreduce of 1 MiB of doubles: element i sums to 2 * i + 1 over the two ranks
count = 1 << 17
vector = array("d", (float(rank + i) for i in range(count)))
result = array("d", bytes(8 * count))
comm.Allreduce([vector, MPI.DOUBLE], [result, MPI.DOUBLE], op=MPI.SUM)
wrong = sum(result[i] != 2 * i + 1 for i in range(count))
wrong = comm.allreduce(wrong, op=MPI.SUM)
if rank == 0:
    print(json.dumps({"allreduce_doubles": count, "errors": wrong}), flush=True)
'''


def install_mpi_launcher(fabric: Fabric) -> None:
    """vfnic-rshd running in every guest, vfnic-rsh and the ping-pong program on every guest.
    Each guest gets a host name of its own (all boot as vfnic-guest, and
    PRRTE takes two daemons with one name for one node), known to the other."""
    hosts = "".join(f"{guest.management.ip} mpi{i}\n" for i, guest in enumerate(fabric.guests))
    for i, guest in enumerate(fabric.guests):
        guest.run(f"hostname mpi{i} && echo '{hosts}' >> /etc/hosts", check=True)
        guest.put(RSHD_PATH, RSHD, mode=0o755)
        guest.put(RSH_PATH, RSH, mode=0o755)
        guest.put(PINGPONG_PATH, PINGPONG, mode=0o755)
        if not guest.run(f"ss -Hltn 'sport = :{RSH_PORT}' | grep -q .").ok:
            guest.run(f"{RSHD_PATH} </dev/null >/run/vfnic-rshd.log 2>&1 &", check=True)


#: how the ranks talk, by name: the cm PML over the psm2 MTL, or over the ofi MTL
#: on libfabric's psm2 provider; or the ob1 PML over TCP on the management
#: (virtio-net) interface, `{nic}`
MPI_TRANSPORTS = {
    "psm2": "--mca pml cm --mca mtl psm2 --mca btl self",
    "ofi": "--mca pml cm --mca mtl ofi --mca mtl_ofi_provider_include psm2 --mca btl self",
    "tcp": "--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include {nic}",
}


def mpirun(fabric: Fabric, program: str, transport: str = "psm2", timeout: float = 300.0, extra: str = ""):
    """`mpirun` in guest 0, one rank in each guest, over `transport` (a key
    of MPI_TRANSPORTS)."""
    hosts = ",".join(f"mpi{i}:1" for i in range(len(fabric.guests)))
    subnet = fabric.guests[0].management.ip.rsplit(".", 1)[0] + ".0/24"
    nics = ",".join(sorted({guest.management_nic for guest in fabric.guests}))
    command = (f"mpirun --allow-run-as-root -np 2 --host {hosts} --map-by node "
               f"--prtemca plm_ssh_agent {RSH_PATH} --prtemca oob_tcp_if_include {subnet} "
               f"{MPI_TRANSPORTS[transport].format(nic=nics)} {extra}".rstrip() + f" {program}")
    return fabric.guests[0].run(command, timeout=timeout)


#: NetPIPE over Open MPI from 1 byte to 1 MiB, no perturbations (the rows: parse_netpipe)
NETPIPE = "NPopenmpi -u 1048576 -p 0 -o /tmp/np.out"


_NETPIPE_ROW = re.compile(r"^\s*\d+:\s+(\d+) bytes\s+(\d+) times -->\s+([\d.]+) Mbps in\s+([\d.]+) usec", re.M)


def parse_netpipe(output: str) -> list[dict]:
    """NetPIPE's rows: `N: BYTES bytes TIMES times --> MBPS Mbps in USEC usec`."""
    return [{"bytes": int(m[1]), "times": int(m[2]), "mbps": float(m[3]), "usec": float(m[4])}
            for m in _NETPIPE_ROW.finditer(output)]


# -- a user context opened as PSM2 opens it ---------------------------------------------------
#
# PSM2's hfi_userinit(): open /dev/hfi1_N, HFI1_IOCTL_ASSIGN_CTXT, CTXT_INFO and
# USER_INFO (struct hfi1_base_info: one mmap token per region), then one mmap
# per region with PSM2's lengths and protections. A token is the mmap offset,
# page-aligned; its low bits are the region's offset within the page. The
# token's magic sets the offset's top bit, which Python's mmap module refuses
# (a negative off_t): the program calls libc's mmap itself.

CONTEXT_MMAPS_PATH = "/usr/local/bin/vfnic-psm2-mmaps"
CONTEXT_MMAPS = '''#!/usr/bin/python3
"""vfnic-psm2-mmaps [DEVICE]: open a user context as PSM2 does, mmap each region, print JSON."""
import ctypes, errno, fcntl, json, mmap, os, struct, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64)
libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
MAP_FAILED = ctypes.c_void_p(-1).value
PAGE = mmap.PAGESIZE

def ioc(direction, nr, size):  # _IOC(): RDMA_IOCTL_MAGIC 0x1b, include/uapi/rdma/rdma_user_ioctl.h
    return direction << 30 | size << 16 | 0x1B << 8 | nr

USER_INFO = struct.Struct("<IIHH16s")           # struct hfi1_user_info
CTXT_INFO = struct.Struct("<QI13H2x")            # struct hfi1_ctxt_info
BASE_INFO = struct.Struct("<IIHHI13Q")           # struct hfi1_base_info
ASSIGN_CTXT = ioc(3, 0xE1, USER_INFO.size)       # _IOWR
GET_CTXT_INFO = ioc(1, 0xE2, CTXT_INFO.size)     # _IOW
GET_USER_INFO = ioc(1, 0xE3, BASE_INFO.size)     # _IOW

fd = os.open(sys.argv[1] if len(sys.argv) > 1 else "/dev/hfi1_0", os.O_RDWR)
fcntl.ioctl(fd, ASSIGN_CTXT, bytearray(USER_INFO.pack(6 << 16 | 3, 0, 0, 0, b"vfnic-psm2-mmaps")))
info = bytearray(CTXT_INFO.size)
fcntl.ioctl(fd, GET_CTXT_INFO, info)
(_flags, egr_size, _active, _unit, ctxt, _sub, _rcvtids, credits, _numa, _cpu, _send, egrtids,
 hdrq_cnt, hdrq_entsize, sdma_ring) = CTXT_INFO.unpack(info)
base = bytearray(BASE_INFO.size)
fcntl.ioctl(fd, GET_USER_INFO, base)
(_hw, _sw, _jkey, _pad, _bthqp, credit_return, pio_sop, pio, hdrq, egr, sdma_comp, uregs, events, status,
 *_rest) = BASE_INFO.unpack(base)

def pages(n):
    return -(-n // PAGE) * PAGE

READ, WRITE = mmap.PROT_READ, mmap.PROT_WRITE
regions = {  # name: (token, length, protection)
    "credit_return": (credit_return, PAGE, READ),
    "pio_sop": (pio_sop, pages(credits * 64), WRITE),
    "pio": (pio, pages(credits * 64), WRITE),
    "rcvhdrq": (hdrq, pages(hdrq_cnt * hdrq_entsize), READ | WRITE),
    "eager": (egr, egrtids * egr_size, READ),
    "sdma_comp": (sdma_comp, pages(8 * sdma_ring), READ),
    "user_regs": (uregs, PAGE, READ | WRITE),
    "events": (events, PAGE, READ),
    "status": (status, PAGE, READ),
}
result = {"ctxt": ctxt, "eager_buffers": egrtids, "eager_buffer_bytes": egr_size, "mmap": {}}
for name, (token, length, protection) in regions.items():
    address = libc.mmap(None, length, protection, mmap.MAP_SHARED, fd, ctypes.c_int64(token & ~(PAGE - 1)).value)
    if address == MAP_FAILED:
        number = ctypes.get_errno()
        result["mmap"][name] = errno.errorcode.get(number, str(number))
    else:
        libc.munmap(address, length)
        result["mmap"][name] = "ok"
print(json.dumps(result))
'''


def context_mmaps(guest: Guest, device: str = "/dev/hfi1_0") -> dict:
    """Open a user context on `device` in `guest` as PSM2 does and mmap each
    of its regions: {"ctxt", "eager_buffers", "eager_buffer_bytes",
    "mmap": {region: "ok" or the errno's name}}. The context is freed when
    the program exits."""
    guest.put(CONTEXT_MMAPS_PATH, CONTEXT_MMAPS, mode=0o755)
    return json.loads(guest.run(f"{CONTEXT_MMAPS_PATH} {device}", check=True).stdout)
