"""A link end's receive buffer: packets the link delivered, waiting for the
end's own ingress event, and the credits the sender sees.

    Link --receive--> push(packet) -> True: post one ingress event
                       (any thread)   False: one is already queued
    ingress event:     begin(); take from `packets` (a bounded batch);
                       repost() -> True: more waits and none is queued, post again;
                       drained() -> True: tell the link (room_freed), senders go on
    has_room()         the link's credits: below `limit` packets
    discard()          a reset: what was in flight is lost, counted

One ingress event at a time is queued per buffer, whatever the number of
packets, so a flood costs one queued event and the batch bounds the work of
each (docs/execution-model.md). The buffer keeps its own small lock; the
owner never holds it while calling out.
"""
from __future__ import annotations

import threading
from collections import deque

from .packet import Packet


class InboundBuffer:
    def __init__(self, limit: int):
        self.limit = limit
        self.resume = limit // 2  # senders resume once it has drained to half
        self.packets: deque[Packet] = deque()
        self._posted = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.packets)

    def push(self, packet: Packet) -> bool:
        """Keep `packet`; True if the caller must post an ingress event."""
        with self._lock:
            self.packets.append(packet)
            if self._posted:
                return False
            self._posted = True
            return True

    def begin(self) -> None:
        """The ingress event starts: a packet arriving from now on posts another."""
        with self._lock:
            self._posted = False

    def repost(self) -> bool:
        """After a batch: True if packets still wait and no ingress event is queued
        (the caller posts one)."""
        with self._lock:
            if self._posted or not self.packets:
                return False
            self._posted = True
            return True

    def has_room(self) -> bool:
        return len(self.packets) < self.limit

    def drained(self) -> bool:
        return len(self.packets) <= self.resume

    def discard(self) -> int:
        with self._lock:
            count = len(self.packets)
            self.packets.clear()
            self._posted = False
        return count
