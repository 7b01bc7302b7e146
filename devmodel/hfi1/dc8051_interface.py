"""The 8051 firmware's host interface, as chip.h and chip.c define it: host
command types and return codes, HOST_MSG bits, the "firmware register"
fields and where they live in the 8051's data RAM, physical states and
link-down reasons. Shared by the 8051 (`dc8051.py`) and its link state
machine (`lni.py`).
"""
from __future__ import annotations

from enum import IntEnum, IntFlag

NUM_GENERAL_FIELDS = 0x17
NUM_LANE_FIELDS = 0x8
GENERAL_CONFIG = 4  # lane id of the general fields
LANES = 4
#: chip.h LDR_* (LINK_DOWN_REASON byte 0)
LDR_LINK_TRANSFER_ACTIVE_LOW = 0xA
LDR_RECEIVED_LINKDOWN_IDLE_MSG = 0xB
LDR_RECEIVED_HOST_OFFLINE_REQ = 0xC
LINK_QUALITY_EXCELLENT = 5
LINK_QUALITY_SHIFT = 24
DOWN_REMOTE_REASON_SHIFT = 16  # LINK_QUALITY_INFO [23:16]: the neighbour's planned-down reason
LINK_DOWN_REASON_MASK = 0xFF  # LINK_DOWN_REASON [7:0]; [31:24] is the firmware's patch version
STS_FM_VERSION_MAJOR_SHIFT = 24  # MISC_STATUS
STS_FM_VERSION_MINOR_SHIFT = 16  # MISC_STATUS
STS_FM_VERSION_PATCH_SHIFT = 24  # VERSION_PATCH (the LINK_DOWN_REASON word)
HOST_INTERFACE_VERSION_SHIFT = 16  # RESERVED_REGISTERS [23:16]
REMOTE_TX_RATE_SHIFT = 16  # VERIFY_CAP_REMOTE_LINK_WIDTH [23:16]; [15:0] link widths
MAX_RATE_SHIFT = 24  # TX_SETTINGS [31:24]
ENABLE_LANE_RX_SHIFT = 16  # LOCAL_LNI_INFO [23:16]
MGMT_ALLOWED_SHIFT = 23  # REMOTE_LNI_INFO
ALL_LANES = 0xF
#: chip.h IDLE_* (the type, [3:0] of an idle message; the payload is [47:8])
IDLE_SMA = 0x3
IDLE_MSG_TYPE_MASK = 0xF
#: chip.h SMA_IDLE_* (the payload's low byte)
SMA_IDLE_ARM = 1
SMA_IDLE_ACTIVE = 2


class PhysicalState(IntEnum):
    """DC_DC8051_STS_CUR_STATE.PORT (chip.h PLS_*): the states the model
    reports (sub-states it passes through at once are not)."""

    POLLING = 0x20
    DISABLED = 0x30
    CONFIGPHY = 0x40
    CONFIGPHY_VERIFYCAP = 0x46  # VerifyCap frames exchanged, waiting for the host
    CONFIGLT = 0x48  # the host said LinkUp; waiting for the other end to say it too
    CONFIGLT_LINK_TRANSFER_ACTIVE = 0x49
    LINKUP = 0x50
    OFFLINE = 0x90  # Offline.Quiet
    OFFLINE_PLANNED_DOWN_INFORM = 0x91
    OFFLINE_READY_TO_QUIET_LT = 0x92
    OFFLINE_REPORT_FAILURE = 0x93
    OFFLINE_READY_TO_QUIET_BCC = 0x94
    OFFLINE_QUIET_DURATION = 0x95
    PHYTEST = 0xB0
    INTERNAL_SERDES_LOOPBACK = 0xE1
    QUICK_LINKUP = 0xE2  # a request, never a state


class LinkError(IntFlag):
    """DC_DC8051_DBG_ERR_INFO_SET_BY_8051.ERROR (chip.h): what went wrong in LNI."""

    SPICO_ROM_FAILED = 1 << 0
    UNKNOWN_FRAME = 1 << 1
    TARGET_BER_NOT_MET = 1 << 2
    FAILED_SERDES_INTERNAL_LOOPBACK = 1 << 3
    FAILED_SERDES_INIT = 1 << 4
    FAILED_LNI_POLLING = 1 << 5
    FAILED_LNI_DEBOUNCE = 1 << 6
    FAILED_LNI_ESTBCOMM = 1 << 7
    FAILED_LNI_OPTEQ = 1 << 8
    FAILED_LNI_VERIFY_CAP1 = 1 << 9
    FAILED_LNI_VERIFY_CAP2 = 1 << 10
    FAILED_LNI_CONFIGLT = 1 << 11
    HOST_HANDSHAKE_TIMEOUT = 1 << 12
    EXTERNAL_DEVICE_REQ_TIMEOUT = 1 << 13


class HostCommand(IntEnum):
    LOAD_CONFIG_DATA = 0x01
    READ_CONFIG_DATA = 0x02
    CHANGE_PHY_STATE = 0x03
    SEND_LCB_IDLE_MSG = 0x04
    MISC = 0x05
    READ_LCB_IDLE_MSG = 0x06
    READ_LCB_CSR = 0x07
    WRITE_LCB_CSR = 0x08
    INTERFACE_TEST = 0xFF


class ReturnCode(IntEnum):
    INVALID = 0x01  # [inferred] the driver only tests for SUCCESS
    SUCCESS = 0x02
    NOT_SUPPORTED = 0x03


class HostMessage(IntFlag):
    """DC_DC8051_DBG_ERR_INFO_SET_BY_8051.HOST_MSG."""

    HOST_REQ_DONE = 1 << 0
    BC_PWR_MGM_MSG = 1 << 1
    BC_SMA_MSG = 1 << 2
    BC_BCC_UNKNOWN_MSG = 1 << 3
    BC_IDLE_UNKNOWN_MSG = 1 << 4
    EXT_DEVICE_CFG_REQ = 1 << 5
    VERIFY_CAP_FRAME = 1 << 6
    LINKUP_ACHIEVED = 1 << 7
    LINK_GOING_DOWN = 1 << 8
    LINK_WIDTH_DOWNGRADED = 1 << 9


class ConfigField(IntEnum):
    """8051 general "firmware register" field ids (chip.h)."""

    LINK_TUNING_PARAMETERS = 0x02
    TX_SETTINGS = 0x06
    VERIFY_CAP_LOCAL_PHY = 0x07
    VERIFY_CAP_LOCAL_FABRIC = 0x08
    VERIFY_CAP_LOCAL_LINK_MODE = 0x09
    LOCAL_DEVICE_ID = 0x0A
    RESERVED_REGISTERS = 0x0B
    LOCAL_LNI_INFO = 0x0C
    REMOTE_LNI_INFO = 0x0D
    MISC_STATUS = 0x0E
    VERIFY_CAP_REMOTE_PHY = 0x0F
    VERIFY_CAP_REMOTE_FABRIC = 0x10
    VERIFY_CAP_REMOTE_LINK_WIDTH = 0x11
    LAST_LOCAL_STATE_COMPLETE = 0x12
    LAST_REMOTE_STATE_COMPLETE = 0x13
    LINK_QUALITY_INFO = 0x14
    REMOTE_DEVICE_ID = 0x15
    LINK_DOWN_REASON = 0x16  # byte 0; VERSION_PATCH is byte 3 of the same word


def config_address(field_id: int, lane_id: int) -> int:
    """Byte address of a firmware register in data RAM (`read_8051_config`)."""
    if lane_id < LANES:
        return 4 * NUM_GENERAL_FIELDS + lane_id * 4 * NUM_LANE_FIELDS + 4 * field_id
    return 4 * field_id
