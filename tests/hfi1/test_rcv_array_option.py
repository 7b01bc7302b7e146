"""`vfnic serve --device hfi1 --option rcv-array=N`: the RcvArray the chip
reports and decodes, 8192 entries unless asked for the real chip's 32768
(devmodel/hfi1/config.py says what each costs a modprobe)."""
from __future__ import annotations

import pytest

from devmodel import registry
from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1.config import RCV_ARRAY_DEFAULT, RCV_ARRAY_REAL_CHIP

VALID = 1 << 63  # an entry the driver's hfi1_put_tid writes has WriteEnable set


@pytest.mark.parametrize("options,entries", [([], RCV_ARRAY_DEFAULT), (["rcv-array=32768"], RCV_ARRAY_REAL_CHIP)])
def test_the_chip_reports_and_decodes_the_rcv_array_asked_for(options, entries):
    device = registry.create("hfi1", ["link-partner=none", *options])
    try:
        assert device.bar_read(0, cr.RCV_ARRAY_CNT, 8) == entries
        last = cr.RCV_ARRAY + 8 * (entries - 1)
        device.bar_write(0, last, 8, VALID | 0x1234)
        assert device.bar_read(0, last, 8) == VALID | 0x1234
        assert device.rcv.rcv_array_span() == (cr.RCV_ARRAY, cr.RCV_ARRAY + 8 * entries)
    finally:
        device.close()


def test_every_hfi_of_a_fabric_takes_the_option():
    devices = registry.create_fabric("hfi1", 2, ["rcv-array=16384"])
    try:
        assert [d.bar_read(0, cr.RCV_ARRAY_CNT, 8) for d in devices] == [16384, 16384]
    finally:
        for d in devices:
            d.close()


def test_a_count_the_chip_cannot_hold_is_refused():
    with pytest.raises(registry.OptionError, match="rcv-array takes 8192 or 16384 or 32768, not '100000'"):
        registry.parse_options("hfi1", ["rcv-array=100000"])
