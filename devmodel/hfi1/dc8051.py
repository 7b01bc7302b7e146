"""DC 8051: the link microcontroller, its host mailbox, data RAM and link state.

    DC_DC8051_CFG_RAM_ACCESS_SETUP   0x602000 RW  [0] RAM_SEL (1 = code RAM), [8] AUTO_INCR_ADDR
    DC_DC8051_CFG_RAM_ACCESS_CTRL    0x602008 RW  [14:0] ADDRESS, [16] READ_ENA, [24] WRITE_ENA
    DC_DC8051_CFG_RAM_ACCESS_WR_DATA 0x602010 RW  written at ADDRESS while WRITE_ENA
    DC_DC8051_CFG_RAM_ACCESS_STATUS  0x602018 RO  [16] ACCESS_COMPLETED
    DC_DC8051_CFG_RAM_ACCESS_RD_DATA 0x602020 RO  8 bytes at ADDRESS & ~7
    DC_DC8051_CFG_HOST_CMD_0         0x602028 RW  [0] REQ_NEW, [15:8] REQ_TYPE, [63:16] REQ_DATA
    DC_DC8051_CFG_HOST_CMD_1         0x602030 RO  [0] COMPLETED, [15:8] RETURN_CODE, [63:16] RSP_DATA
    DC_DC8051_CFG_LOCAL_GUID         0x602038 RO
    DC_DC8051_STS_REMOTE_GUID/NODE_TYPE/FM_SECURITY/PORT_NO  RO  neighbour, from LNI
    DC_DC8051_STS_LOCAL_FM_SECURITY  0x602050 RO  [0] disabled
    DC_DC8051_STS_CUR_STATE          0x602060 RO  [7:0] physical state, [23:16] firmware (0xA0 ready)
    DC_DC8051_CFG_RST                0x602068 RW  [0] M8051W: hold the 8051 in reset, [1] CRAM,
                                                 [2] DRAM, [3] IRAM, [4] SFR: reset that memory
    DC_DC8051_CFG_MODE               0x602070 RW
    DC_DC8051_DBG_ERR_INFO_SET_BY_8051 0x6020D8 RO [15:0] HOST_MSG, [47:16] ERROR
    DC_DC8051_ERR_FLG/CLR/EN         0x6020E0/E8/F0  second tier of source 250;
                                                 [0] SET_BY_8051 = "read DBG_ERR_INFO"
    DC_DC8051_CFG_CSR_ACCESS_SEL     0x602110 RW  [0] LCB, [1] DCC owned by the host
    DC_DC8051_CFG_EXT_DEV_0/1        0x602118/20  8051 -> host requests and their answers

Host commands (`do_8051_command`): the driver writes HOST_CMD_0 with the type
and data, then again with REQ_NEW. The command runs on that 0 -> 1 edge and
HOST_CMD_1 reports COMPLETED with the return code (2 = success). A write with
REQ_NEW clear drops COMPLETED, so a stale completion is never mistaken for the
next command's.

The data RAM holds the "firmware registers": general field f at 4f, lane
field f of lane l at 4*0x17 + 0x20*l + 4f (the address formula of
`read_8051_config`, which reads the RAM directly); LOAD_CONFIG_DATA writes
there too [inferred: the real firmware's placement is not documented, this is
the one the driver reads back].

The physical link (Offline, Polling, VerifyCap, ConfigLT, LinkUp) is the
firmware's state machine in `lni.py`; `self.link` is that machine.

The microcontroller itself (`McuState`):

    HELD --reset released (CCE_DC_CTRL.DC_RESET and CFG_RST.M8051W both 0)-->
        functional simulator: RUNNING at once (the driver loads no firmware and
            treats the 8051 as always ready)
        RTL silicon, code RAM authenticated (`misc.dc8051_authorized`): BOOTING,
            then after `dc8051_boot_s` RUNNING: the firmware version (from the
            code's descriptor, `firmware.dc8051_version`) in MISC_STATUS and
            VERSION_PATCH, physical state Offline, CUR_STATE.FIRMWARE 0xA0
        RTL silicon, nothing authenticated: NO_FIRMWARE: CUR_STATE reads 0 and
            no host command completes, as a core with no code would
    any --DC reset or CFG_RST.M8051W--> HELD (the link drops without a word)

On silicon the driver loads the code RAM through the RAM window (SETUP.RAM_SEL
1, WRITE_ENA) with the core held; each qword also goes to the MISC block's
hasher (`misc.capture`), and any write, a CFG_RST.CRAM reset or a DC reset
revokes the code's authorization. A CFG_RST.M8051W pulse alone
(`_dc_shutdown`/`_dc_start`) reboots the same, still authorized code.

Idle messages (silicon): SEND_LCB_IDLE_MSG sends one across the link while it
is up (`lni.py`); one arriving is queued (at most IDLE_QUEUE) for
READ_LCB_IDLE_MSG and announced with HOST_MSG BC_SMA_MSG (type 3, SMA) or
BC_IDLE_UNKNOWN_MSG.

The 8051 clears its HOST_MSG word at the start of a host command once the host
has acknowledged it (cleared ERR_FLG.SET_BY_8051) [inferred]; each command
leaves HOST_REQ_DONE behind, which the driver treats as informational.

Collaborators: the interrupt controller (DC8051 errors, source 250), the CCE
(is the DC held in reset?), the MISC block (code RAM authorization and
capture), and, for its link state machine (`lni.PhysicalLink`), the port and
the DCC (logical state).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum

from common.ratelog import limited
from devmodel.fabric import PortIdentity
from devmodel.regs import Access, Register

from . import firmware
from .cce import Cce
from .chip_registers import (
    DC_DC8051_CFG_CSR_ACCESS_SEL_DCC_SMASK,
    DC_DC8051_CFG_CSR_ACCESS_SEL_LCB_SMASK,
    DC_DC8051_CFG_EXT_DEV_0,
    DC_DC8051_CFG_EXT_DEV_0_RETURN_CODE_SHIFT,
    DC_DC8051_CFG_EXT_DEV_0_RSP_DATA_SHIFT,
    DC_DC8051_CFG_EXT_DEV_1,
    DC_DC8051_CFG_EXT_DEV_1_REQ_DATA_SHIFT,
    DC_DC8051_CFG_HOST_CMD_0_REQ_DATA_MASK,
    DC_DC8051_CFG_HOST_CMD_0_REQ_DATA_SHIFT,
    DC_DC8051_CFG_HOST_CMD_0_REQ_NEW_SMASK,
    DC_DC8051_CFG_HOST_CMD_0_REQ_TYPE_MASK,
    DC_DC8051_CFG_HOST_CMD_0_REQ_TYPE_SHIFT,
    DC_DC8051_CFG_HOST_CMD_1,
    DC_DC8051_CFG_HOST_CMD_1_COMPLETED_SMASK,
    DC_DC8051_CFG_HOST_CMD_1_RETURN_CODE_SHIFT,
    DC_DC8051_CFG_HOST_CMD_1_RSP_DATA_MASK,
    DC_DC8051_CFG_HOST_CMD_1_RSP_DATA_SHIFT,
    DC_DC8051_CFG_RAM_ACCESS_CTRL,
    DC_DC8051_CFG_RAM_ACCESS_CTRL_ADDRESS_MASK,
    DC_DC8051_CFG_RAM_ACCESS_CTRL_READ_ENA_SMASK,
    DC_DC8051_CFG_RAM_ACCESS_CTRL_WRITE_ENA_SMASK,
    DC_DC8051_CFG_RAM_ACCESS_RD_DATA,
    DC_DC8051_CFG_RAM_ACCESS_SETUP,
    DC_DC8051_CFG_RAM_ACCESS_SETUP_AUTO_INCR_ADDR_SMASK,
    DC_DC8051_CFG_RAM_ACCESS_SETUP_RAM_SEL_SMASK,
    DC_DC8051_CFG_RAM_ACCESS_STATUS,
    DC_DC8051_CFG_RAM_ACCESS_STATUS_ACCESS_COMPLETED_SMASK,
    DC_DC8051_CFG_RST,
    DC_DC8051_CFG_RST_CRAM_SMASK,
    DC_DC8051_CFG_RST_DRAM_SMASK,
    DC_DC8051_CFG_RST_M8051W_SMASK,
    DC_DC8051_DBG_ERR_INFO_SET_BY_8051,
    DC_DC8051_DBG_ERR_INFO_SET_BY_8051_ERROR_SHIFT,
    DC_DC8051_ERR_FLG_SET_BY_8051_SMASK,
    DC_DC8051_STS_CUR_STATE_FIRMWARE_SHIFT,
    DC_LCB_CFG_RUN,
)
from .csr import Block, csr, csrs, field
from .dc8051_interface import (
    GENERAL_CONFIG,
    IDLE_MSG_TYPE_MASK,
    IDLE_SMA,
    LANES,
    NUM_GENERAL_FIELDS,
    NUM_LANE_FIELDS,
    STS_FM_VERSION_MAJOR_SHIFT,
    STS_FM_VERSION_MINOR_SHIFT,
    STS_FM_VERSION_PATCH_SHIFT,
    ConfigField,
    HostCommand,
    HostMessage,
    PhysicalState,
    ReturnCode,
    config_address,
)
from .dcc import Dcc
from .intr import DC8051_INT, ErrorFlags, InterruptController
from .lni import PhysicalLink
from .misc import Download, Misc
from .port import Hfi1Port
from .services import ChipServices

DATA_RAM_SIZE = 0x1000  # chip.h DC8051_DATA_MEM_SIZE
CODE_RAM_SIZE = 0x8000  # RAM_ACCESS_CTRL.ADDRESS is 15 bits
FIRMWARE_READY = 0xA0
LOAD_DATA_FIELD_ID_SHIFT = 40
LOAD_DATA_LANE_ID_SHIFT = 32
HCMD_MISC_REQUEST_LCB_ACCESS = 0x1
HCMD_MISC_GRANT_LCB_ACCESS = 0x2
#: idle messages from the other end waiting for READ_LCB_IDLE_MSG
IDLE_QUEUE = 64


class McuState(Enum):
    HELD = "held in reset"
    NO_FIRMWARE = "out of reset with no authenticated code"
    BOOTING = "booting"
    RUNNING = "running"


class LcbOwner(Enum):
    """Who may touch the LCB CSRs (HCMD_MISC request/grant)."""

    HOST = "host"
    DC8051 = "8051"


#: HCMD_MISC sub-commands: who holds the LCB CSRs afterwards
LCB_ACCESS = {HCMD_MISC_REQUEST_LCB_ACCESS: LcbOwner.HOST, HCMD_MISC_GRANT_LCB_ACCESS: LcbOwner.DC8051}


class Dc8051(Block):
    name = "dc8051"

    def __init__(self, services: ChipServices, intr: InterruptController, cce: Cce, misc: Misc,
                 port: Hfi1Port, dcc: Dcc):
        self.intr = intr
        self.cce = cce
        self.misc = misc
        self.port = port
        self.dcc = dcc
        super().__init__(services)

    def declare(self) -> list[Register]:
        self.errors = ErrorFlags(self.intr, DC8051_INT, "DC_DC8051_ERR_FLG", "DC_DC8051_ERR_CLR", "DC_DC8051_ERR_EN")
        self.data_ram = bytearray(DATA_RAM_SIZE)
        self.code_ram = bytearray(CODE_RAM_SIZE)
        self.mcu = McuState.HELD
        self.link = PhysicalLink(self, self.port, self.dcc)
        self.lcb_owner = LcbOwner.HOST
        self.idle_messages_sent: deque[int] = deque(maxlen=IDLE_QUEUE)
        self.idle_messages_received: deque[int] = deque(maxlen=IDLE_QUEUE)
        self.version = (0, 0, 0)
        self._boot = None
        self._ram_address = 0
        return [
            csr("DC_DC8051_CFG_RAM_ACCESS_SETUP"),
            csr("DC_DC8051_CFG_RAM_ACCESS_CTRL", on_write=self._ram_ctrl),
            csr("DC_DC8051_CFG_RAM_ACCESS_WR_DATA", on_write=self._ram_write_data),
            csr("DC_DC8051_CFG_RAM_ACCESS_STATUS", access=Access.RO),
            csr("DC_DC8051_CFG_RAM_ACCESS_RD_DATA", access=Access.RO),
            csr("DC_DC8051_CFG_HOST_CMD_0", on_write=self._host_cmd),
            csr("DC_DC8051_CFG_HOST_CMD_1", access=Access.RO),
            csr("DC_DC8051_CFG_LOCAL_GUID", access=Access.RO, reset=self.config.guid),
            *csrs("DC_DC8051_STS_REMOTE_GUID", "DC_DC8051_STS_REMOTE_NODE_TYPE", "DC_DC8051_STS_REMOTE_PORT_NO",
                  "DC_DC8051_STS_REMOTE_FM_SECURITY", access=Access.RO),
            csr("DC_DC8051_STS_LOCAL_FM_SECURITY", access=Access.RO, reset=1),
            csr("DC_DC8051_STS_CUR_STATE", access=Access.RO, on_read=lambda _v: self.cur_state()),
            csr("DC_DC8051_CFG_RST", on_write=self._cfg_rst),
            csr("DC_DC8051_CFG_MODE"),
            csr("DC_DC8051_DBG_ERR_INFO_SET_BY_8051", access=Access.RO),
            *self.errors.declare(),
            csr("DC_DC8051_CFG_CSR_ACCESS_SEL",
                reset=DC_DC8051_CFG_CSR_ACCESS_SEL_LCB_SMASK | DC_DC8051_CFG_CSR_ACCESS_SEL_DCC_SMASK),
            csr("DC_DC8051_CFG_EXT_DEV_0"),
            csr("DC_DC8051_CFG_EXT_DEV_1", access=Access.RO),
        ]

    # -- power, reset ----------------------------------------------------------
    def reset(self) -> None:
        """FLR or DC reset: the core held, its memories cleared, its code no
        longer authorized."""
        self.link.reset()
        self._cancel_boot()
        self.data_ram[:] = bytes(DATA_RAM_SIZE)
        self._clear_code_ram("DC reset")
        self.mcu = McuState.HELD
        self.lcb_owner = LcbOwner.HOST
        self.idle_messages_sent.clear()
        self.idle_messages_received.clear()
        self.version = (0, 0, 0)
        self._ram_address = 0

    def _clear_code_ram(self, why: str) -> None:
        self.code_ram[:] = bytes(CODE_RAM_SIZE)
        self.misc.revoke_8051(why)

    def _cancel_boot(self) -> None:
        if self._boot is not None:
            self._boot.cancel()
            self._boot = None

    def _set_mcu(self, state: McuState) -> None:
        if state is not self.mcu:
            self.log.info("DC_DC8051_STS_CUR_STATE: 8051 core %s -> %s", self.mcu.value, state.value)
        self.mcu = state

    def hold(self) -> None:
        """DC reset asserted or CFG_RST.M8051W set: the 8051 stops."""
        self._cancel_boot()
        if self.mcu is McuState.HELD:
            return
        if self.mcu is McuState.RUNNING:
            self.link.halt()
        self._set_mcu(McuState.HELD)

    def release(self) -> None:
        """Leave reset: the firmware boots into Offline -- at once in
        functional-simulator mode, after `dc8051_boot_s` on silicon if its
        code is authenticated, never if it is not."""
        if self.mcu is not McuState.HELD or self.cce.dc_in_reset:
            return
        if self.regs.get(DC_DC8051_CFG_RST) & DC_DC8051_CFG_RST_M8051W_SMASK:
            return
        if not self.config.silicon:
            self._set_mcu(McuState.RUNNING)
            self.link.state = PhysicalState.OFFLINE
            return
        if not self.misc.dc8051_authorized:
            self._set_mcu(McuState.NO_FIRMWARE)
            return
        self._set_mcu(McuState.BOOTING)
        self._boot = self.services.after(self.config.dc8051_boot_s, self._booted)

    def _booted(self) -> None:
        """The firmware is up: its version where `read_misc_status` reads it,
        the link Offline, ready for host commands."""
        self._boot = None
        if self.mcu is not McuState.BOOTING:
            return
        self.version = firmware.dc8051_version(bytes(self.code_ram)) or self.config.dc8051_default_version
        major, minor, patch = self.version
        status = self.read_config(ConfigField.MISC_STATUS) & 0xFFFF
        self.write_config(ConfigField.MISC_STATUS,
                          status | major << STS_FM_VERSION_MAJOR_SHIFT | minor << STS_FM_VERSION_MINOR_SHIFT)
        down = self.read_config(ConfigField.LINK_DOWN_REASON) & 0x00FFFFFF
        self.write_config(ConfigField.LINK_DOWN_REASON, down | patch << STS_FM_VERSION_PATCH_SHIFT)
        self.link.state = PhysicalState.OFFLINE
        self._set_mcu(McuState.RUNNING)
        self.log.info("8051 firmware %d.%d.%d ready, physical state OFFLINE", major, minor, patch)

    def _cfg_rst(self, old: int, new: int) -> None:
        memories = DC_DC8051_CFG_RST_CRAM_SMASK | DC_DC8051_CFG_RST_DRAM_SMASK
        if not new & DC_DC8051_CFG_RST_M8051W_SMASK:
            if new & memories:  # the driver resets them with the core (firmware.c load_8051_firmware)
                limited(self, self.log, "8051 memory resets ignored").warning(
                    "DC_DC8051_CFG_RST %#x: memory reset without M8051W ignored (the 8051 runs "
                    "from them)", new)
            if old & DC_DC8051_CFG_RST_M8051W_SMASK:
                self.release()
            return
        self.hold()
        if new & DC_DC8051_CFG_RST_CRAM_SMASK:
            self._clear_code_ram("DC_DC8051_CFG_RST.CRAM")
        if new & DC_DC8051_CFG_RST_DRAM_SMASK:
            self.data_ram[:] = bytes(DATA_RAM_SIZE)

    @property
    def running(self) -> bool:
        return self.mcu is McuState.RUNNING

    def state_name(self) -> str:
        """The physical state while the firmware runs, else the core's state."""
        return self.link.state.name if self.running else self.mcu.name

    @property
    def link_is_up(self) -> bool:
        return self.link.is_up

    def cur_state(self) -> int:
        if not self.running:
            return 0
        return self.link.state | FIRMWARE_READY << DC_DC8051_STS_CUR_STATE_FIRMWARE_SHIFT

    # -- RAM window ------------------------------------------------------------
    def _ram(self) -> bytearray:
        setup = self.regs.get(DC_DC8051_CFG_RAM_ACCESS_SETUP)
        return self.code_ram if setup & DC_DC8051_CFG_RAM_ACCESS_SETUP_RAM_SEL_SMASK else self.data_ram

    def _ram_advance(self) -> None:
        if self.regs.get(DC_DC8051_CFG_RAM_ACCESS_SETUP) & DC_DC8051_CFG_RAM_ACCESS_SETUP_AUTO_INCR_ADDR_SMASK:
            self._ram_address = (self._ram_address + 8) % len(self._ram())

    def _ram_ctrl(self, old: int, new: int) -> None:
        self._ram_address = (new & DC_DC8051_CFG_RAM_ACCESS_CTRL_ADDRESS_MASK) & ~7
        status = DC_DC8051_CFG_RAM_ACCESS_STATUS
        if not new & (DC_DC8051_CFG_RAM_ACCESS_CTRL_READ_ENA_SMASK | DC_DC8051_CFG_RAM_ACCESS_CTRL_WRITE_ENA_SMASK):
            self.regs.clear_bits(status, DC_DC8051_CFG_RAM_ACCESS_STATUS_ACCESS_COMPLETED_SMASK)
            return
        if new & DC_DC8051_CFG_RAM_ACCESS_CTRL_READ_ENA_SMASK:
            ram = self._ram()
            start = self._ram_address % len(ram)
            self.regs.set(DC_DC8051_CFG_RAM_ACCESS_RD_DATA, int.from_bytes(ram[start:start + 8], "little"))
            self._ram_advance()
        self.regs.set_bits(status, DC_DC8051_CFG_RAM_ACCESS_STATUS_ACCESS_COMPLETED_SMASK)

    def _ram_write_data(self, _old: int, new: int) -> None:
        ctrl = self.regs.get(DC_DC8051_CFG_RAM_ACCESS_CTRL)
        if not ctrl & DC_DC8051_CFG_RAM_ACCESS_CTRL_WRITE_ENA_SMASK:
            return
        ram = self._ram()
        start = self._ram_address % len(ram)
        data = new.to_bytes(8, "little")
        ram[start:start + 8] = data
        if ram is self.code_ram:
            self.misc.revoke_8051("DC_DC8051_CFG_RAM_ACCESS_WR_DATA: code RAM written")
            self.misc.capture(Download.DC8051, data)
        self._ram_advance()
        self.regs.set_bits(DC_DC8051_CFG_RAM_ACCESS_STATUS, DC_DC8051_CFG_RAM_ACCESS_STATUS_ACCESS_COMPLETED_SMASK)

    def read_config(self, field_id: int, lane_id: int = GENERAL_CONFIG) -> int:
        address = config_address(field_id, lane_id)
        return int.from_bytes(self.data_ram[address:address + 4], "little")

    def write_config(self, field_id: int, value: int, lane_id: int = GENERAL_CONFIG) -> None:
        address = config_address(field_id, lane_id)
        self.data_ram[address:address + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    # -- host messages ---------------------------------------------------------
    def post(self, message: HostMessage, error: int = 0) -> None:
        """Tell the host something: HOST_MSG/ERROR bits, then ERR_FLG.SET_BY_8051."""
        info = self.regs.get(DC_DC8051_DBG_ERR_INFO_SET_BY_8051)
        info |= int(message) | int(error) << DC_DC8051_DBG_ERR_INFO_SET_BY_8051_ERROR_SHIFT
        self.regs.set(DC_DC8051_DBG_ERR_INFO_SET_BY_8051, info)
        self.log.info("DC_DC8051_DBG_ERR_INFO_SET_BY_8051: post %s%s", message.name or hex(message),
                      f", error {getattr(error, 'name', None) or hex(error)}" if error else "")
        self.errors.set(DC_DC8051_ERR_FLG_SET_BY_8051_SMASK)

    def _retire_acknowledged_messages(self) -> None:
        if not self.errors.value() & DC_DC8051_ERR_FLG_SET_BY_8051_SMASK:
            self.regs.set(DC_DC8051_DBG_ERR_INFO_SET_BY_8051, 0)

    # -- host command mailbox ----------------------------------------------------
    def _host_cmd(self, old: int, new: int) -> None:
        if not new & DC_DC8051_CFG_HOST_CMD_0_REQ_NEW_SMASK:
            self.regs.clear_bits(DC_DC8051_CFG_HOST_CMD_1, DC_DC8051_CFG_HOST_CMD_1_COMPLETED_SMASK)
            return
        if old & DC_DC8051_CFG_HOST_CMD_0_REQ_NEW_SMASK:
            return
        if not self.running:
            limited(self, self.log, "host commands not taken").warning(
                "DC_DC8051_CFG_HOST_CMD_0: 8051 %s, command not taken", self.mcu.value)
            return
        kind = field(new, DC_DC8051_CFG_HOST_CMD_0_REQ_TYPE_SHIFT, DC_DC8051_CFG_HOST_CMD_0_REQ_TYPE_MASK)
        data = field(new, DC_DC8051_CFG_HOST_CMD_0_REQ_DATA_SHIFT, DC_DC8051_CFG_HOST_CMD_0_REQ_DATA_MASK)
        self._retire_acknowledged_messages()
        code, response = self.execute(kind, data)
        self.regs.set(DC_DC8051_CFG_HOST_CMD_1,
                      (response & DC_DC8051_CFG_HOST_CMD_1_RSP_DATA_MASK) << DC_DC8051_CFG_HOST_CMD_1_RSP_DATA_SHIFT
                      | code << DC_DC8051_CFG_HOST_CMD_1_RETURN_CODE_SHIFT
                      | DC_DC8051_CFG_HOST_CMD_1_COMPLETED_SMASK)
        self.regs.set_bits(DC_DC8051_DBG_ERR_INFO_SET_BY_8051, HostMessage.HOST_REQ_DONE)

    def execute(self, kind: int, data: int) -> tuple[int, int]:
        try:
            command = HostCommand(kind)
        except ValueError:
            limited(self, self.log, "unknown host commands").warning("DC_DC8051_CFG_HOST_CMD_0: unknown command %#x", kind)
            return ReturnCode.NOT_SUPPORTED, 0
        code, response = HOST_COMMANDS[command](self, data)
        self.log.debug("DC_DC8051_CFG_HOST_CMD_0: %s data=%#x -> %s", command.name, data, ReturnCode(code).name)
        return code, response

    def _config_slot(self, data: int) -> tuple[int, int] | None:
        field_id = field(data, LOAD_DATA_FIELD_ID_SHIFT, 0xFF)
        lane_id = field(data, LOAD_DATA_LANE_ID_SHIFT, 0xFF)
        limit = NUM_LANE_FIELDS if lane_id < LANES else NUM_GENERAL_FIELDS
        return (field_id, lane_id) if field_id < limit else None

    def _cmd_load_config_data(self, data: int) -> tuple[int, int]:
        slot = self._config_slot(data)
        if slot is None:
            return ReturnCode.INVALID, 0
        field_id, lane_id = slot
        self.write_config(field_id, data & 0xFFFFFFFF, lane_id)
        self.log.info("DC_DC8051_CFG_HOST_CMD_0: LOAD_CONFIG_DATA field=%s lane=%d value=%#010x",
                      _field_name(field_id, lane_id), lane_id, data & 0xFFFFFFFF)
        return ReturnCode.SUCCESS, 0

    def _cmd_read_config_data(self, data: int) -> tuple[int, int]:
        slot = self._config_slot(data)
        if slot is None:
            return ReturnCode.INVALID, 0
        return ReturnCode.SUCCESS, self.read_config(slot[0], slot[1])

    def _cmd_change_phy_state(self, data: int) -> tuple[int, int]:
        return self.link.request_state(data & 0xFF, (data >> 8) & 0xFF), 0

    def _cmd_send_lcb_idle_msg(self, data: int) -> tuple[int, int]:
        if not self.link_is_up:
            return ReturnCode.INVALID, 0
        self.idle_messages_sent.append(data)
        if self.config.silicon:
            self.link.send_idle_message(data)
        return ReturnCode.SUCCESS, 0

    def idle_message_arrived(self, data: int) -> None:
        """An idle message from the other end (the link is up)."""
        self.idle_messages_received.append(data)
        kind = data & IDLE_MSG_TYPE_MASK
        self.log.info("idle message %#x from the other end: HOST_MSG %s", data,
                      "BC_SMA_MSG" if kind == IDLE_SMA else "BC_IDLE_UNKNOWN_MSG")
        self.post(HostMessage.BC_SMA_MSG if kind == IDLE_SMA else HostMessage.BC_IDLE_UNKNOWN_MSG)

    def discard_idle_messages(self) -> None:
        """A new link-up: what the other end said in an earlier one is gone."""
        self.idle_messages_received.clear()

    def _cmd_read_lcb_idle_msg(self, data: int) -> tuple[int, int]:
        wanted = data & 0xF
        for message in list(self.idle_messages_received):
            if message & 0xF == wanted:
                self.idle_messages_received.remove(message)
                return ReturnCode.SUCCESS, message
        return ReturnCode.SUCCESS, 0

    def _cmd_misc(self, data: int) -> tuple[int, int]:
        owner = LCB_ACCESS.get(field(data, LOAD_DATA_FIELD_ID_SHIFT, 0xFF))
        if owner is None:
            return ReturnCode.NOT_SUPPORTED, 0
        self.lcb_owner = owner
        return ReturnCode.SUCCESS, 0

    def _cmd_read_lcb_csr(self, data: int) -> tuple[int, int]:
        value = self.regs.read(DC_LCB_CFG_RUN + 8 * (data & 0xFF), 8)
        top = (value >> 48) & 0xFFFF
        self.regs.set(DC_DC8051_CFG_EXT_DEV_1, top << DC_DC8051_CFG_EXT_DEV_1_REQ_DATA_SHIFT)
        return ReturnCode.SUCCESS, value & ((1 << 48) - 1)

    def _cmd_write_lcb_csr(self, data: int) -> tuple[int, int]:
        ext = self.regs.get(DC_DC8051_CFG_EXT_DEV_0)
        value = ((data >> 8) & ((1 << 40) - 1)
                 | field(ext, DC_DC8051_CFG_EXT_DEV_0_RETURN_CODE_SHIFT, 0xFF) << 40
                 | field(ext, DC_DC8051_CFG_EXT_DEV_0_RSP_DATA_SHIFT, 0xFFFF) << 48)
        self.regs.write(DC_LCB_CFG_RUN + 8 * (data & 0xFF), 8, value)
        return ReturnCode.SUCCESS, 0

    def _cmd_interface_test(self, data: int) -> tuple[int, int]:
        return ReturnCode.SUCCESS, data

    # -- the other end of the cable (tests, fault injection) ----------------------------
    def unplug(self) -> None:
        """Pull the cable: an up link drops and the host is told."""
        self.port.unplug()

    def plug(self, neighbour: PortIdentity) -> None:
        """Plug in a cable to a built-in partner presenting `neighbour`."""
        self.port.plug_partner(neighbour)


#: the host command mailbox: HCMD_* -> its handler, (8051, REQ_DATA) -> (return code, RSP_DATA)
HOST_COMMANDS: dict[HostCommand, Callable[[Dc8051, int], tuple[int, int]]] = {
    HostCommand.LOAD_CONFIG_DATA: Dc8051._cmd_load_config_data,
    HostCommand.READ_CONFIG_DATA: Dc8051._cmd_read_config_data,
    HostCommand.CHANGE_PHY_STATE: Dc8051._cmd_change_phy_state,
    HostCommand.SEND_LCB_IDLE_MSG: Dc8051._cmd_send_lcb_idle_msg,
    HostCommand.MISC: Dc8051._cmd_misc,
    HostCommand.READ_LCB_IDLE_MSG: Dc8051._cmd_read_lcb_idle_msg,
    HostCommand.READ_LCB_CSR: Dc8051._cmd_read_lcb_csr,
    HostCommand.WRITE_LCB_CSR: Dc8051._cmd_write_lcb_csr,
    HostCommand.INTERFACE_TEST: Dc8051._cmd_interface_test,
}
if set(HOST_COMMANDS) != set(HostCommand):
    raise ImportError(f"host commands without a handler: {sorted(c.name for c in set(HostCommand) - set(HOST_COMMANDS))}")


def _field_name(field_id: int, lane_id: int) -> str:
    if lane_id >= LANES and field_id in ConfigField._value2member_map_:
        return ConfigField(field_id).name
    return hex(field_id)
