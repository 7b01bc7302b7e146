"""Interrupt lines of one function: the eventfds the client gave with SET_IRQS.

    index   vectors  how QEMU 11.1 uses it
    INTX    1        trigger fd; MASK/UNMASK (and a resample fd under KVM)
    MSI     1..32    one fd per enabled vector
    MSIX    N        fds arrive vector by vector as the guest unmasks them;
                     "enabled with no vectors" is SET_IRQS(start 0, count 1, no fd)
    ERR     1        signalled to report an unrecoverable device error
    REQ     1        unused by vfio-user-pci

`trigger(vector)` picks the active index the way a PCI function does: MSI-X
when enabled, else MSI, else INTx. An MSI-X vector without an fd latches a
pending bit (the PBA) and fires when the client hands one over, as a masked
vector does on silicon.
"""
from __future__ import annotations

import errno
import logging
import os
import threading

from common.ratelog import RateLimitedLog

from .errors import ErrnoError
from .protocol import IRQ_ACTION_MASK, IRQ_DATA_MASK, IrqIndex, IrqSetFlags

log = logging.getLogger("vfnic.irq")


class IrqSetError(ErrnoError):
    """A SET_IRQS the interrupt lines refuse."""


class InterruptLines:
    def __init__(self, counts: dict[IrqIndex, int]):
        self.counts = {IrqIndex(i): counts.get(IrqIndex(i), 0) for i in IrqIndex}
        self._fds: dict[IrqIndex, list[int | None]] = {i: [None] * n for i, n in self.counts.items()}
        self._enabled: dict[IrqIndex, bool] = {i: False for i in IrqIndex}
        self._masked: dict[IrqIndex, list[bool]] = {i: [False] * n for i, n in self.counts.items()}
        self.pending: list[bool] = [False] * self.counts[IrqIndex.MSIX]
        self._lock = threading.Lock()
        self._lost = RateLimitedLog(log, "lost interrupts")
        self._missing = RateLimitedLog(log, "interrupts to missing vectors")
        #: called after each eventfd write (an AccessProfile's), or None
        self.on_signal = None

    # -- SET_IRQS ----------------------------------------------------------------
    def set_irqs(self, flags: int, index: int, start: int, count: int, fds: list[int], data: bytes = b"") -> None:
        """Apply one DEVICE_SET_IRQS. Takes ownership of `fds` (closed on error)."""
        try:
            self._set_irqs(flags, index, start, count, fds, data)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def _set_irqs(self, flags, index, start, count, fds, data) -> None:
        if not 0 <= index < len(IrqIndex):
            raise IrqSetError(errno.EINVAL, f"IRQ index {index} does not exist")
        idx = IrqIndex(index)
        data_kind, action = flags & IRQ_DATA_MASK, flags & IRQ_ACTION_MASK
        if flags & ~(IRQ_DATA_MASK | IRQ_ACTION_MASK) or bin(data_kind).count("1") != 1 or bin(action).count("1") != 1:
            raise IrqSetError(errno.EINVAL, f"SET_IRQS flags {flags:#x} must name one data type and one action")
        if count == 0 and not (data_kind == IrqSetFlags.DATA_NONE and action == IrqSetFlags.ACTION_TRIGGER):
            raise IrqSetError(errno.EINVAL, "SET_IRQS with count 0 is only DATA_NONE|TRIGGER (disable all)")
        if start + count > self.counts[idx] and count:
            raise IrqSetError(errno.EINVAL, f"vectors {start}..{start + count - 1} exceed {idx.name}'s {self.counts[idx]}")
        if fds and data_kind != IrqSetFlags.DATA_EVENTFD:
            raise IrqSetError(errno.EINVAL, "file descriptors come only with DATA_EVENTFD")
        if data_kind == IrqSetFlags.DATA_EVENTFD and fds and len(fds) != count:
            raise IrqSetError(errno.EINVAL, f"{len(fds)} eventfds for {count} vectors")
        if data_kind == IrqSetFlags.DATA_BOOL and len(data) < count:
            raise IrqSetError(errno.EINVAL, "DATA_BOOL needs one byte per vector")
        if action == IrqSetFlags.ACTION_MASK and data_kind == IrqSetFlags.DATA_EVENTFD:
            raise IrqSetError(errno.EINVAL, "MASK takes no eventfd")
        if action == IrqSetFlags.ACTION_UNMASK and data_kind == IrqSetFlags.DATA_EVENTFD:
            # INTx resample fd (KVM): we re-trigger on our own, so it is not needed.
            for fd in fds:
                os.close(fd)
            return
        with self._lock:
            if action == IrqSetFlags.ACTION_TRIGGER:
                self._trigger_action(idx, data_kind, start, count, fds, data)
            else:
                masked = action == IrqSetFlags.ACTION_MASK
                for v in range(start, start + count):
                    if data_kind != IrqSetFlags.DATA_BOOL or data[v - start]:
                        self._masked[idx][v] = masked

    def _trigger_action(self, idx, data_kind, start, count, fds, data) -> None:
        if data_kind == IrqSetFlags.DATA_NONE and count == 0:
            self._disable(idx)
        elif data_kind == IrqSetFlags.DATA_EVENTFD:
            self._enabled[idx] = True
            for n, v in enumerate(range(start, start + count)):
                self._replace(idx, v, fds[n] if fds else None)
        else:  # DATA_NONE / DATA_BOOL with count: fire these vectors now
            for n, v in enumerate(range(start, start + count)):
                if data_kind == IrqSetFlags.DATA_NONE or data[n]:
                    self._signal(idx, v)

    def _replace(self, idx: IrqIndex, vector: int, fd: int | None) -> None:
        old = self._fds[idx][vector]
        self._fds[idx][vector] = fd
        if old is not None:
            os.close(old)
        if idx is IrqIndex.MSIX and fd is not None and self.pending[vector]:
            self.pending[vector] = False
            self._signal(idx, vector)

    def _disable(self, idx: IrqIndex) -> None:
        self._enabled[idx] = False
        for v in range(self.counts[idx]):
            self._replace(idx, v, None)

    def close(self) -> None:
        with self._lock:
            for idx in IrqIndex:
                self._disable(idx)
                self._masked[idx] = [False] * self.counts[idx]
            self.pending = [False] * len(self.pending)

    # -- the device's side -------------------------------------------------------
    def _signal(self, idx: IrqIndex, vector: int) -> bool:
        fd = self._fds[idx][vector]
        if fd is None or self._masked[idx][vector]:
            return False
        try:
            os.eventfd_write(fd, 1)
        except OSError as e:  # the client closed its end: the interrupt is lost, as on a dead link
            self._lost.warning("%s vector %d: eventfd write failed: %s", idx.name, vector, e)
            return False
        if self.on_signal is not None:
            self.on_signal()
        return True

    def trigger(self, vector: int) -> None:
        with self._lock:
            if self._enabled[IrqIndex.MSIX]:
                if not 0 <= vector < self.counts[IrqIndex.MSIX]:
                    self._missing.warning("MSI-X vector %d does not exist (%d vectors)", vector, self.counts[IrqIndex.MSIX])
                    return
                if not self._signal(IrqIndex.MSIX, vector):
                    self.pending[vector] = True
            elif self._enabled[IrqIndex.MSI] and self.counts[IrqIndex.MSI]:
                self._signal(IrqIndex.MSI, min(vector, self.counts[IrqIndex.MSI] - 1))
            elif self._enabled[IrqIndex.INTX] and self.counts[IrqIndex.INTX]:
                self._signal(IrqIndex.INTX, 0)

    def error(self) -> None:
        """Report an unrecoverable device error (QEMU stops the VM)."""
        with self._lock:
            if self.counts[IrqIndex.ERR]:
                self._signal(IrqIndex.ERR, 0)

    def state(self, index: IrqIndex) -> dict:
        with self._lock:
            return {
                "enabled": self._enabled[index],
                "vectors_with_fd": [v for v, fd in enumerate(self._fds[index]) if fd is not None],
                "masked": [v for v, m in enumerate(self._masked[index]) if m],
            }
