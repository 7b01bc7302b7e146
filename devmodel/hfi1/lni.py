"""The 8051 firmware's physical link state machine: link negotiation and
initialization (LNI) over the port's cable (`port.py`, `devmodel/fabric`).

On RTL silicon (implementation code 0), the way the driver walks it
(chip.c `set_link_state`, `handle_verify_cap`, `handle_link_up`):

    OFFLINE 0x90 --CHANGE_PHY_STATE(Polling)--> POLLING 0x20: the port offers the link
    POLLING --both ends polling, then `link_training_s`--> CONFIGPHY_VERIFYCAP 0x46:
            the other end's VerifyCap frames in VERIFY_CAP_REMOTE_PHY/_FABRIC/
            _LINK_WIDTH and REMOTE_DEVICE_ID, HOST_MSG VERIFY_CAP_FRAME
    VERIFYCAP --CHANGE_PHY_STATE(LinkUp)--> CONFIGLT 0x48: "ConfigLT ready" to the other end
    CONFIGLT --the other end ready too, then `link_up_handshake_s`--> LINKUP 0x50: logical
            Init, the neighbour in DC_DC8051_STS_REMOTE_*, HOST_MSG LINKUP_ACHIEVED
    VERIFYCAP, CONFIGLT --the other end lost--> OFFLINE, ERROR FAILED_LNI_VERIFY_CAP1 /
            FAILED_LNI_CONFIGLT (the driver restarts the link)
    LINKUP --SEND_LCB_IDLE_MSG--> the message to the other end; one arriving waits for
            READ_LCB_IDLE_MSG, HOST_MSG BC_SMA_MSG (an SMA message) or BC_IDLE_UNKNOWN_MSG
    LINKUP --the other end goes offline--> OFFLINE, LINK_DOWN_REASON "received linkdown
            idle message", its reason in LINK_QUALITY_INFO[23:16], HOST_MSG LINK_GOING_DOWN
    LINKUP --the cable is pulled or goes dark--> the same, "link transfer active low"
    any --CHANGE_PHY_STATE(Offline | reason << 8)--> OFFLINE at once, logical Down; the
            reason goes to the other end first (planned down)

With implementation code 3, "functional simulator", there is no VerifyCap
and no link-layer messages: POLLING --training--> LINKUP directly, and the
remote VerifyCap fields are filled at LinkUp.

With no cable, or nobody polling at the other end, Polling lasts. The state
is DC_DC8051_STS_CUR_STATE.PORT; the mailbox, data RAM and host messages it
uses are the 8051's (`dc8051.py`).

Collaborators: the 8051 (`mcu`: its data RAM, host messages, whether it
runs), the port (`port.py`: the cable), and the DCC (the logical state it
moves at LinkUp and down). The port reports the other end's news back here
(`cable_plugged`, `partner_linked`, `partner_lost`, `message_received`),
wired by the device once both exist.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from common.ratelog import limited
from devmodel.fabric import LinkDownReason, LinkMessage, MessageKind, NodeType, PortIdentity
from devmodel.regs import RegisterFile

from .chip_registers import (
    DC_DC8051_CFG_LOCAL_GUID,
    DC_DC8051_STS_REMOTE_FM_SECURITY,
    DC_DC8051_STS_REMOTE_GUID,
    DC_DC8051_STS_REMOTE_NODE_TYPE,
    DC_DC8051_STS_REMOTE_PORT_NO,
)
from .config import ChipConfig
from .dc8051_interface import (
    ALL_LANES,
    DOWN_REMOTE_REASON_SHIFT,
    ENABLE_LANE_RX_SHIFT,
    LANES,
    LDR_LINK_TRANSFER_ACTIVE_LOW,
    LDR_RECEIVED_HOST_OFFLINE_REQ,
    LDR_RECEIVED_LINKDOWN_IDLE_MSG,
    LINK_DOWN_REASON_MASK,
    LINK_QUALITY_EXCELLENT,
    LINK_QUALITY_SHIFT,
    MAX_RATE_SHIFT,
    MGMT_ALLOWED_SHIFT,
    REMOTE_TX_RATE_SHIFT,
    ConfigField,
    HostMessage,
    LinkError,
    PhysicalState,
    ReturnCode,
)
from .dcc import Dcc, LogicalState
from .port import Hfi1Port
from .services import ChipServices, cancel_jobs

#: where the host may ask for LinkUp in functional-simulator mode
_SIMULATOR_LINKUP_FROM = (PhysicalState.POLLING, PhysicalState.CONFIGPHY)
#: an LNI that loses the other end in these states fails with this error
_LNI_FAILURES = {PhysicalState.CONFIGPHY_VERIFYCAP: LinkError.FAILED_LNI_VERIFY_CAP1,
                 PhysicalState.CONFIGLT: LinkError.FAILED_LNI_CONFIGLT}


class Mcu(Protocol):
    """What the link state machine needs of the 8051 running it (`dc8051.Dc8051`)."""

    services: ChipServices
    config: ChipConfig
    regs: RegisterFile
    log: logging.Logger

    @property
    def running(self) -> bool: ...

    def read_config(self, field_id: int, lane_id: int = ...) -> int: ...

    def write_config(self, field_id: int, value: int, lane_id: int = ...) -> None: ...

    def post(self, message: HostMessage, error: int = 0) -> None: ...

    def idle_message_arrived(self, data: int) -> None: ...

    def discard_idle_messages(self) -> None: ...


class PhysicalLink:
    """One port's physical link, as the 8051 firmware drives it."""

    def __init__(self, mcu: Mcu, port: Hfi1Port, dcc: Dcc):
        self.mcu = mcu
        self.port = port
        self.dcc = dcc
        self.services = mcu.services
        self.config = mcu.config
        self.log = mcu.log
        self.state = PhysicalState.OFFLINE
        self.peer: PortIdentity | None = None  # the other end, once the link is up
        self.epoch = -1  # which link-up `peer` came with
        self._training = None
        self._handshake = None
        #: the link-up in which the other end said "ConfigLT ready"
        self.peer_ready_epoch: int | None = None
        #: the reason the other end gave for going down on purpose (this
        #: link-up); None: it has not said it would (a pulled cable, a halted 8051)
        self.peer_down_reason: int | None = None

    @property
    def silicon(self) -> bool:
        return self.config.silicon

    @property
    def is_up(self) -> bool:
        return self.mcu.running and self.state is PhysicalState.LINKUP

    def reset(self) -> None:
        """Chip reset: Offline, off the cable, nothing known of the other end."""
        self._stop_timers()
        if self.state is not PhysicalState.OFFLINE:
            self.port.stop()
        self.state = PhysicalState.OFFLINE
        self.peer, self.epoch = None, -1
        self.peer_ready_epoch, self.peer_down_reason = None, None

    def halt(self) -> None:
        """The 8051 stops (held in reset): the link drops without a word to the host."""
        self._stop_timers()
        if self.state is PhysicalState.LINKUP:
            self.dcc.set_logical_state(LogicalState.DOWN)
        if self.state is not PhysicalState.OFFLINE:
            self.port.stop()
        self.state = PhysicalState.OFFLINE

    # -- the host's requests (HCMD_CHANGE_PHY_STATE) ---------------------------------
    def request_state(self, wanted: int, remote_reason: int = 0) -> int:
        """CHANGE_PHY_STATE: the host's request (`HOST_REQUESTS`); returns the
        command's return code."""
        state = self.state
        request = HOST_REQUESTS.get(wanted)
        code = request(self, state, remote_reason) if request is not None else None
        if code is not None:
            return code
        if wanted not in PhysicalState._value2member_map_:
            return ReturnCode.NOT_SUPPORTED
        limited(self, self.log, "PHY state changes refused").warning("CHANGE_PHY_STATE: %s -> %#x refused", state.name, wanted)
        return ReturnCode.INVALID

    # Each request: the return code, or None when the current state refuses it.
    def _request_offline(self, _state: PhysicalState, remote_reason: int) -> int | None:
        self._go_offline(LDR_RECEIVED_HOST_OFFLINE_REQ, remote_reason, planned=True)
        return ReturnCode.SUCCESS

    def _request_polling(self, state: PhysicalState, _remote_reason: int) -> int | None:
        if state not in (PhysicalState.OFFLINE, PhysicalState.POLLING):
            return None
        self._set_phys(PhysicalState.POLLING)
        self._start_training()
        return ReturnCode.SUCCESS

    def _request_disabled(self, state: PhysicalState, _remote_reason: int) -> int | None:
        if state not in (PhysicalState.OFFLINE, PhysicalState.DISABLED):
            return None
        self._set_phys(PhysicalState.DISABLED)
        return ReturnCode.SUCCESS

    def _request_link_up(self, state: PhysicalState, _remote_reason: int) -> int | None:
        """Silicon: the host agrees to VerifyCap's outcome; functional simulator:
        straight up from Polling."""
        if self.silicon:
            if state is not PhysicalState.CONFIGPHY_VERIFYCAP:
                return None
            self._config_lt()
            return ReturnCode.SUCCESS
        return self._simulator_link_up() if state in _SIMULATOR_LINKUP_FROM else None

    def _request_quick_link_up(self, state: PhysicalState, _remote_reason: int) -> int | None:
        return self._simulator_link_up() if state in (PhysicalState.OFFLINE, PhysicalState.POLLING) else None

    def _simulator_link_up(self) -> int:
        """LinkUp with no VerifyCap or ConfigLT: at once, if the other end is there."""
        if self.state is PhysicalState.OFFLINE:
            self._set_phys(PhysicalState.POLLING)
            self._start_training()
        if self.peer is not None and self.port.link_is_up(self.epoch):
            self._link_up()
            return ReturnCode.SUCCESS
        return ReturnCode.INVALID

    def _set_phys(self, state: PhysicalState) -> None:
        if state is not self.state:
            self.log.info("DC_DC8051_STS_CUR_STATE: physical state %s -> %s", self.state.name, state.name)
        self.state = state

    # -- Polling: offering the link ----------------------------------------------------
    def verify_cap_frames(self) -> tuple[int, int, int]:
        """The VerifyCap frames this port sends, as the other end stores them:
        its PHY and fabric capabilities, and its tx rate (TX_SETTINGS.MAX_RATE)
        with its link widths (VERIFY_CAP_LOCAL_LINK_MODE[15:0])."""
        read = self.mcu.read_config
        rate = (read(ConfigField.TX_SETTINGS) >> MAX_RATE_SHIFT) & 0xFF
        widths = read(ConfigField.VERIFY_CAP_LOCAL_LINK_MODE) & 0xFFFF
        return (read(ConfigField.VERIFY_CAP_LOCAL_PHY), read(ConfigField.VERIFY_CAP_LOCAL_FABRIC),
                rate << REMOTE_TX_RATE_SHIFT | widths)

    def identity(self) -> PortIdentity:
        """What link negotiation tells the other end about this port."""
        config = self.config
        return PortIdentity(
            guid=self.mcu.regs.get(DC_DC8051_CFG_LOCAL_GUID), node_type=NodeType.HFI, port_no=1,
            device_id=config.device_id, device_rev=config.device_rev, fm_security_disabled=True,
            mgmt_allowed=True, verify_cap=self.verify_cap_frames())

    def _start_training(self) -> None:
        """Polling: offer the link on the cable. Training completes once the
        other end polls too (`partner_linked`)."""
        if not self.port.start_polling(self.identity()):
            self.log.info("link training: no cable, still POLLING")
        elif self.peer is not None and self.port.link_is_up(self.epoch) and self._training is None:
            # polling again on a link that is already up: finish training
            self._training = self.services.after(self.config.link_training_s, self._training_done)

    def _stop_timers(self) -> None:
        cancel_jobs(self._training, self._handshake)
        self._training = self._handshake = None

    def partner_linked(self, peer: PortIdentity, epoch: int) -> None:
        """Both ends are polling: the link trains for `link_training_s`."""
        self.peer, self.epoch = peer, epoch
        self.peer_down_reason = None
        if self.mcu.running and self.state is PhysicalState.POLLING:
            self._stop_timers()
            self._training = self.services.after(self.config.link_training_s, self._training_done)

    def _training_done(self) -> None:
        self._training = None
        if self.state is not PhysicalState.POLLING:
            return
        if self.peer is None or not self.port.link_is_up(self.epoch):
            self.log.info("link training: the other end left, still POLLING")
            return
        if self.silicon:
            self._verify_cap()
        else:
            self._link_up()

    def cable_plugged(self) -> None:
        """A new cable: a port still polling offers the link on it."""
        if self.mcu.running and self.state is PhysicalState.POLLING:
            self._start_training()

    # -- VerifyCap and ConfigLT (silicon) --------------------------------------------------
    def _write_remote_capabilities(self, peer: PortIdentity) -> None:
        """What the other end's VerifyCap frames said, where the driver reads it."""
        offered = peer.verify_cap or self.verify_cap_frames()
        for remote, value in zip((ConfigField.VERIFY_CAP_REMOTE_PHY, ConfigField.VERIFY_CAP_REMOTE_FABRIC,
                                  ConfigField.VERIFY_CAP_REMOTE_LINK_WIDTH), offered):
            self.mcu.write_config(remote, value)
        self.mcu.write_config(ConfigField.REMOTE_DEVICE_ID, peer.device_id << 8 | peer.device_rev)
        self.mcu.write_config(ConfigField.LOCAL_LNI_INFO, ALL_LANES << ENABLE_LANE_RX_SHIFT)
        # the active lanes, tx [15:12] and rx [11:8], valid from the end of VerifyCap
        mode = self.mcu.read_config(ConfigField.VERIFY_CAP_LOCAL_LINK_MODE) & ~0xFF00
        self.mcu.write_config(ConfigField.VERIFY_CAP_LOCAL_LINK_MODE, mode | LANES << 12 | LANES << 8)

    def _verify_cap(self) -> None:
        self._write_remote_capabilities(self.peer)
        self._set_phys(PhysicalState.CONFIGPHY_VERIFYCAP)
        self.mcu.post(HostMessage.VERIFY_CAP_FRAME)

    def _config_lt(self) -> None:
        """The host agreed to LinkUp: tell the other end, and come up once it agrees too."""
        self._set_phys(PhysicalState.CONFIGLT)
        if not self.port.send_message(LinkMessage(MessageKind.CONFIGLT_READY), self.epoch):
            self.log.info("ConfigLT: the link went down before the other end could be told")
        if self.peer_ready_epoch == self.epoch:
            self._start_handshake()

    def _start_handshake(self) -> None:
        if self._handshake is None:
            self._handshake = self.services.after(self.config.link_up_handshake_s, self._handshake_done)

    def _handshake_done(self) -> None:
        self._handshake = None
        if self.state is PhysicalState.CONFIGLT and self.peer is not None and self.port.link_is_up(self.epoch):
            self._link_up()

    # -- the other end's link layer ----------------------------------------------------
    def message_received(self, message: LinkMessage, epoch: int) -> None:
        """A link-layer message from the other end (`LINK_MESSAGES`)."""
        if not self.mcu.running:
            return
        handler = LINK_MESSAGES.get(message.kind)
        if handler is not None:
            handler(self, message.data, epoch)

    def _peer_ready(self, _data: int, epoch: int) -> None:
        self.peer_ready_epoch = epoch
        if epoch == self.epoch and self.state is PhysicalState.CONFIGLT:
            self._start_handshake()

    def _idle_message(self, data: int, epoch: int) -> None:
        if epoch == self.epoch and self.is_up:
            self.mcu.idle_message_arrived(data)

    def _peer_going_down(self, data: int, epoch: int) -> None:
        if epoch == self.epoch:
            self.peer_down_reason = data & 0xFF

    def send_idle_message(self, data: int) -> bool:
        """SEND_LCB_IDLE_MSG: the message crosses the link (False: link not up)."""
        if not self.is_up:
            return False
        return self.port.send_message(LinkMessage(MessageKind.IDLE, data), self.epoch)

    # -- LinkUp and down ---------------------------------------------------------------
    def _link_up(self) -> None:
        self._stop_timers()
        peer = self.peer
        if peer is None:
            return
        if not self.silicon:
            self._write_remote_capabilities(peer)
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_GUID, peer.guid)
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_NODE_TYPE, int(peer.node_type))
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_PORT_NO, peer.port_no)
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_FM_SECURITY, int(peer.fm_security_disabled))
        self.mcu.write_config(ConfigField.REMOTE_LNI_INFO, int(peer.mgmt_allowed) << MGMT_ALLOWED_SHIFT)
        self.mcu.write_config(ConfigField.LINK_QUALITY_INFO, LINK_QUALITY_EXCELLENT << LINK_QUALITY_SHIFT)
        down = self.mcu.read_config(ConfigField.LINK_DOWN_REASON) & ~LINK_DOWN_REASON_MASK
        self.mcu.write_config(ConfigField.LINK_DOWN_REASON, down)  # keeps the patch version, [31:24]
        # the LCB's receive buffer starts empty with each link-up: a message of an
        # earlier one that the host never read (the link went down first) is gone,
        # or it would answer the host's next READ_LCB_IDLE_MSG in place of this
        # link-up's (a stale SMA_IDLE_ACTIVE hiding the peer's SMA_IDLE_ARM)
        self.mcu.discard_idle_messages()
        self._set_phys(PhysicalState.LINKUP)
        self.dcc.set_logical_state(LogicalState.INIT)
        self.mcu.post(HostMessage.LINKUP_ACHIEVED)

    def partner_lost(self, reason: LinkDownReason, epoch: int) -> None:
        """The link went down from the other end (or the cable was pulled or went dark)."""
        if epoch != self.epoch:
            return  # news about a link-up this end never completed
        self.peer = None
        self._stop_timers()
        if self.is_up:
            planned = self.peer_down_reason is not None  # it said so before it went
            self._go_offline(LDR_RECEIVED_LINKDOWN_IDLE_MSG if planned else LDR_LINK_TRANSFER_ACTIVE_LOW)
            if planned:
                quality = self.mcu.read_config(ConfigField.LINK_QUALITY_INFO) & ~(0xFF << DOWN_REMOTE_REASON_SHIFT)
                self.mcu.write_config(ConfigField.LINK_QUALITY_INFO,
                                      quality | self.peer_down_reason << DOWN_REMOTE_REASON_SHIFT)
            self.mcu.post(HostMessage.LINK_GOING_DOWN)
        elif self.mcu.running and self.state in _LNI_FAILURES:
            error = _LNI_FAILURES[self.state]
            self.log.info("LNI failed in %s: the other end left (%s); DC_DC8051_DBG_ERR_INFO_SET_BY_8051.ERROR %s",
                          self.state.name, reason.value, error.name)
            self._go_offline(0)
            self.mcu.post(HostMessage(0), error)

    def _go_offline(self, reason: int, remote_reason: int = 0, planned: bool = False) -> None:
        """Offline; `planned` (the host asked) tells the other end first,
        with `remote_reason`, so it reports a linkdown idle message rather
        than a link that simply went dark."""
        self._stop_timers()
        was_up = self.state is PhysicalState.LINKUP
        was_offline = self.state is PhysicalState.OFFLINE
        if was_up and planned:
            self.port.send_message(LinkMessage(MessageKind.PLANNED_DOWN, remote_reason), self.epoch)
        self._set_phys(PhysicalState.OFFLINE)
        self.dcc.set_logical_state(LogicalState.DOWN)
        if not was_offline:
            self.port.stop()
        if was_up:
            down = self.mcu.read_config(ConfigField.LINK_DOWN_REASON) & ~LINK_DOWN_REASON_MASK
            self.mcu.write_config(ConfigField.LINK_DOWN_REASON, down | reason)
            self.log.info("link down, reason %#x (sent remote reason %d)", reason, remote_reason)


#: CHANGE_PHY_STATE: the state the host asks for -> how the firmware answers
#: (the return code, or None: refused in the current state)
HOST_REQUESTS: dict[PhysicalState, Callable[[PhysicalLink, PhysicalState, int], int | None]] = {
    PhysicalState.OFFLINE: PhysicalLink._request_offline,
    PhysicalState.POLLING: PhysicalLink._request_polling,
    PhysicalState.DISABLED: PhysicalLink._request_disabled,
    PhysicalState.LINKUP: PhysicalLink._request_link_up,
    PhysicalState.QUICK_LINKUP: PhysicalLink._request_quick_link_up,
}
#: the other end's link-layer messages -> (link, data, epoch) handler
LINK_MESSAGES: dict[MessageKind, Callable[[PhysicalLink, int, int], None]] = {
    MessageKind.CONFIGLT_READY: PhysicalLink._peer_ready,
    MessageKind.IDLE: PhysicalLink._idle_message,
    MessageKind.PLANNED_DOWN: PhysicalLink._peer_going_down,
}
