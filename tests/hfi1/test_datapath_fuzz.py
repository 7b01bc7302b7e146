"""A guest programming garbage into the data path: random PIO stores, random
SDMA descriptors and tails, random receive heads and RcvArray entries, mixed
with good packets, between two models on one fabric.

Invariants, after every sequence and at the end:
- the model never fails inside (no internal error was contained: a guest's
  mistake gets the chip's error behaviour, never a Python exception);
- nothing runs away (the shared scheduler goes idle) and nothing hangs;
- every byte the devices wrote landed where the guest pointed them (credit
  return slots, SDMA head words, header queues, eager buffers, the receive
  tail word, the scratch area garbage entries point at): none outside guest
  memory (the fake IOMMU refuses and counts those) and none elsewhere in it;
- afterwards the driver's restart paths bring every context and engine back
  and a good packet crosses the link.

VFNIC_FUZZ_SEQUENCES sets the count (default 100 000); the seed is fixed so a
failure repeats.
"""
from __future__ import annotations

import os

from testkit.hfi1.datapath_fuzz import run_datapath_fuzz

SEQUENCES = int(os.environ.get("VFNIC_FUZZ_SEQUENCES", "100000"))


def test_random_pio_and_descriptor_sequences_never_break_the_chip_or_write_astray():
    outcome = run_datapath_fuzz(SEQUENCES)
    print(f"datapath fuzz: {outcome}")
