"""The generated CSR table: it matches the kernel header it came from."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import chip_registers as cr
from devmodel.hfi1 import gen_chip_registers
from images.provision.kernel_source import kernel_source_files

HEADER = "drivers/infiniband/hw/hfi1/chip_registers.h"


def test_offsets_the_driver_relies_on():
    assert cr.CSR_OFFSETS["DC_DC8051_CFG_HOST_CMD_0"] == 0x602028
    assert cr.CSR_OFFSETS["RCV_ARRAY_CNT"] == 0x1000018
    assert cr.CSR_OFFSETS["ASIC_CFG_SCRATCH_3"] == 0x400038  # defined as ASIC_CFG_SCRATCH + 0x18
    assert cr.CCE_MSIX_PBA_OFFSET == 0x110000
    assert "PCI_CFG_MSIX0" in cr.PCIE_CFG_OFFSETS and "PCI_CFG_MSIX0" not in cr.CSR_OFFSETS


def test_fields_are_not_mistaken_for_registers():
    assert not [name for name in cr.CSR_OFFSETS if name.endswith(("_SHIFT", "_SMASK", "_RESETCSR"))]
    assert cr.SEND_CTRL_UNSUPPORTED_VL_SMASK == 0xFF << 3


def test_parser_evaluates_the_headers_expression_forms():
    values, roots = gen_chip_registers.parse(
        "#define CORE 0x0\n#define TXE (CORE + 0x000001800000)\n#define SEND_CTRL (TXE + 0x0)\n"
        "#define SEND_CTRL_X_SMASK \\\n\t\t0x4ull\n#define SEND_CTRL_Y BIT_ULL(3)\n"
        "#define SEND_ALIAS (SEND_CTRL + 0x08)\n#define ELSEWHERE (NOWHERE + 1)\n#define GUARD\n")
    assert values == {"CORE": 0, "TXE": 0x1800000, "SEND_CTRL": 0x1800000, "SEND_CTRL_X_SMASK": 4,
                      "SEND_CTRL_Y": 8, "SEND_ALIAS": 0x1800008}
    assert roots["SEND_ALIAS"] == "TXE" and "SEND_CTRL_Y" not in roots


@pytest.mark.guest  # the slow tier: it asks Debian's archive for the current linux-source (apt-get update) each run
def test_regenerating_from_the_header_reproduces_the_committed_module():
    header = kernel_source_files([HEADER]) / HEADER  # Debian's linux-source-6.12, fetched once into the cache
    values, roots = gen_chip_registers.parse(header.read_text())
    rendered = gen_chip_registers.render(values, roots, HEADER)
    assert rendered == gen_chip_registers.OUTPUT.read_text()
