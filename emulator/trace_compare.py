"""Comparing and summarising MMIO traces (`vfnic trace-diff`, `vfnic trace-stats`).

    trace A ──fold──┐                      first difference: A line 1236, B line 1235
                    ├── SequenceMatcher ──> every differing stretch, `-` A only, `+` B only
    trace B ──fold──┘

An access is compared by what the driver did, not when: (device, R/W,
register, value). Timing is ignored, and so are polling repeats: a run of
identical reads (the same register returning the same value, as a driver
spinning on a status bit produces) folds to one access, so two runs that
polled a different number of times compare equal. Values of registers
matching `ignore_values` (e.g. DMA addresses that differ from boot to boot)
are left out of the comparison.

`trace-stats` counts accesses and time per register block. The block of a
register is the first word of its name ("SEND_CTXT_CTRL[3]" -> "SEND",
"RcvArray[17]" -> "RcvArray", "undeclared:..." -> "undeclared"), unless the
caller maps names itself (benchmarks/probe.py maps hfi1's CSRs to the chip
block that declares them). The time of an access is the gap until the next
access in the trace: a gap under `wait_gap_s` counts as busy (the trapped
access itself, the guest's exit, the driver's code), a longer one as a wait
(the driver sleeping or waiting for the chip).
"""
from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .trace import Access

WAIT_GAP_S = 1e-3


def register_block(register: str) -> str:
    """The block a register name belongs to, from the name alone."""
    base = re.split(r"[\[+:]", register)[0]
    return base.split("_")[0] if "_" in base else base


# -- trace-diff -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """An access as compared: what was done, and where it stands in its file."""
    key: tuple
    access: Access
    repeats: int = 1


def fold(accesses: Iterable[Access], ignore_values: re.Pattern | None = None) -> list[Step]:
    """The accesses as compared: timing dropped, runs of identical reads folded."""
    steps: list[Step] = []
    for access in accesses:
        value = None if ignore_values is not None and ignore_values.search(access.register) else access.value
        key = (access.device, access.op, access.register, value)
        if steps and access.op == "R" and steps[-1].key == key:
            steps[-1] = Step(key, steps[-1].access, steps[-1].repeats + 1)
        else:
            steps.append(Step(key, access))
    return steps


@dataclass
class Hunk:
    """A stretch where the traces differ: what only A did, what only B did."""
    a: list[Step]
    b: list[Step]
    a_index: int  # position of the stretch in A's folded steps
    b_index: int


@dataclass
class TraceDiff:
    a_accesses: int
    b_accesses: int
    a_steps: int
    b_steps: int
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.hunks


def diff(a: list[Access], b: list[Access], ignore_values: re.Pattern | None = None) -> TraceDiff:
    fa, fb = fold(a, ignore_values), fold(b, ignore_values)
    matcher = difflib.SequenceMatcher(None, [s.key for s in fa], [s.key for s in fb], autojunk=False)
    result = TraceDiff(len(a), len(b), len(fa), len(fb))
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            result.hunks.append(Hunk(fa[i1:i2], fb[j1:j2], i1, j1))
    return result


def _step_line(sign: str, step: Step) -> str:
    repeats = f"  (x{step.repeats})" if step.repeats > 1 else ""
    return f"{sign} line {step.access.line}: {step.access.describe()}{repeats}"


def format_diff(result: TraceDiff, a_name: str, b_name: str, most: int | None = None) -> list[str]:
    """Lines for a person: the counts, the first difference, then every
    differing stretch (at most `most` of them, if given)."""
    out = [f"A {a_name}: {result.a_accesses} accesses, {result.a_steps} after folding polling repeats",
           f"B {b_name}: {result.b_accesses} accesses, {result.b_steps} after folding polling repeats"]
    if result.same:
        return [*out, "the traces do the same accesses (timing and polling repeats aside)"]
    first = result.hunks[0]
    where_a = f"A line {first.a[0].access.line}" if first.a else f"A ends after step {first.a_index}"
    where_b = f"B line {first.b[0].access.line}" if first.b else f"B ends after step {first.b_index}"
    out.append(f"first difference after {first.a_index} equal steps: {where_a}, {where_b}")
    out.append(f"{len(result.hunks)} differing stretch(es), {sum(len(h.a) for h in result.hunks)} step(s) only in A, "
               f"{sum(len(h.b) for h in result.hunks)} only in B:")
    for hunk in result.hunks[:most]:
        out.append(f"@@ A step {hunk.a_index + 1} (+{len(hunk.a)}), B step {hunk.b_index + 1} (+{len(hunk.b)}) @@")
        out += [_step_line("-", s) for s in hunk.a] + [_step_line("+", s) for s in hunk.b]
    if most is not None and len(result.hunks) > most:
        out.append(f"... {len(result.hunks) - most} more stretch(es) (--most)")
    return out


# -- trace-stats ----------------------------------------------------------------------------------

@dataclass
class BlockCost:
    reads: int = 0
    writes: int = 0
    busy_s: float = 0.0
    wait_s: float = 0.0
    waits: list[tuple[float, str]] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.busy_s + self.wait_s

    @property
    def accesses(self) -> int:
        return self.reads + self.writes


def block_costs(accesses: list[Access], block_of: Callable[[str], str] = register_block,
                wait_gap_s: float = WAIT_GAP_S) -> dict[str, BlockCost]:
    """Reads, writes and time (busy and waiting) per block, in trace order."""
    costs: dict[str, BlockCost] = defaultdict(BlockCost)
    for access, following in zip(accesses, [*accesses[1:], None]):
        cost = costs[block_of(access.register)]
        if access.op == "R":
            cost.reads += 1
        else:
            cost.writes += 1
        gap = following.time - access.time if following is not None else 0.0
        if gap > wait_gap_s:
            cost.wait_s += gap
            cost.waits.append((gap, access.register))
        else:
            cost.busy_s += gap
    return dict(costs)


def format_stats(costs: dict[str, BlockCost], indent: str = "") -> list[str]:
    """A table, the costliest block first."""
    total = sum(c.total_s for c in costs.values())
    out = [f"{indent}{'block':<14}{'reads':>8}{'writes':>8}{'busy s':>9}{'waits s':>9}{'share':>8}  longest waits"]
    for name, cost in sorted(costs.items(), key=lambda kv: (-kv[1].total_s, kv[0])):
        longest = ", ".join(f"{gap * 1e3:.0f} ms after {reg}" for gap, reg in sorted(cost.waits, reverse=True)[:2])
        share = 100 * cost.total_s / total if total else 0.0
        out.append(f"{indent}{name:<14}{cost.reads:>8}{cost.writes:>8}{cost.busy_s:>9.3f}{cost.wait_s:>9.3f}"
                   f"{share:>7.0f}%  {longest}".rstrip())
    return out
