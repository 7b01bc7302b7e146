"""The kernel's upper-layer protocols between two guests on the emulated
fabric: IPoIB, NVMe over Fabrics and SRP, set up as an administrator would,
with nothing but sysfs, configfs and the stock tools (no image
customisation: device and interface names come from sysfs).

Addresses are documentation ranges no real network uses (RFC 5737, RFC
3849), reachable only inside the fabric:

    IPoIB   192.0.2.{1,2,3,4}/24   2001:db8::{1,2,3,4}:0:0:1/64   (guest index + 1)

The IPv6 addresses share their low 24 bits on purpose. IPv6 neighbour
discovery sends to the peer's solicited-node group, which a node has not
joined itself, so Linux 6.12's IPoIB asks the SA for a *send-only full
member* join (join state 0x8); opafm 10.10 treats that bit as reserved,
reads join state 0 and refuses the join (MAD status "invalid request").
With equal low 24 bits both addresses have the same solicited-node group,
which each node joins as a full member for its own address, so discovery
goes through groups opafm accepts.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass

from images.lab.vm import Guest
from images.lab.wait import wait_until

IPOIB_V4 = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")
IPOIB_V6 = ("2001:db8::1:0:0:1", "2001:db8::2:0:0:1", "2001:db8::3:0:0:1", "2001:db8::4:0:0:1")
IPOIB_V4_BROADCAST = "192.0.2.255"
#: the IPoIB broadcast group of the default partition (P_Key 0x8001 after opafm)
BROADCAST_MGID = "0xff12401b80010000:0x00000000ffffffff"
NVME_PORT = 4420
CONFIGFS = "/sys/kernel/config"


class UlpError(RuntimeError):
    pass


def check(guest: Guest, command: str, timeout: float = 120.0) -> str:
    result = guest.run(command, timeout=timeout)
    if result.rc != 0:
        raise UlpError(f"{guest.name}: `{command}` failed (rc {result.rc}):\n{result.stdout}{result.stderr}")
    return result.stdout


# -- IPoIB ----------------------------------------------------------------------------------

def ipoib_interface(guest: Guest) -> str:
    """The IPoIB netdev of the guest's HFI, as sysfs names it."""
    names = check(guest, "ls /sys/class/infiniband/*/device/net/ 2>/dev/null").split()
    names = [n for n in names if check(guest, f"cat /sys/class/net/{n}/type").strip() == "32"]  # ARPHRD_INFINIBAND
    if len(names) != 1:
        raise UlpError(f"{guest.name}: expected one IPoIB interface, found {names}")
    return names[0]


def configure_ipoib(guest: Guest, index: int, mode: str = "datagram", timeout: float = 60.0) -> str:
    """Bring the guest's IPoIB interface up with its addresses (index 0..3)
    in `mode`; returns the interface's name once it has joined the broadcast
    group (carrier up)."""
    ifname = ipoib_interface(guest)
    set_ipoib_mode(guest, ifname, mode)
    check(guest, f"ip addr replace {IPOIB_V4[index]}/24 dev {ifname} && "
                 f"ip -6 addr replace {IPOIB_V6[index]}/64 dev {ifname} nodad && ip link set {ifname} up")
    wait_until(lambda: check(guest, f"cat /sys/class/net/{ifname}/carrier 2>/dev/null || echo 0").strip() == "1",
               timeout, f"{guest.name}: {ifname} to join the broadcast group (carrier)")
    return ifname


def set_ipoib_mode(guest: Guest, ifname: str, mode: str) -> None:
    """datagram (MTU from the broadcast group) or connected (MTU 65520)."""
    check(guest, f"echo {mode} > /sys/class/net/{ifname}/mode")
    if mode == "connected":
        check(guest, f"ip link set {ifname} mtu 65520")


def ping(guest: Guest, address: str, count: int = 3, size: int = 56) -> dict:
    """`ping` results: transmitted, received, average rtt (ms)."""
    out = guest.run(f"ping -c {count} -W 5 -s {size} {address}", timeout=30 + 6 * count).stdout
    sent = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    return {"transmitted": int(sent[1]) if sent else 0, "received": int(sent[2]) if sent else 0,
            "avg_ms": float(rtt[1]) if rtt else None, "text": out}


@dataclass
class Iperf:
    sender_mbit_s: float
    receiver_mbit_s: float
    text: str


def iperf3(server: Guest, client: Guest, address: str, seconds: int = 10) -> Iperf:
    """iperf3 from `client` to `server` listening on `address`."""
    check(server, f"iperf3 -s -1 -D -B {address} -I /run/iperf3.pid")
    try:
        wait_until(lambda: server.run(f"ss -ltn 'sport = :5201' | grep -q {re.escape(address)}").rc == 0, 30.0,
                   f"{server.name}: iperf3 to listen on {address}")
        out = check(client, f"iperf3 -c {address} -t {seconds} -f m", timeout=seconds + 60)
    finally:
        server.run("kill $(cat /run/iperf3.pid) 2>/dev/null; rm -f /run/iperf3.pid")
    rates = {kind: float(m) for m, kind in re.findall(r"([\d.]+) Mbits/sec\s+(?:\d+\s+)?(sender|receiver)", out)}
    if set(rates) != {"sender", "receiver"}:
        raise UlpError(f"iperf3 printed no summary:\n{out}")
    return Iperf(rates["sender"], rates["receiver"], out)


def send_file(sender: Guest, receiver: Guest, address: str, mib: int = 64, port: int = 7000) -> tuple[str, str, float]:
    """`mib` MiB of random data with nc from `sender` to `receiver` (listening
    on `address`); (sha256 sent, sha256 received, seconds)."""
    check(sender, f"head -c {mib}M /dev/urandom > /tmp/blob")
    sent = check(sender, "sha256sum /tmp/blob").split()[0]
    check(receiver, f"rm -f /tmp/blob.recv; timeout 600 nc -l -N {address} {port} > /tmp/blob.recv "
                    f"2>/tmp/nc.err < /dev/null & echo $! > /tmp/nc.pid")
    wait_until(lambda: receiver.run(f"ss -ltn 'sport = :{port}' | grep -q {re.escape(address)}").rc == 0, 30.0,
               f"{receiver.name}: nc to listen on {address}:{port}")
    started = time.monotonic()
    check(sender, f"nc -N {address} {port} < /tmp/blob", timeout=600)
    wait_until(lambda: receiver.run("kill -0 $(cat /tmp/nc.pid) 2>/dev/null").rc != 0, 120.0,
               f"{receiver.name}: nc to finish receiving")
    seconds = time.monotonic() - started
    received = check(receiver, "sha256sum /tmp/blob.recv").split()[0]
    check(sender, "rm -f /tmp/blob")
    check(receiver, "rm -f /tmp/blob.recv")
    return sent, received, seconds


# -- block targets: RAM disks, configfs ------------------------------------------------------

def mount_configfs(guest: Guest) -> None:
    check(guest, f"modprobe configfs; mountpoint -q {CONFIGFS} || mount -t configfs none {CONFIGFS}")


def ram_disk(guest: Guest, mib: int) -> str:
    """A RAM block device of `mib` MiB (brd), returned by path."""
    check(guest, f"modprobe brd rd_nr=2 rd_size={mib * 1024}")
    return "/dev/ram0"


def write_and_read_back(guest: Guest, device: str, mib: int) -> tuple[str, str]:
    """`mib` MiB of random data written to `device` with O_DIRECT and read
    back with O_DIRECT: (sha256 written, sha256 read)."""
    check(guest, f"head -c {mib}M /dev/urandom > /tmp/pattern")
    check(guest, f"dd if=/tmp/pattern of={device} bs=128k oflag=direct status=none", timeout=600)
    check(guest, f"dd if={device} of=/tmp/readback bs=128k count={mib * 8} iflag=direct status=none", timeout=600)
    digests = check(guest, "sha256sum /tmp/pattern /tmp/readback").split()
    check(guest, "rm -f /tmp/pattern /tmp/readback")
    return digests[0], digests[2]


# -- NVMe over Fabrics ----------------------------------------------------------------------

def nvmet_export(guest: Guest, device: str, transport: str, address: str, nqn: str = "vfnic",
                 port_id: int = 1) -> None:
    """Export `device` as namespace 1 of subsystem `nqn` through the kernel
    target (configfs) on `transport` (rdma, tcp) at `address`:4420. A
    subsystem exported already gains one more port."""
    mount_configfs(guest)
    check(guest, f"modprobe nvmet_{transport}")
    subsystem, port = f"{CONFIGFS}/nvmet/subsystems/{nqn}", f"{CONFIGFS}/nvmet/ports/{port_id}"
    if guest.run(f"grep -qx 1 {subsystem}/namespaces/1/enable").rc != 0:
        check(guest, " && ".join([
            f"mkdir -p {subsystem}/namespaces/1",
            f"echo 1 > {subsystem}/attr_allow_any_host",
            f"echo -n {device} > {subsystem}/namespaces/1/device_path",
            f"echo 1 > {subsystem}/namespaces/1/enable",
        ]))
    check(guest, " && ".join([
        f"mkdir -p {port}",
        f"echo {transport} > {port}/addr_trtype",
        f"echo ipv4 > {port}/addr_adrfam",
        f"echo {address} > {port}/addr_traddr",
        f"echo {NVME_PORT} > {port}/addr_trsvcid",
        f"ln -sfn {subsystem} {port}/subsystems/{nqn}",
    ]))


def block_devices(guest: Guest) -> set[str]:
    return set(check(guest, "ls /sys/block").split())


def new_block_device(guest: Guest, before: set[str], prefix: str, timeout: float, what: str) -> str:
    """Wait for a block device named `prefix*` that was not in `before`."""
    found = {}

    def appeared() -> bool:
        for name in sorted(block_devices(guest) - before):
            if name.startswith(prefix) and guest.run(f"test -b /dev/{name}").rc == 0:
                found["device"] = f"/dev/{name}"
                return True
        return False
    wait_until(appeared, timeout, f"{guest.name}: {what} to appear")
    return found["device"]


def nvme_connect(guest: Guest, transport: str, address: str, nqn: str = "vfnic", timeout: float = 60.0) -> str:
    """Connect to subsystem `nqn`; the namespace's block device."""
    check(guest, f"modprobe nvme_{transport}")
    before = block_devices(guest)
    check(guest, f"nvme connect -t {transport} -a {address} -s {NVME_PORT} -n {nqn}", timeout=timeout)
    return new_block_device(guest, before, "nvme", timeout, f"the namespace of {nqn}")


def nvme_disconnect(guest: Guest, nqn: str = "vfnic") -> str:
    return check(guest, f"nvme disconnect -n {nqn}")


# -- SRP --------------------------------------------------------------------------------------

def port_gid(guest: Guest, device: str) -> str:
    """Port 1's GID 0 as 32 hex digits."""
    return check(guest, f"cat /sys/class/infiniband/{device}/ports/1/gids/0").strip().replace(":", "")


def node_guid(guest: Guest, device: str) -> str:
    return check(guest, f"cat /sys/class/infiniband/{device}/node_guid").strip().replace(":", "")


def srpt_export(guest: Guest, device: str, block: str, initiator_gid: str) -> None:
    """Export `block` as LUN 0 through ib_srpt (LIO, configfs), to the
    initiator port `initiator_gid` (its i_port_id: initiator_ext 0, port GUID)."""
    mount_configfs(guest)
    check(guest, "modprobe ib_srpt")
    target = f"{CONFIGFS}/target"
    backstore = f"{target}/core/iblock_0/vfnic"
    tpg = f"{target}/srpt/0x{port_gid(guest, device)}/tpgt_1"
    acl = f"{tpg}/acls/0x{'0' * 16}{initiator_gid[16:]}"
    check(guest, " && ".join([
        f"mkdir -p {backstore}",
        f"echo udev_path={block} > {backstore}/control",
        f"echo 1 > {backstore}/enable",
        f"mkdir -p {tpg}/lun/lun_0",
        f"ln -sfn {backstore} {tpg}/lun/lun_0/vfnic",
        f"mkdir -p {acl}/lun_0",
        f"ln -sfn {tpg}/lun/lun_0 {acl}/lun_0/lun_0",
        f"echo 1 > {tpg}/enable",
    ]))


def srp_login(guest: Guest, device: str, target_guid: str, target_gid: str, timeout: float = 60.0) -> str:
    """Log in to the target with ib_srp (P_Key 0x8001, the default partition
    opafm configures; 0xffff is its management partition); the new disk."""
    check(guest, "modprobe ib_srp")
    before = block_devices(guest)
    options = (f"id_ext={target_guid},ioc_guid={target_guid},dgid={target_gid},pkey=8001,"
               f"service_id={target_guid}")
    check(guest, f"echo {shlex.quote(options)} > /sys/class/infiniband_srp/srp-{device}-1/add_target")
    return new_block_device(guest, before, "sd", timeout, "the SRP disk")
