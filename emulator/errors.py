"""Refusals that carry an errno.

Every refusal the transport makes ends up as a vfio-user error reply with a
positive errno (server.py); the layers below it say which errno when they
refuse (a DMA map that overlaps: EEXIST; an IRQ index that does not exist:
EINVAL), so each raises an `ErrnoError` and the server copies the number.
"""
from __future__ import annotations


class ErrnoError(Exception):
    """A refusal with the errno a vfio-user error reply should carry."""

    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_
