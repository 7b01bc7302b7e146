"""The chip's blocks are wired explicitly: each is given its collaborators
when `Hfi1Device` builds it, so no block reaches back into `device.py`."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HFI1 = Path(__file__).resolve().parents[2] / "devmodel" / "hfi1"
BLOCKS = sorted(p for p in HFI1.glob("*.py") if p.name not in ("device.py", "__init__.py"))


def relative_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("path", BLOCKS, ids=[p.name for p in BLOCKS])
def test_a_block_does_not_import_the_device(path):
    assert "device" not in relative_imports(path)
    assert "Hfi1Device" not in path.read_text()
