"""What every chip block may ask of the chip as a whole (`ChipServices`).

A block is built with this and with the few sibling blocks it talks to, so
its constructor names its collaborators and nothing in a block reaches a
sibling through the device. The device (device.py) is the one
implementation:

    regs            the one register file of BAR0
    config          the chip's build-time configuration
    dma             guest memory (None while no client is attached)
    after(s, fn)    a chip event `s` seconds from now (dropped by a reset)
    post(fn)        a chip event soon (news from the link, a doorbell's work)
    now()           the worker's clock
    emit(packet)    a packet for the link, handed over once the lock is released
    internal_error  contain a model bug: log it, freeze the chip

`cancel_jobs(self._training, self._handshake)` cancels a block's pending
chip events, kept in attributes that are None while nothing is pending.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from devmodel.base import Dma
    from devmodel.fabric import Packet
    from devmodel.regs import RegisterFile
    from devmodel.worker import Job

    from .config import ChipConfig


class ChipServices(Protocol):
    regs: "RegisterFile"
    config: "ChipConfig"

    @property
    def dma(self) -> "Dma | None": ...

    def after(self, delay_s: float, fn: Callable[[], None]) -> "Job": ...

    def post(self, fn: Callable[[], None]) -> "Job": ...

    def now(self) -> float: ...

    def emit(self, packet: "Packet") -> None: ...

    def internal_error(self, exc: BaseException, during: str) -> None: ...


def cancel_jobs(*jobs: "Job | None") -> None:
    """Cancel each of `jobs` that is not None."""
    for job in jobs:
        if job is not None:
            job.cancel()
