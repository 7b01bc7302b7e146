"""Subnet and performance management layouts: each declaration builds golden bytes
and parses them back. Golden values follow the C structs field by field
(include/rdma/opa_smi.h, opa_port_info.h, hfi1 mad.c, opa-fm stl_sm_types.h)."""
from __future__ import annotations

import pytest

from devmodel.switch.managed_port import default_port_info
from devmodel.wire import opa_sma as w

GUID = "0011750000100000"

GOLDEN = [
    ("NodeInfo (switch)", w.NodeInfo,
     dict(base_version=0x80, class_version=0x80, node_type=2, num_ports=4, reserved=0,
          system_image_guid=0x0011750000100000, node_guid=0x0011750000100000, port_guid=0x0011750000100000,
          partition_cap=32, device_id=0x2718, revision=0, local_port_num=1, vendor_id=0x001175),
     "80800204" "00000000" + GUID * 3 + "0020" "2718" "00000000" "01" "001175"),
    ("SwitchInfo", w.SwitchInfo,
     dict(linear_fdb_cap=0xC000, port_group_fdb_cap=0, multicast_fdb_cap=0x2000, linear_fdb_top=0x10,
          multicast_fdb_top=0xC000, collective_cap=0, collective_top=0, reserved=0, ipv6=bytes(16), ipv4=bytes(4),
          reserved26_28=bytes(12), reserved21_23=bytes(3), u1=(0x13 << 3) | 4, reserved24=0,
          partition_enforcement_cap=0, port_group_cap=0, port_group_top=0, routing_mode_supported=1,
          routing_mode_enabled=1, u2=1 << 3, multi_collect_mask=0x0C, adaptive_routing=0, capability_mask=0,
          capability_mask_collectives=0),
     "0000c000" "00000000" "00002000" "00000010" "0000c000" "00000000" "00000000" "00000000" + "00" * 32
     + "00" * 3 + "9c" "0000" "0000" "00" "00" "01" "01" "08" "0c" "0000" "0000" "0000"),
    ("PortStateInfo", w.PortStateInfo,
     dict(ps_reserved=0, ps_flags=0x10, ps_reserved2=0, ps_phys_state=0x54, lwd_tx_active=8, lwd_rx_active=8),
     "00100054" "0008" "0008"),
    ("Aggregate segment", w.AggregateSegment, dict(attr_id=0x15, err_reqlength=31, attr_mod=1 << 24),
     "0015" "001f" "01000000"),
    ("Notice (trap 128)", w.Notice,
     dict(generic_type=0x81, producer_type=2, trap_num=128, toggle_count=0, issuer_lid=2, reserved=0,
          issuer_gid=bytes(16), data=(2).to_bytes(4, "big") + bytes(60)),
     "81000002" "0080" "0000" "00000002" "00000000" + "00" * 16 + "00000002" + "00" * 60),
    ("CongestionInfo", w.CongestionInfo, dict(congestion_info=1, control_table_cap=2, congestion_log_length=96),
     "0001" "02" "60"),
    ("ClearPortStatus", w.ClearPortStatus, dict(port_select_mask=(1 << 3).to_bytes(32, "big"),
                                                counter_select_mask=0xFFFFFFE0),
     "00" * 31 + "08" + "ffffffe0"),
    ("PortStatus request", w.PortStatusRequest, dict(port_num=1, reserved=bytes(3), vl_select_mask=0x80FF),
     "01000000" "000080ff"),
]


@pytest.mark.parametrize("name,declaration,value,golden", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_declaration_builds_golden_bytes_and_parses_them_back(name, declaration, value, golden):
    data = bytes.fromhex(golden)
    assert declaration.build(value) == data
    parsed = declaration.parse(data)
    assert {k: parsed[k] for k in value} == value
    assert declaration.sizeof() == len(data)


def test_sizes_match_the_c_structs():
    assert w.PortInfo.sizeof() == 242  # struct opa_port_info
    assert w.SwitchInfo.sizeof() == 84  # STL_SWITCH_INFO
    assert w.NodeInfo.sizeof() == 44  # struct opa_node_info
    assert w.SMP_DR.size == w.SMP_DR_HEADER_BYTES == 176 and w.SMP_LR.size == 32  # struct opa_smp
    assert w.SMP_DR_HEADER_BYTES + w.SMP_DR_DATA_BYTES == w.SMP_HEADER_BYTES + w.SMP_LID_DATA_BYTES == 2048
    assert w.ClassPortInfo.sizeof() == 80  # struct opa_class_port_info
    assert w.PORT_DATA_COUNTERS.size == 136 and w.PORT_ERROR_COUNTERS.size == 96  # _port_dctrs, _port_ectrs
    assert w.PORT_STATUS.size == 216 and w.VL_PORT_STATUS_BYTES == 112  # opa_port_status_rsp, _vls_pctrs
    assert w.PortStatus.parse(bytes(range(216)))["link_downed"] == int.from_bytes(bytes(range(204, 208)), "big")
    assert w.PORT_SELECT.size == 40  # port_select_mask[4], vl/info select, resolution/reserved
    assert w.Notice.sizeof() == 96
    assert (w.BUFFER_CONTROL_BYTES + 7) & ~7 == w.BUFFER_CONTROL_STRIDE  # STL_BFRCTRLTAB_PAD_SIZE


def test_port_info_fields_sit_where_opa_port_info_h_puts_them():
    info = default_port_info()
    info.update(dict(lid=0x12345, ps_flags=0x30, ps_phys_state=0x53, neigh_port_num=7, link_speed_supported=2,
                     sm_lid=0x99, neigh_node_guid=0x0011750000000002, port_neigh_mode=0x0D, mtucap=7,
                     local_port_num=9, buffer_units=0x12345678, overall_buffer_space=0x2000))
    data = w.PortInfo.build(info)
    at = {0: "00012345", 17: "30", 19: "53", 44: "07", 48: "0002", 100: "12345678", 108: "00000099",
          208: "0011750000000002", 228: "2000", 236: "0d", 237: "07", 239: "09"}
    for offset, golden in at.items():
        assert data[offset:offset + len(golden) // 2].hex() == golden, f"offset {offset}"
    assert w.PortInfo.parse(data).neigh_node_guid == 0x0011750000000002


def test_dr_smp_header_layout():
    header = w.SMP_DR.pack(0x80, 0x81, 0x80, 1, 0x8000, 1, 2, 0x42, 0x11, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                           bytes([0, 1, 3]) + bytes(61), bytes([0, 1]) + bytes(62), bytes(8))
    assert header[:8].hex() == "8081800180000102"
    assert header[16:18].hex() == "0011" and header[32:40].hex() == "ff" * 8
    assert header[40:43] == bytes([0, 1, 3]) and header[104:106] == bytes([0, 1])


def test_port_select_names_ports_by_bit():
    assert w.port_select((1 << 3 | 1).to_bytes(32, "big")) == [0, 3]
