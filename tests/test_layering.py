"""The layers import each other in one direction only.

- Device models (devmodel/) never import the transport or the images: they
  reach the host only through the contract in devmodel/base.py and
  devmodel/pci_layout.py, so a model can be driven by the vfio-user server,
  a fake host, or a future transport.
- The transport (emulator/) and the guest images (images/) know no device:
  of devmodel they import only the contract and the registry that names the
  devices (`DEVICE_CONTRACT`).
- The code both sides share (common/) imports neither side.
- Provisioning (images/provision/) imports nothing of the lab that runs
  guests (images/lab/).
- The product (all of the above) never imports the test tooling (testkit/),
  which imports the product.

An import is an `import` statement or a call of `importlib.import_module`,
`import_module` or `__import__` with a string literal."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: what emulator/ and images/ may import of devmodel
DEVICE_CONTRACT = (
    "devmodel.base",         # DeviceModel, DmaError: the callbacks a PCI function calls
    "devmodel.pci_layout",   # Bar, MsixLayout, PciIdentity: what config space is built from
    "devmodel.registry",     # the devices by name, their options and guest files
    "devmodel.regs",         # byte-lane arithmetic of sub-word accesses
    "devmodel.fabric",       # links and faults, which the control socket sets
)
IMPORT_FUNCTIONS = ("import_module", "__import__")
PACKAGES = ("common", "devmodel", "emulator", "images")


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def imports_of(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from devmodel import hfi1` imports devmodel.hfi1
            names += [f"{node.module}.{a.name}" for a in node.names] if node.module in PACKAGES else [node.module]
        elif (isinstance(node, ast.Call) and _called_name(node) in IMPORT_FUNCTIONS and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append(node.args[0].value)
    return names


def forbidden_for(package: str, name: str) -> bool:
    top = name.split(".")[0]
    if top == "testkit":
        return True
    if package == "images/provision" and (name == "images.lab" or name.startswith("images.lab.")):
        return True
    if package == "devmodel":
        return top in ("emulator", "images")
    if package == "common":
        return top in ("emulator", "devmodel", "images")
    # emulator, images
    return top == "devmodel" and not any(name == c or name.startswith(c + ".") for c in DEVICE_CONTRACT)


def package_of(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return "images/provision" if relative.parts[:2] == ("images", "provision") else relative.parts[0]


def offending(package: str, path: Path) -> list[str]:
    return [name for name in imports_of(path) if forbidden_for(package, name)]


MODULES = [(package_of(path), path) for package in PACKAGES
           for path in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package,path", MODULES, ids=[str(p.relative_to(ROOT)) for _, p in MODULES])
def test_a_module_imports_only_what_its_layer_may(package, path):
    assert offending(package, path) == [], f"{path.relative_to(ROOT)} imports {offending(package, path)}"


def test_the_check_sees_an_offending_import(tmp_path):
    sample = tmp_path / "model.py"
    sample.write_text("import os\nfrom emulator.dma import DmaSpace\n")
    assert offending("devmodel", sample) == ["emulator.dma"]


@pytest.mark.parametrize("line", ['importlib.import_module("emulator.irq")', 'import_module("emulator.irq")',
                                  '__import__("emulator.irq")'])
def test_the_check_sees_an_import_by_string(tmp_path, line):
    sample = tmp_path / "model.py"
    sample.write_text(f"import importlib\nfrom importlib import import_module\nirq = {line}\n")
    assert offending("devmodel", sample) == ["emulator.irq"]


@pytest.mark.parametrize("source,package,expected", [
    ("from devmodel.hfi1.firmware import firmware_files\n", "images", ["devmodel.hfi1.firmware"]),
    ("from devmodel import hfi1, registry\n", "emulator", ["devmodel.hfi1"]),
    ("import devmodel.testdev\n", "emulator", ["devmodel.testdev"]),
    ("from devmodel.registry import DEVICES\nfrom devmodel.base import DmaError\n", "emulator", []),
    ("from emulator import protocol\n", "common", ["emulator.protocol"]),
    ("import devmodel.base\n", "common", ["devmodel.base"]),
    ("from images.lab.vm import Guest\nfrom images.provision import cache\n", "images/provision", ["images.lab.vm"]),
    ("from images import lab\n", "images/provision", ["images.lab"]),
    ("from testkit.client import Client\n", "emulator", ["testkit.client"]),
    ("import testkit.host\n", "devmodel", ["testkit.host"]),
    ("from testkit import guest_checks\n", "images", ["testkit"]),
])
def test_the_check_sees_a_device_known_to_the_transport_and_a_side_known_to_common(tmp_path, source, package, expected):
    sample = tmp_path / "module.py"
    sample.write_text(source)
    assert offending(package, sample) == expected


def test_no_two_test_modules_share_a_basename():
    """pytest imports test modules by basename (rootdir-relative, no packages):
    tests/test_x.py beside guest-tests/test_x.py stops the whole run at
    collection ("import file mismatch")."""
    modules = sorted(p for folder in ("tests", "guest-tests") for p in (ROOT / folder).rglob("test_*.py"))
    seen: dict[str, Path] = {}
    clashes = []
    for path in modules:
        if path.name in seen:
            clashes.append((str(seen[path.name].relative_to(ROOT)), str(path.relative_to(ROOT))))
        seen.setdefault(path.name, path)
    assert clashes == []
