"""Register semantics declared as data."""
import logging

import pytest

from devmodel.regs import Access, Register, RegisterFile, register_array


def make(**kw):
    calls = []
    regs = RegisterFile("blk", [
        Register("CTRL", 0x00, reset=0x5, on_write=lambda old, new: calls.append((old, new))),
        Register("ID", 0x08, reset=0xABCD, access=Access.RO),
        Register("ERR", 0x10, reset=0xF0, access=Access.W1C),
        Register("FORCE", 0x18, access=Access.W1S, writable=0xFF),
        Register("GO", 0x20, access=Access.SC, self_clearing=0x1, on_write=lambda o, n: calls.append(("go", n))),
        Register("KEY", 0x28, access=Access.WO),
        Register("NARROW", 0x34, width=4, reset=0x11),
        Register("MASKED", 0x38, writable=0x0F0F),
        Register("FLOW", 0x40, reset=0x3 << 37, w1c=0x3 << 37),
        *register_array(Register("CTXT", 0x100), count=4, stride=0x40),
    ], **kw)
    return regs, calls


def test_rw_register_stores_and_calls_its_hook():
    regs, calls = make()
    regs.write(0x00, 8, 0x1234)
    assert regs.read(0x00, 8) == 0x1234 and calls == [(0x5, 0x1234)]


@pytest.mark.parametrize("writes,offset,value", [
    pytest.param([(0x08, 0)], 0x08, 0xABCD, id="ro_register_ignores_writes"),
    pytest.param([(0x10, 0x30)], 0x10, 0xC0, id="w1c_clears_only_the_bits_written_as_one"),
    pytest.param([(0x18, 0x01), (0x18, 0x30)], 0x18, 0x31, id="w1s_sets_the_bits_written_as_one_and_keeps_the_others"),
    pytest.param([(0x18, 0x1F0)], 0x18, 0xF0, id="w1s_sets_only_writable_bits"),
    pytest.param([(0x38, 0xFFFF)], 0x38, 0x0F0F, id="writable_mask_protects_reserved_bits"),
    pytest.param([(0x40, 1 << 37 | 0x7FF)], 0x40, 1 << 38 | 0x7FF,
                 id="w1c_field_of_an_rw_register_clears_on_one_while_the_rest_is_stored"),
    pytest.param([(0x40, 0x5)], 0x40, 0x3 << 37 | 0x5, id="w1c_field_keeps_its_bits_written_as_zero"),
])
def test_writes_leave_what_the_access_type_and_the_writable_mask_say(writes, offset, value):
    regs, _ = make()
    for at, data in writes:
        regs.write(at, 8, data)
    assert regs.read(offset, 8) == value


def test_self_clearing_bit_runs_the_hook_then_reads_zero():
    regs, calls = make()
    regs.write(0x20, 8, 0x3)
    assert calls == [("go", 0x3)] and regs.read(0x20, 8) == 0x2


def test_write_only_register_reads_zero():
    regs, _ = make()
    regs.write(0x28, 8, 0x99)
    assert regs.read(0x28, 8) == 0 and regs.get(0x28) == 0x99


def test_sub_word_access_touches_only_its_bytes():
    regs, _ = make()
    regs.write(0x00, 8, 0x1111111111111111)
    regs.write(0x04, 4, 0xAABBCCDD)
    assert regs.read(0x00, 8) == 0xAABBCCDD11111111 and regs.read(0x06, 2) == 0xAABB


def test_a_sub_word_write_clears_only_the_w1c_bits_of_its_own_bytes():
    regs, _ = make()
    regs.write(0x40, 4, 0xFFFFFFFF)  # the low half: no status bit there
    assert regs.read(0x40, 8) == 0x3 << 37 | 0xFFFFFFFF
    regs.write(0x44, 4, 1 << 6)  # bit 38
    assert regs.read(0x40, 8) == 1 << 37 | 0xFFFFFFFF


def test_arrays_repeat_a_register_with_a_stride():
    regs, _ = make()
    regs.write(0x100 + 2 * 0x40, 8, 7)
    assert regs.read(0x180, 8) == 7 and regs.register("CTXT[2]").offset == 0x180


def test_narrow_register_is_four_bytes():
    regs, _ = make()
    assert regs.read(0x34, 4) == 0x11 and regs.read(0x30, 4) == 0


def test_undeclared_offsets_are_storage_logged_once_with_the_nearest_name(caplog):
    regs, _ = make()
    with caplog.at_level(logging.WARNING):
        regs.write(0x48, 8, 0x77)
        regs.write(0x48, 8, 0x78)
        value = regs.read(0x48, 8)
    assert value == 0x78 and regs.undeclared[0x48] == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "FLOW+0x8" in warnings[0]


def test_reset_restores_every_reset_value():
    regs, _ = make()
    regs.write(0x00, 8, 0)
    regs.write(0x10, 8, 0xFF)
    regs.reset()
    assert (regs.read(0x00, 8), regs.read(0x10, 8)) == (0x5, 0xF0)


def test_a_counter_counts_on_and_wraps_at_its_own_width():
    regs, _ = make()
    regs.set(0x38, 0xFFFF_FFFF_FFFF_FFFE)
    regs.add(0x38, 3)
    assert regs.get(0x38) == 1, "a 64-bit counter wraps at 2**64"
    regs.set(0x34, 0xFFFF_FFFF)
    regs.add(0x34, 2)
    assert regs.get(0x34) == 1, "a 4-byte register wraps at 2**32"
