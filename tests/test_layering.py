"""Device models never import the transport: they reach the host only through
the contract in devmodel/base.py and devmodel/pci_layout.py, so a model can
be driven by the vfio-user server, a fake host, or a future transport."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("emulator", "images")


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


MODELS = sorted((ROOT / "devmodel").rglob("*.py"))


@pytest.mark.parametrize("path", MODELS, ids=[str(p.relative_to(ROOT)) for p in MODELS])
def test_a_device_model_module_imports_nothing_of_the_transport(path):
    offending = [name for name in imports_of(path) if name.split(".")[0] in FORBIDDEN]
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"


def test_the_check_sees_an_offending_import(tmp_path):
    sample = tmp_path / "model.py"
    sample.write_text("import os\nfrom emulator.dma import DmaSpace\n")
    assert [n for n in imports_of(sample) if n.split(".")[0] in FORBIDDEN] == ["emulator.dma"]
