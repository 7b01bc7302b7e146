"""`vfnic trace-diff` and `vfnic trace-stats` as a driver developer uses
them: two traces of the same probe, one with a changed write, one that
polled longer; a trace's time per register block."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.trace import Access, MmioTrace, TraceError, read_trace
from emulator.trace_compare import block_costs, diff, fold, format_diff, register_block

#: a probe as the driver does it: identify, reset, program a DMA address, poll for done
PROBE = [
    ("R", "CCE_REVISION", 8, 0x2),
    ("W", "CCE_CTRL", 8, 0x1),
    ("W", "RCV_HDR_ADDR[0]", 8, 0x1_2345_6000),
    ("R", "DC_DC8051_STS", 8, 0x0),
    ("R", "DC_DC8051_STS", 8, 0x0),
    ("R", "DC_DC8051_STS", 8, 0x1),
    ("W", "SEND_CTXT_CTRL[3]", 8, 0x1),
]


def write_trace(path: Path, accesses, device: str = "hfi1") -> Path:
    trace = MmioTrace(str(path))
    for op, register, size, value in accesses:
        trace.record(device, op, 0, 0x1000, size, register, value)
    trace.close()
    return path


def vfnic(*args):
    return subprocess.run([sys.executable, "-m", "emulator.cli", *args], capture_output=True, text=True, timeout=30)


def test_a_trace_reads_back_as_it_was_written(tmp_path):
    path = write_trace(tmp_path / "a.trace", PROBE[:2])
    (first, second) = read_trace(path)
    assert (first.device, first.op, first.bar, first.offset, first.size, first.register, first.value, first.line) == \
        ("hfi1", "R", 0, 0x1000, 8, "CCE_REVISION", 0x2, 2)
    assert second.describe() == "hfi1 W CCE_CTRL 0x0000000000000001"
    assert 0 <= first.time <= second.time


def test_the_earlier_text_format_still_reads(tmp_path):
    path = tmp_path / "old.trace"
    path.write_text("# time_s device op bar offset size register value\n"
                    "0.000123 hfi1_0 R 0 0x000008 8 CCE_REVISION2 0x0000000000000003\n")
    assert read_trace(path) == [Access(0.000123, "hfi1_0", "R", 0, 8, 8, "CCE_REVISION2", 3, 2)]


@pytest.mark.parametrize("text,message", [
    ("hello\n", "not a vfnic MMIO trace"),
    ('{"vfnic_trace": 9}\n', "another format version"),
    ('{"vfnic_trace": 1}\n{"t": 0, "op": "R"}\n', ":2: not a trace line"),
    ('{"vfnic_trace": 1}\n{"t": 0, "device": "d", "op": "X", "bar": 0, "offset": "0x0", "size": 4, '
     '"register": "R", "value": "0x0"}\n', "neither R nor W"),
])
def test_a_file_that_is_not_a_trace_is_refused_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(TraceError, match=re.escape(message)):
        read_trace(path)
    result = vfnic("trace-stats", str(path))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_polling_repeats_fold_into_one_step():
    steps = fold(read_like(PROBE))
    assert [(s.access.register, s.repeats) for s in steps] == [
        ("CCE_REVISION", 1), ("CCE_CTRL", 1), ("RCV_HDR_ADDR[0]", 1), ("DC_DC8051_STS", 2), ("DC_DC8051_STS", 1),
        ("SEND_CTXT_CTRL[3]", 1)]


def read_like(accesses) -> list[Access]:
    return [Access(i * 1e-5, "hfi1", op, 0, 0x1000, size, reg, value, i + 2)
            for i, (op, reg, size, value) in enumerate(accesses)]


def test_the_same_probe_polling_longer_and_slower_compares_equal(tmp_path):
    longer = PROBE[:4] + [PROBE[3]] * 20 + PROBE[4:]
    a, b = write_trace(tmp_path / "a.trace", PROBE), write_trace(tmp_path / "b.trace", longer)
    assert diff(read_trace(a), read_trace(b)).same
    result = vfnic("trace-diff", str(a), str(b))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the traces do the same accesses" in result.stdout
    assert "27 accesses, 6 after folding" in result.stdout


def test_a_changed_write_is_the_first_difference_with_both_lines(tmp_path):
    changed = [*PROBE[:-1], ("W", "SEND_CTXT_CTRL[3]", 8, 0x3)]
    a, b = write_trace(tmp_path / "a.trace", PROBE), write_trace(tmp_path / "b.trace", changed)
    result = vfnic("trace-diff", str(a), str(b))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert "first difference after 5 equal steps: A line 8, B line 8" in lines
    assert "- line 8: hfi1 W SEND_CTXT_CTRL[3] 0x0000000000000001" in lines
    assert "+ line 8: hfi1 W SEND_CTXT_CTRL[3] 0x0000000000000003" in lines


def test_every_differing_stretch_is_listed_and_an_extra_access_only_on_one_side(tmp_path):
    b_accesses = [PROBE[0], ("W", "CCE_SCRATCH[0]", 8, 0x99), *PROBE[1:-1], ("W", "SEND_CTXT_CTRL[3]", 8, 0x0)]
    result = diff(read_like(PROBE), read_like(b_accesses))
    assert [(len(h.a), len(h.b)) for h in result.hunks] == [(0, 1), (1, 1)]
    text = format_diff(result, "a", "b")
    assert "2 differing stretch(es), 1 step(s) only in A, 2 only in B:" in text
    assert text[-5:] == ["@@ A step 2 (+0), B step 2 (+1) @@", "+ line 3: hfi1 W CCE_SCRATCH[0] 0x0000000000000099",
                         "@@ A step 6 (+1), B step 7 (+1) @@", "- line 8: hfi1 W SEND_CTXT_CTRL[3] 0x0000000000000001",
                         "+ line 9: hfi1 W SEND_CTXT_CTRL[3] 0x0000000000000000"]
    assert format_diff(result, "a", "b", most=1)[-1] == "... 1 more stretch(es) (--most)"


def test_a_trace_that_ends_early_says_so():
    result = diff(read_like(PROBE), read_like(PROBE[:2]))
    assert format_diff(result, "a", "b")[2] == "first difference after 2 equal steps: A line 4, B ends after step 2"


def test_ignored_values_compare_by_register_name_only(tmp_path):
    moved = [(op, reg, size, 0x7_7777_7000 if reg.startswith("RCV_HDR_ADDR") else value) for op, reg, size, value in PROBE]
    a, b = write_trace(tmp_path / "a.trace", PROBE), write_trace(tmp_path / "b.trace", moved)
    assert vfnic("trace-diff", str(a), str(b)).returncode == 1
    assert vfnic("trace-diff", str(a), str(b), "--ignore-values", "^RCV_HDR_ADDR").returncode == 0
    bad = vfnic("trace-diff", str(a), str(b), "--ignore-values", "(")
    assert bad.returncode == 2 and "--ignore-values '('" in bad.stderr


def test_a_missing_trace_is_one_line_and_status_2(tmp_path):
    result = vfnic("trace-diff", str(tmp_path / "none.trace"), str(tmp_path / "none.trace"))
    assert result.returncode == 2 and result.stderr.startswith("vfnic: error: cannot read") and \
        len(result.stderr.splitlines()) == 1


def test_register_blocks_come_from_the_names():
    assert [register_block(n) for n in ("SEND_CTXT_CTRL[3]", "RcvArray[17]", "PIO_SEND_BUFFER_SOP[2]+0x40",
                                        "undeclared:CCE_CTRL+0x8", "MSI-X_TABLE[4]+0xc")] == \
        ["SEND", "RcvArray", "PIO", "undeclared", "MSI-X"]


def test_stats_count_accesses_and_split_busy_time_from_waits(tmp_path):
    # CCE: 2 accesses 10 us apart; then a 20 ms wait after a DC read; SEND last (no gap after it)
    accesses = [Access(t, "hfi1", op, 0, 0, 8, reg, 0, i + 2) for i, (t, op, reg) in enumerate([
        (0.0, "R", "CCE_REVISION"), (10e-6, "W", "CCE_CTRL"), (20e-6, "R", "DC_DC8051_STS"),
        (0.02002, "W", "SEND_CTXT_CTRL[0]")])]
    costs = block_costs(accesses)
    assert (costs["CCE"].reads, costs["CCE"].writes) == (1, 1)
    assert costs["CCE"].busy_s == pytest.approx(20e-6) and costs["CCE"].wait_s == 0
    assert costs["DC"].wait_s == pytest.approx(0.02) and costs["DC"].waits == [(pytest.approx(0.02), "DC_DC8051_STS")]
    assert costs["SEND"].total_s == 0
    path = write_trace(tmp_path / "t.trace", PROBE)
    out = vfnic("trace-stats", str(path))
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()[2:]}
    assert rows == {"CCE": ["1", "1"], "RCV": ["0", "1"], "DC": ["3", "0"], "SEND": ["0", "1"]}


def test_each_line_is_what_json_dumps_writes_for_its_fields(tmp_path):
    path = tmp_path / "odd.trace"
    trace = MmioTrace(str(path))
    trace.record('hfi1 "0"\\', "W", 2, 0x12_3456, 4, "undeclared:RcvArray[3]+0x8 \u00e9", 0xDEAD)
    trace.close()
    line = path.read_text().splitlines()[1]
    row = json.loads(line)
    assert line == json.dumps(row)
    assert row == {"t": row["t"], "device": 'hfi1 "0"\\', "op": "W", "bar": 2, "offset": "0x123456", "size": 4,
                   "register": "undeclared:RcvArray[3]+0x8 \u00e9", "value": "0x0000dead"}
