"""Omni-Path subnet management on the wire: SMPs, the SMA's attributes, the PMA's.

An OPA MAD is 24 bytes of common header (`opa.MadHeader`), then class data.
A subnet management packet (SMP, class 0x01 LID-routed, 0x81 directed route):

    MAD header 24 (class_specific = hop pointer | hop count; status bit 15 =
                   direction on DR) | M_Key 8 |
    LID-routed: data 2016
    directed:   DrSLID 4 | DrDLID 4 | InitialPath 64 | ReturnPath 64 | rsv 8 | data 1872

Layouts follow include/rdma/opa_smi.h, include/rdma/opa_port_info.h and
hfi1's mad.c (the answers an HFI gives), and opa-fm's stl_sm_types.h for
what only a switch answers (SwitchInfo). Attribute modifiers:

    PortInfo, PortStateInfo   N ports [31:24] | start-of-SM-config [9] | port [7:0]
    P_KeyTable                N blocks [31:24] | port [23:16] | block [10:0]
    LinearFwdTbl              N blocks [31:24] | block [17:0]         (64 one-byte ports)
    MulticastFwdTbl           N blocks [31:24] | position [23:22] | block [19:0]
                              (8 x 64-bit port masks; position p covers ports 64p..64p+63)
    SCtoVLx, BufferControl    N ports [31:24] | port [7:0]
    SCtoSC                    N blocks [31:24] | ingress [15:8] | egress [7:0]
    VLArb                     N ports [31:24] | section [23:16] | port [7:0]
    Aggregate                 segments [7:0]; a segment: AttrID 16 | Error [15] RequestLength [6:0]
                              (8-byte units) | modifier 32 | data
"""
from __future__ import annotations

import construct as c

from common.fixed import Fixed

# -- the SMP --------------------------------------------------------------------------
SMP_BYTES = 2048
SMP_HEADER_BYTES = 32  # MAD header + M_Key
SMP_LID_DATA_BYTES = 2016
SMP_DR_HEADER_BYTES = 32 + 4 + 4 + 64 + 64 + 8  # 176
SMP_DR_DATA_BYTES = 1872
MAX_PATH_HOPS = 64
PERMISSIVE_LID32 = 0xFFFFFFFF
DR_DIRECTION = 0x8000  # status bit 15 of a directed-route SMP: a response (returning)

#: the fixed part of a directed-route SMP, as a fast codec (the SMI reads it per hop)
SmpDrHeader = c.Struct(
    "base_version" / c.Int8ub,
    "mgmt_class" / c.Int8ub,
    "class_version" / c.Int8ub,
    "method" / c.Int8ub,
    "status" / c.Int16ub,
    "hop_ptr" / c.Int8ub,
    "hop_cnt" / c.Int8ub,
    "tid" / c.Int64ub,
    "attr_id" / c.Int16ub,
    "resv" / c.Int16ub,
    "attr_mod" / c.Int32ub,
    "mkey" / c.Int64ub,
    "dr_slid" / c.Int32ub,
    "dr_dlid" / c.Int32ub,
    "initial_path" / c.Bytes(MAX_PATH_HOPS),
    "return_path" / c.Bytes(MAX_PATH_HOPS),
    "reserved" / c.Bytes(8),
)
SMP_DR = Fixed(SmpDrHeader)
SMP_LR = Fixed(c.Struct(*SmpDrHeader.subcons[:12]))


class Method:
    GET, SET, SEND, TRAP, REPORT, TRAP_REPRESS = 0x01, 0x02, 0x03, 0x05, 0x06, 0x07
    GET_RESP, REPORT_RESP = 0x81, 0x86


class Status:
    """MAD status (IBA 13.4.7): the code in bits [4:2]."""

    OK = 0
    BAD_VERSION = 1 << 2
    UNSUPPORTED_METHOD = 2 << 2
    UNSUPPORTED_METHOD_ATTR = 3 << 2
    INVALID_FIELD = 7 << 2


class Attr:
    """SMA attribute IDs (opa_smi.h, stl_sm_types.h)."""

    NOTICE = 0x0002
    NODE_DESCRIPTION = 0x0010
    NODE_INFO = 0x0011
    SWITCH_INFO = 0x0012
    PORT_INFO = 0x0015
    PKEY_TABLE = 0x0016
    SL_TO_SC = 0x0017
    VL_ARB = 0x0018
    LINEAR_FWD = 0x0019
    MULTICAST_FWD = 0x001B
    SM_INFO = 0x0020
    LED_INFO = 0x0031
    CABLE_INFO = 0x0032
    AGGREGATE = 0x0080
    SC_TO_SC = 0x0081
    SC_TO_SL = 0x0082
    SC_TO_VLR = 0x0083
    SC_TO_VLT = 0x0084
    SC_TO_VLNT = 0x0085
    PORT_STATE_INFO = 0x0087
    BUFFER_CONTROL = 0x008A
    CONGESTION_INFO = 0x008B
    SWITCH_CONGESTION_SETTING = 0x008D
    HFI_CONGESTION_SETTING = 0x0090


class PortState:
    NOP, DOWN, INIT, ARMED, ACTIVE = 0, 1, 2, 3, 4


class PhysState:
    NOP, POLLING, DISABLED, TRAINING, LINKUP, ERROR_RECOVERY, OFFLINE = 0, 2, 3, 4, 5, 6, 9


class NodeTypeCode:
    HFI, SWITCH = 1, 2


TRAP_PORT_STATE_CHANGE = 128

# -- attributes -----------------------------------------------------------------------
NodeDescription = c.Struct("string" / c.Bytes(64))

NodeInfo = c.Struct(
    "base_version" / c.Int8ub,
    "class_version" / c.Int8ub,
    "node_type" / c.Int8ub,
    "num_ports" / c.Int8ub,
    "reserved" / c.Int32ub,
    "system_image_guid" / c.Int64ub,
    "node_guid" / c.Int64ub,
    "port_guid" / c.Int64ub,
    "partition_cap" / c.Int16ub,
    "device_id" / c.Int16ub,
    "revision" / c.Int32ub,
    "local_port_num" / c.Int8ub,
    "vendor_id" / c.Int24ub,
)

#: stl_sm_types.h STL_SWITCH_INFO (84 bytes); u1: LifeTimeValue [7:3], PortStateChange [2];
#: u2: EnhancedPort0 [3]; multicollect: CollectiveMask [5:3], MulticastMask [2:0]
SwitchInfo = c.Struct(
    "linear_fdb_cap" / c.Int32ub,
    "port_group_fdb_cap" / c.Int32ub,
    "multicast_fdb_cap" / c.Int32ub,
    "linear_fdb_top" / c.Int32ub,
    "multicast_fdb_top" / c.Int32ub,
    "collective_cap" / c.Int32ub,
    "collective_top" / c.Int32ub,
    "reserved" / c.Int32ub,
    "ipv6" / c.Bytes(16),
    "ipv4" / c.Bytes(4),
    "reserved26_28" / c.Bytes(12),
    "reserved21_23" / c.Bytes(3),
    "u1" / c.Int8ub,
    "reserved24" / c.Int16ub,
    "partition_enforcement_cap" / c.Int16ub,
    "port_group_cap" / c.Int8ub,
    "port_group_top" / c.Int8ub,
    "routing_mode_supported" / c.Int8ub,
    "routing_mode_enabled" / c.Int8ub,
    "u2" / c.Int8ub,
    "multi_collect_mask" / c.Int8ub,
    "adaptive_routing" / c.Int16ub,
    "capability_mask" / c.Int16ub,
    "capability_mask_collectives" / c.Int16ub,
)
SWITCH_INFO_LIFETIME_SHIFT = 3
SWITCH_INFO_PORT_STATE_CHANGE = 1 << 2
SWITCH_INFO_ENHANCED_PORT0 = 1 << 3
ROUTE_LINEAR = 1

#: opa_port_info.h struct opa_port_info (242 bytes), field for field as hfi1 fills it
PortInfo = c.Struct(
    "lid" / c.Int32ub,
    "flow_control_mask" / c.Int32ub,
    "vl_res" / c.Int8ub,
    "vl_cap" / c.Int8ub,
    "vl_high_limit" / c.Int16ub,
    "vl_preempt_limit" / c.Int16ub,
    "vl_arb_high_cap" / c.Int8ub,
    "vl_arb_low_cap" / c.Int8ub,
    "ps_reserved" / c.Int8ub,
    "ps_flags" / c.Int8ub,  # LEDEnabled [6], IsSMConfigurationStarted [5], NeighborNormal [4], OfflineReason [3:0]
    "ps_reserved2" / c.Int8ub,
    "ps_phys_state" / c.Int8ub,  # PortPhysicalState [7:4], PortState [3:0]
    "port_phys_conf" / c.Int8ub,
    "collectivemask_multicastmask" / c.Int8ub,
    "mkeyprotect_lmc" / c.Int8ub,
    "smsl" / c.Int8ub,
    "partenforce_filterraw" / c.Int8ub,
    "operational_vls" / c.Int8ub,
    "pkey_8b" / c.Int16ub,
    "pkey_10b" / c.Int16ub,
    "mkey_violations" / c.Int16ub,
    "pkey_violations" / c.Int16ub,
    "qkey_violations" / c.Int16ub,
    "sm_trap_qp" / c.Int32ub,
    "sa_qp" / c.Int32ub,
    "neigh_port_num" / c.Int8ub,
    "link_down_reason" / c.Int8ub,
    "neigh_link_down_reason" / c.Int8ub,
    "clientrereg_subnettimeout" / c.Int8ub,
    "link_speed_supported" / c.Int16ub,
    "link_speed_enabled" / c.Int16ub,
    "link_speed_active" / c.Int16ub,
    "link_width_supported" / c.Int16ub,
    "link_width_enabled" / c.Int16ub,
    "link_width_active" / c.Int16ub,
    "lwd_supported" / c.Int16ub,
    "lwd_enabled" / c.Int16ub,
    "lwd_tx_active" / c.Int16ub,
    "lwd_rx_active" / c.Int16ub,
    "port_link_mode" / c.Int16ub,
    "port_ltp_crc_mode" / c.Int16ub,
    "port_mode" / c.Int16ub,
    "packet_format_supported" / c.Int16ub,
    "packet_format_enabled" / c.Int16ub,
    "flit_interleave" / c.Int16ub,
    "flit_preemption" / c.Bytes(8),
    "max_lid" / c.Int32ub,  # reserved4 in hfi1's header, MaxLID in stl_sm_types.h
    "port_error_action" / c.Int32ub,
    "pass_through" / c.Int16ub,
    "mkey_lease_period" / c.Int16ub,
    "buffer_units" / c.Int32ub,
    "reserved5" / c.Int32ub,
    "sm_lid" / c.Int32ub,
    "mkey" / c.Int64ub,
    "subnet_prefix" / c.Int64ub,
    "neigh_mtu" / c.Bytes(16),
    "xmit_q" / c.Bytes(32),
    "ipv6" / c.Bytes(16),
    "ipv4" / c.Bytes(4),
    "reserved6_8" / c.Bytes(12),
    "neigh_node_guid" / c.Int64ub,
    "ib_cap_mask" / c.Int32ub,
    "reserved9" / c.Int16ub,
    "opa_cap_mask" / c.Int16ub,
    "reserved10" / c.Int32ub,
    "overall_buffer_space" / c.Int16ub,
    "reserved11" / c.Int16ub,
    "diag_code" / c.Int16ub,
    "replay_depth_buffer" / c.Int8ub,
    "replay_depth_wire" / c.Int8ub,
    "port_neigh_mode" / c.Int8ub,  # MgmtAllowed [3], FWAuthBypass [2], NeighborNodeType [1:0]
    "mtucap" / c.Int8ub,
    "resptimevalue" / c.Int8ub,
    "local_port_num" / c.Int8ub,
    "reserved12" / c.Int8ub,
    "reserved13" / c.Int8ub,
)
PORT_INFO = Fixed(PortInfo)
PS_NEIGHBOR_NORMAL = 1 << 4
PS_SM_CONFIG_STARTED = 1 << 5
AM_START_OF_SM_CONFIG = 1 << 9

#: struct opa_port_state_info (8 bytes per port)
PortStateInfo = c.Struct(
    "ps_reserved" / c.Int8ub,
    "ps_flags" / c.Int8ub,
    "ps_reserved2" / c.Int8ub,
    "ps_phys_state" / c.Int8ub,
    "lwd_tx_active" / c.Int16ub,
    "lwd_rx_active" / c.Int16ub,
)
PORT_STATE_INFO = Fixed(PortStateInfo)

AggregateSegment = c.Struct("attr_id" / c.Int16ub, "err_reqlength" / c.Int16ub, "attr_mod" / c.Int32ub)
AGGREGATE_SEGMENT = Fixed(AggregateSegment)
AGGREGATE_ERROR = 0x8000
AGGREGATE_LENGTH_MASK = 0x7F
AGGREGATE_MAX_SEGMENTS = 117

#: STL_NOTICE / hfi1 struct opa_mad_notice_attr: Generic [7] Type [6:0] | ProducerType 24 |
#: TrapNumber | Toggle [15] Count [14:0] | IssuerLID | rsv | IssuerGID | data 64
Notice = c.Struct(
    "generic_type" / c.Int8ub,
    "producer_type" / c.Int24ub,
    "trap_num" / c.Int16ub,
    "toggle_count" / c.Int16ub,
    "issuer_lid" / c.Int32ub,
    "reserved" / c.Int32ub,
    "issuer_gid" / c.Bytes(16),
    "data" / c.Bytes(64),
)
NOTICE_GENERIC = 0x80
NOTICE_TYPE_URGENT = 1
PRODUCER_SWITCH = 2

CongestionInfo = c.Struct("congestion_info" / c.Int16ub, "control_table_cap" / c.Int8ub,
                          "congestion_log_length" / c.Int8ub)

PKEY_BLOCK_ENTRIES = 32
PKEY_BLOCK_BYTES = 64
LFT_BLOCK_BYTES = 64
MFT_BLOCK_ENTRIES = 8
MFT_BLOCK_BYTES = 64
SC_TABLE_BYTES = 32  # SLtoSC, SCtoSL, SCtoVLx, one SCtoSC block
BUFFER_CONTROL_BYTES = 132  # opa: reserved 2 | overall shared limit 2 | 32 x (dedicated 2, shared 2)
BUFFER_CONTROL_STRIDE = 136  # blocks of a multi-port request are padded to 8 bytes
#: STL_VLARB_TABLE: a union of 128 (VL, weight) elements and the 32 x u32 preemption
#: matrix, so a block per port is 256 bytes (hfi1 fills the first 16 elements)
VL_ARB_BLOCK_BYTES = 256
VL_ARB_PREEMPT_MATRIX_BYTES = 128
SWITCH_CONGESTION_SETTING_BYTES = 76
HFI_CONGESTION_SETTING_BYTES = 4 + 2 + 32 * 6  # opa_congestion_setting_attr: control map, port control, 32 entries

# -- the PMA (class 0x04) ------------------------------------------------------------------


class PmaAttr:
    CLASS_PORT_INFO = 0x0001
    PORT_STATUS = 0x0040
    CLEAR_PORT_STATUS = 0x0041
    DATA_PORT_COUNTERS = 0x0042
    ERROR_PORT_COUNTERS = 0x0043
    ERROR_INFO = 0x0044


PMA_HEADER_BYTES = 24
PMA_DATA_BYTES = 2024

#: struct opa_class_port_info (80 bytes)
ClassPortInfo = c.Struct(
    "base_version" / c.Int8ub,
    "class_version" / c.Int8ub,
    "cap_mask" / c.Int16ub,
    "cap_mask2_resp_time" / c.Int32ub,
    "redirect_gid" / c.Bytes(16),
    "redirect_tc_fl" / c.Int32ub,
    "redirect_lid" / c.Int32ub,
    "redirect_sl_qp" / c.Int32ub,
    "redirect_qkey" / c.Int32ub,
    "trap_gid" / c.Bytes(16),
    "trap_tc_fl" / c.Int32ub,
    "trap_lid" / c.Int32ub,
    "trap_hl_qp" / c.Int32ub,
    "trap_qkey" / c.Int32ub,
    "trap_pkey" / c.Int16ub,
    "redirect_pkey" / c.Int16ub,
    "trap_sl_rsvd" / c.Int8ub,
    "reserved" / c.Bytes(3),
)

#: the request part shared by DataPortCounters, ErrorPortCounters, ErrorInfo
PortSelect = c.Struct("port_select_mask" / c.Bytes(32), "select_mask" / c.Int32ub, "resolution" / c.Int32ub)
PORT_SELECT = Fixed(PortSelect)
ClearPortStatus = c.Struct("port_select_mask" / c.Bytes(32), "counter_select_mask" / c.Int32ub)
CLEAR_PORT_STATUS = Fixed(ClearPortStatus)

DATA_COUNTER_NAMES = (
    "port_xmit_data", "port_rcv_data", "port_xmit_pkts", "port_rcv_pkts", "port_multicast_xmit_pkts",
    "port_multicast_rcv_pkts", "port_xmit_wait", "sw_port_congestion", "port_rcv_fecn", "port_rcv_becn",
    "port_xmit_time_cong", "port_xmit_wasted_bw", "port_xmit_wait_data", "port_rcv_bubble", "port_mark_fecn",
    "port_error_counter_summary",
)
#: struct _port_dctrs (136 bytes) then 13 x u64 per selected VL
PortDataCounters = c.Struct("port_number" / c.Int8ub, "reserved2" / c.Bytes(3), "link_quality_indicator" / c.Int32ub,
                            *[name / c.Int64ub for name in DATA_COUNTER_NAMES])
PORT_DATA_COUNTERS = Fixed(PortDataCounters)
VL_DATA_COUNTER_BYTES = 13 * 8

ERROR_COUNTER_NAMES = (
    "port_rcv_constraint_errors", "port_rcv_switch_relay_errors", "port_xmit_discards",
    "port_xmit_constraint_errors", "port_rcv_remote_physical_errors", "local_link_integrity_errors",
    "port_rcv_errors", "excessive_buffer_overruns", "fm_config_errors",
)
#: struct _port_ectrs (96 bytes) then one u64 (xmit discards) per selected VL
PortErrorCounters = c.Struct("port_number" / c.Int8ub, "reserved2" / c.Bytes(7),
                             *[name / c.Int64ub for name in ERROR_COUNTER_NAMES],
                             "link_error_recovery" / c.Int32ub, "link_downed" / c.Int32ub,
                             "uncorrectable_errors" / c.Int8ub, "reserved3" / c.Bytes(7))
PORT_ERROR_COUNTERS = Fixed(PortErrorCounters)
VL_ERROR_COUNTER_BYTES = 8
#: struct opa_port_status_req (hfi1 mad.c): the port (0: the receiving one) and the VLs wanted
PortStatusRequest = c.Struct("port_num" / c.Int8ub, "reserved" / c.Bytes(3), "vl_select_mask" / c.Int32ub)
PORT_STATUS_REQUEST = Fixed(PortStatusRequest)
#: struct opa_port_status_rsp (216 bytes), then 14 x u64 per selected VL (struct _vls_pctrs)
PortStatus = c.Struct("port_num" / c.Int8ub, "reserved" / c.Bytes(3), "vl_select_mask" / c.Int32ub,
                      *[name / c.Int64ub for name in DATA_COUNTER_NAMES[:-1]],
                      *[name / c.Int64ub for name in ERROR_COUNTER_NAMES],
                      "link_error_recovery" / c.Int32ub, "link_downed" / c.Int32ub,
                      "uncorrectable_errors" / c.Int8ub, "link_quality_indicator" / c.Int8ub, "res2" / c.Bytes(6))
PORT_STATUS = Fixed(PortStatus)
VL_PORT_STATUS_BYTES = 14 * 8
#: PortStatus's vl_select_mask may name VLs 0-7 and 15 (mad.c VL_MASK_ALL), at most OPA_MAX_VLS of them
PORT_STATUS_VL_MASK = 0x80FF
#: struct _port_ei: port number, then the per-error records hfi1 fills (zeros: nothing latched)
PORT_ERROR_INFO_BYTES = 72

#: ClearPortStatus counter_select_mask bits (mad.c enum counter_selects), by counter name
COUNTER_SELECT = {
    "port_xmit_data": 1 << 31, "port_rcv_data": 1 << 30, "port_xmit_pkts": 1 << 29, "port_rcv_pkts": 1 << 28,
    "port_multicast_xmit_pkts": 1 << 27, "port_multicast_rcv_pkts": 1 << 26, "port_xmit_wait": 1 << 25,
    "sw_port_congestion": 1 << 24, "port_rcv_fecn": 1 << 23, "port_rcv_becn": 1 << 22,
    "port_xmit_time_cong": 1 << 21, "port_xmit_wasted_bw": 1 << 20, "port_xmit_wait_data": 1 << 19,
    "port_rcv_bubble": 1 << 18, "port_mark_fecn": 1 << 17, "port_rcv_constraint_errors": 1 << 16,
    "port_rcv_switch_relay_errors": 1 << 15, "port_xmit_discards": 1 << 14,
    "port_xmit_constraint_errors": 1 << 13, "port_rcv_remote_physical_errors": 1 << 12,
    "local_link_integrity_errors": 1 << 11, "port_rcv_errors": 1 << 10, "excessive_buffer_overruns": 1 << 9,
    "fm_config_errors": 1 << 8, "link_error_recovery": 1 << 7, "link_downed": 1 << 6,
    "uncorrectable_errors": 1 << 5,
}


def port_select(mask: bytes) -> list[int]:
    """Ports named by a 256-bit big-endian port select mask (bit 0 of the last byte = port 0)."""
    value = int.from_bytes(mask, "big")
    return [port for port in range(256) if value >> port & 1]
