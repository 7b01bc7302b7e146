"""Issue 13 item 7: at least 100 000 random user-context sequences -- what a
hostile PSM2 process, or the guest for it, can do to its receive contexts
(ASSIGN and FREE mid-traffic, RcvArray and TidFlow writes, bad head
indexes, KDETH packets with bad TIDs, offsets, J_Keys, PSNs, damage, for
contexts that are not there) -- with the invariants checked after every
action: nothing fails inside the model, the chip goes idle in bounded
time, no DMA lands outside the memory of the context concerned, every
packet is accounted for once, and every packet known to be bad gets an RHF
error bit or a counted drop. What a sequence is, and the invariants in
full: testkit/hfi1/user_context_fuzz.py.

VFNIC_FUZZ_SEQUENCES sets the count (default 100 000), VFNIC_FUZZ_SEED the
seed (a failure names both, with the action that broke an invariant).
"""
from __future__ import annotations

import os

from testkit.hfi1.user_context_fuzz import SEED_DEFAULT, SEQUENCES_DEFAULT, run_user_context_fuzz

SEQUENCES = int(os.environ.get("VFNIC_FUZZ_SEQUENCES", str(SEQUENCES_DEFAULT)))
SEED = int(os.environ.get("VFNIC_FUZZ_SEED", str(SEED_DEFAULT)))


def test_random_user_context_sequences_keep_every_context_to_its_own_memory_and_account_for_every_packet():
    outcome = run_user_context_fuzz(SEQUENCES, SEED)
    assert outcome["sequences"] == SEQUENCES and outcome["actions"] >= SEQUENCES
    print(f"user-context fuzz: {outcome}")
