"""The 8051 firmware's physical link state machine: link negotiation and
initialization (LNI) over the port's cable (`port.py`, `devmodel/fabric`).

    Offline --CHANGE_PHY_STATE(Polling)--> Polling: the port offers the link
    Polling --both ends polling, then `link_training_s`--> LinkUp: logical
            state Init, the other end's identity in DC_DC8051_STS_REMOTE_*
            and its VerifyCap offer in the remote fields, HOST_MSG
            LINKUP_ACHIEVED through DC_DC8051_ERR_FLG.SET_BY_8051 (source 250)
    any --CHANGE_PHY_STATE(Offline)--> Offline (logical Down) at once; the
            other end's link goes down with it
    LinkUp --the other end goes offline / the cable is pulled--> Offline,
            LINK_DOWN_REASON "received linkdown idle message" / "link
            transfer active low", HOST_MSG LINK_GOING_DOWN

With no cable, or nobody polling at the other end, Polling lasts. The state
is DC_DC8051_STS_CUR_STATE.PORT; the mailbox, data RAM and host messages it
uses are the 8051's (`dc8051.py`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from devmodel.fabric import LinkDownReason, NodeType, PortIdentity

from .chip_registers import (
    DC_DC8051_CFG_LOCAL_GUID,
    DC_DC8051_STS_REMOTE_FM_SECURITY,
    DC_DC8051_STS_REMOTE_GUID,
    DC_DC8051_STS_REMOTE_NODE_TYPE,
    DC_DC8051_STS_REMOTE_PORT_NO,
)
from .dc8051_interface import (
    LANES,
    LDR_LINK_TRANSFER_ACTIVE_LOW,
    LDR_RECEIVED_HOST_OFFLINE_REQ,
    LDR_RECEIVED_LINKDOWN_IDLE_MSG,
    LINK_QUALITY_EXCELLENT,
    ConfigField,
    HostMessage,
    PhysicalState,
    ReturnCode,
)
from .dcc import LogicalState

if TYPE_CHECKING:
    from .dc8051 import Dc8051


class PhysicalLink:
    """One port's physical link, as the 8051 firmware drives it."""

    def __init__(self, mcu: "Dc8051"):
        self.mcu = mcu
        self.chip = mcu.chip
        self.log = mcu.log
        self.state = PhysicalState.OFFLINE
        self.peer: PortIdentity | None = None  # the other end, once the link is up
        self.epoch = -1  # which link-up `peer` came with
        self._training = None

    @property
    def is_up(self) -> bool:
        return self.mcu.running and self.state is PhysicalState.LINKUP

    def reset(self) -> None:
        """Chip reset: Offline, off the cable, nothing known of the other end."""
        self._stop_training()
        if self.state is not PhysicalState.OFFLINE:
            self.chip.port.stop()
        self.state = PhysicalState.OFFLINE
        self.peer, self.epoch = None, -1

    def halt(self) -> None:
        """The 8051 stops (held in reset): the link drops without a word to the host."""
        self._stop_training()
        if self.state is PhysicalState.LINKUP:
            self.chip.dcc.set_logical_state(LogicalState.DOWN)
        if self.state is not PhysicalState.OFFLINE:
            self.chip.port.stop()
        self.state = PhysicalState.OFFLINE

    def request_state(self, wanted: int, remote_reason: int = 0) -> int:
        """CHANGE_PHY_STATE: the host's request; returns the command's return code."""
        state = self.state
        if wanted == PhysicalState.OFFLINE:
            self._go_offline(LDR_RECEIVED_HOST_OFFLINE_REQ, remote_reason)
            return ReturnCode.SUCCESS
        if wanted == PhysicalState.POLLING and state in (PhysicalState.OFFLINE, PhysicalState.POLLING):
            self._set_phys(PhysicalState.POLLING)
            self._start_training()
            return ReturnCode.SUCCESS
        if wanted == PhysicalState.DISABLED and state in (PhysicalState.OFFLINE, PhysicalState.DISABLED):
            self._set_phys(PhysicalState.DISABLED)
            return ReturnCode.SUCCESS
        if (wanted == PhysicalState.LINKUP and state in (PhysicalState.POLLING, PhysicalState.CONFIGPHY)
                or wanted == PhysicalState.QUICK_LINKUP and state in (PhysicalState.OFFLINE, PhysicalState.POLLING)):
            if self.state is PhysicalState.OFFLINE:
                self._set_phys(PhysicalState.POLLING)
                self._start_training()
            if self.peer is not None and self.chip.port.link_is_up(self.epoch):
                self._link_up()
                return ReturnCode.SUCCESS
            return ReturnCode.INVALID
        if wanted not in PhysicalState._value2member_map_:
            return ReturnCode.NOT_SUPPORTED
        self.log.warning("CHANGE_PHY_STATE: %s -> %#x refused", state.name, wanted)
        return ReturnCode.INVALID

    def _set_phys(self, state: PhysicalState) -> None:
        if state is not self.state:
            self.log.info("DC_DC8051_STS_CUR_STATE: physical state %s -> %s", self.state.name, state.name)
        self.state = state

    def identity(self) -> PortIdentity:
        """What link negotiation tells the other end about this port."""
        config = self.chip.config
        return PortIdentity(
            guid=self.mcu.regs.get(DC_DC8051_CFG_LOCAL_GUID), node_type=NodeType.HFI, port_no=1,
            device_id=config.device_id, device_rev=config.device_rev, fm_security_disabled=True,
            mgmt_allowed=True,
            verify_cap=tuple(self.mcu.read_config(f) for f in (ConfigField.VERIFY_CAP_LOCAL_PHY,
                                                          ConfigField.VERIFY_CAP_LOCAL_FABRIC,
                                                          ConfigField.VERIFY_CAP_LOCAL_LINK_MODE)))

    def _start_training(self) -> None:
        """Polling: offer the link on the cable. Training completes once the
        other end polls too (`partner_linked`)."""
        if not self.chip.port.start_polling(self.identity()):
            self.log.info("link training: no cable, still POLLING")
        elif self.peer is not None and self.chip.port.link_is_up(self.epoch) and self._training is None:
            # polling again on a link that is already up: finish training
            self._training = self.chip.after(self.chip.config.link_training_s, self._training_done)

    def _stop_training(self) -> None:
        if self._training is not None:
            self._training.cancel()
            self._training = None

    def partner_linked(self, peer: PortIdentity, epoch: int) -> None:
        """Both ends are polling: the link trains for `link_training_s`."""
        self.peer, self.epoch = peer, epoch
        if self.mcu.running and self.state is PhysicalState.POLLING:
            self._stop_training()
            self._training = self.chip.after(self.chip.config.link_training_s, self._training_done)

    def _training_done(self) -> None:
        self._training = None
        if self.state is not PhysicalState.POLLING:
            return
        if self.peer is None or not self.chip.port.link_is_up(self.epoch):
            self.log.info("link training: the other end left, still POLLING")
            return
        self._link_up()

    def partner_lost(self, reason: LinkDownReason, epoch: int) -> None:
        """The link went down from the other end (or the cable was pulled)."""
        if epoch != self.epoch:
            return  # news about a link-up this end never completed
        self.peer = None
        self._stop_training()
        if self.is_up:
            code = LDR_LINK_TRANSFER_ACTIVE_LOW if reason is LinkDownReason.CABLE_PULLED \
                else LDR_RECEIVED_LINKDOWN_IDLE_MSG
            self._go_offline(code)
            self.mcu.post(HostMessage.LINK_GOING_DOWN)

    def cable_plugged(self) -> None:
        """A new cable: a port still polling offers the link on it."""
        if self.mcu.running and self.state is PhysicalState.POLLING:
            self._start_training()

    def _link_up(self) -> None:
        self._stop_training()
        peer = self.peer
        if peer is None:
            return
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_GUID, peer.guid)
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_NODE_TYPE, int(peer.node_type))
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_PORT_NO, peer.port_no)
        self.mcu.regs.set(DC_DC8051_STS_REMOTE_FM_SECURITY, int(peer.fm_security_disabled))
        self.mcu.write_config(ConfigField.LOCAL_LNI_INFO, 0xF << 16)  # all four rx lanes enabled
        self.mcu.write_config(ConfigField.REMOTE_LNI_INFO, int(peer.mgmt_allowed) << 23)
        self.mcu.write_config(ConfigField.LINK_QUALITY_INFO, LINK_QUALITY_EXCELLENT << 24)
        self.mcu.write_config(ConfigField.REMOTE_DEVICE_ID, peer.device_id << 8 | peer.device_rev)
        offered = peer.verify_cap or tuple(self.mcu.read_config(f) for f in (
            ConfigField.VERIFY_CAP_LOCAL_PHY, ConfigField.VERIFY_CAP_LOCAL_FABRIC,
            ConfigField.VERIFY_CAP_LOCAL_LINK_MODE))
        for remote, value in zip((ConfigField.VERIFY_CAP_REMOTE_PHY, ConfigField.VERIFY_CAP_REMOTE_FABRIC,
                                  ConfigField.VERIFY_CAP_REMOTE_LINK_WIDTH), offered):
            self.mcu.write_config(remote, value)
        mode = self.mcu.read_config(ConfigField.VERIFY_CAP_LOCAL_LINK_MODE) & ~0xFF00
        self.mcu.write_config(ConfigField.VERIFY_CAP_LOCAL_LINK_MODE, mode | LANES << 12 | LANES << 8)
        self.mcu.write_config(ConfigField.LINK_DOWN_REASON, self.mcu.read_config(ConfigField.LINK_DOWN_REASON) & ~0xFF)
        self._set_phys(PhysicalState.LINKUP)
        self.chip.dcc.set_logical_state(LogicalState.INIT)
        self.mcu.post(HostMessage.LINKUP_ACHIEVED)

    def _go_offline(self, reason: int, remote_reason: int = 0) -> None:
        self._stop_training()
        was_up = self.state is PhysicalState.LINKUP
        was_offline = self.state is PhysicalState.OFFLINE
        self._set_phys(PhysicalState.OFFLINE)
        self.chip.dcc.set_logical_state(LogicalState.DOWN)
        if not was_offline:
            self.chip.port.stop()
        if was_up:
            down = self.mcu.read_config(ConfigField.LINK_DOWN_REASON) & ~0xFF
            self.mcu.write_config(ConfigField.LINK_DOWN_REASON, down | reason)
            self.log.info("link down, reason %#x (sent remote reason %#x)", reason, remote_reason)
