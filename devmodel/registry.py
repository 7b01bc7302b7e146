"""The devices `vfnic serve --device NAME` knows, by name. Imports are lazy so
that serving testdev never loads the hfi1 model."""
from __future__ import annotations

import importlib

from devmodel.base import DeviceModel

DEVICES = {
    "testdev": ("devmodel.testdev", "TestDevice"),
    "testdev-shm": ("devmodel.testdev", "SharedMemoryTestDevice"),
    "hfi1": ("devmodel.hfi1", "Hfi1Device"),
}


def create(name: str) -> DeviceModel:
    if name not in DEVICES:
        raise KeyError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICES))})")
    module, cls = DEVICES[name]
    return getattr(importlib.import_module(module), cls)()
